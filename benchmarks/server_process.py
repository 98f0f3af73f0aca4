"""Start `steerserve serve` on the bundled toy demo model for a benchmark script, and stop it afterwards."""

from __future__ import annotations

import os
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
def demo_server(start_timeout_s: float = 600) -> Iterator[str]:
    """`steerserve serve` with no model argument (the demo model; its vector and presets are installed on the
    first start in a fresh data dir); yields the base URL once /health answers."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as data_dir:
        log = Path(data_dir) / "server.log"
        with log.open("w") as stderr:
            server = subprocess.Popen(
                [STEERSERVE, "serve", "--port", str(port), "--data-dir", data_dir],
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
                yield url
            finally:
                server.terminate()
                server.wait(timeout=120)
