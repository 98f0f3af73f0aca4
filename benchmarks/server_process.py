"""Processes for benchmark scripts (and the tests): `steerserve serve` on the bundled toy demo model, and private
redis-server processes with AOF on (never the machine's shared one on 6379)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

STEERSERVE = str(Path(sys.executable).parent / "steerserve")  # the CLI of the running environment


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bench_env() -> dict[str, str]:
    """The environment of a benchmark's server and clients: a small KV cache unless one is set."""
    return {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2")}


@contextmanager
def demo_server(start_timeout_s: float = 600, args: tuple[str, ...] = ()) -> Iterator[str]:
    """`steerserve serve` with no model argument (the demo model; its vector and presets are installed on the
    first start in a fresh data dir); yields the base URL once /health answers."""
    with demo_server_process(start_timeout_s, args) as (url, _):
        yield url


@contextmanager
def demo_server_process(
    start_timeout_s: float = 600, args: tuple[str, ...] = (), keep_log: Path | None = None
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Like `demo_server`, also yielding the process (for its RSS or a signal); `args` go to `steerserve serve`;
    the server's log is copied to `keep_log` when it stops."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as data_dir:
        log = Path(data_dir) / "server.log"
        with log.open("w") as stderr:
            server = subprocess.Popen(
                [STEERSERVE, "serve", "--port", str(port), "--data-dir", data_dir, *args],
                env=bench_env(),
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
            try:
                deadline = time.monotonic() + start_timeout_s
                while True:
                    try:
                        if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit(log.read_text()[-4000:])
                    time.sleep(1)
                yield url, server
            finally:
                if server.poll() is None:
                    server.terminate()
                server.wait(timeout=120)
                if keep_log is not None:
                    shutil.copyfile(log, keep_log)


class RedisServer:
    """A redis-server on its own port and directory, with AOF on; can be stopped (killed) and started again."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (scripts/install.sh --dev installs it)")
        self.port = port or free_port()
        self.args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(workdir)]
        self.args += ["--appendonly", "yes", "--appendfsync", "always", "--save", ""]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        """SIGKILL: what a crash looks like (AOF with fsync always keeps every acknowledged write)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
