"""Private redis-server processes for tests (never the machine's shared one on 6379); defined beside the
benchmark scripts' processes so both use one implementation."""

from __future__ import annotations

from benchmarks.server_process import RedisServer, free_port

__all__ = ["RedisServer", "free_port"]
