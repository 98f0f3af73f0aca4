"""End-to-end fixtures: vLLM's own app (steerserve's plugins on) over real HTTP, on the session's shared engine
and redis-server."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.processes import free_port

SERVED = "tiny-llama"
ADMIN = {"Authorization": "Bearer admin-secret"}


async def vllm_app(engine: Any, argv: Sequence[str], env: dict[str, str]) -> Any:
    """vLLM's `build_app` + `init_app_state` around an engine already started, with `steerserve serve`'s
    defaults applied to `argv` (what `run_server` does, minus starting an engine)."""
    from vllm.entrypoints.launchers.api_server.app_state import init_app_state
    from vllm.entrypoints.launchers.app import build_app

    from server.launch import apply_steering_defaults, build_parser, export_settings

    saved = dict(os.environ)
    os.environ.update(env)
    try:
        args = build_parser().parse_args(list(argv))
        settings = export_settings(args)
        apply_steering_defaults(args, argv, settings)
        # what vLLM's create_engine_config does to the args' own config object when it starts an engine
        args.structured_outputs_config = dataclasses.replace(
            args.structured_outputs_config, reasoning_parser=args.reasoning_parser
        )
        tasks = await engine.llm.get_supported_tasks()
        app = build_app(args, tasks, engine.llm.model_config)
        await init_app_state(engine.llm, app.state, args, tasks)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return app


async def serve_app(app: Any) -> tuple[str, Any, asyncio.Task[None]]:
    import uvicorn

    port = free_port()
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(uv.serve())
    while not uv.started:
        await asyncio.sleep(0.05)
    return f"http://127.0.0.1:{port}", uv, task


def server_argv(model: Path, *extra: str) -> list[str]:
    return ["--model", str(model), "--served-model-name", SERVED, "--api-key", "user-secret", *extra]


@pytest.fixture(scope="module")
def namespace() -> str:
    """The registry namespace of this module's server."""
    return f"test-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
async def server(llama_engine: Any, redis_url: str, tiny_llama: Path, namespace: str) -> AsyncIterator[str]:
    env = {
        "STEERSERVE_REDIS_URL": redis_url,
        "STEERSERVE_REGISTRY_NAMESPACE": namespace,
        "STEERSERVE_ADMIN_KEY": "admin-secret",
    }
    app = await vllm_app(llama_engine, server_argv(tiny_llama), env)
    url, uv, task = await serve_app(app)
    yield url
    uv.should_exit = True
    await task
