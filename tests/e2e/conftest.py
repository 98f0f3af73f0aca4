"""End-to-end fixtures: the real server over real HTTP on the session's shared engine and redis-server."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from server.app import create_app
from server.settings import ServerSettings
from steering.store.redis_store import RedisStore
from tests.redis_server import free_port

SERVED = "tiny-llama"
ADMIN = {"Authorization": "Bearer admin-secret"}


@pytest.fixture(scope="module")
async def server(llama_engine: Any, redis_url: str, tiny_llama: Path) -> AsyncIterator[str]:
    import uvicorn

    port = free_port()
    settings = ServerSettings(
        model=str(tiny_llama), port=port, redis_url=redis_url, api_key="user-secret", admin_key="admin-secret"
    )
    store = RedisStore(redis_url, f"test-{uuid.uuid4().hex[:8]}")
    app = create_app(settings, llama_engine, store, SERVED)
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(uv.serve())
    while not uv.started:
        await asyncio.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    uv.should_exit = True
    await task
