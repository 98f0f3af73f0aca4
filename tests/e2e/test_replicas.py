"""Two server replicas sharing one redis-server: a vector, a new version, a delete or a preset written on one
takes effect on the other within a second.

Both replicas run in this process on the session's one engine (a second engine would double the suite's
start-up time); each has its own Redis connection, registry cache and pub/sub listener, which is what a
second process would have, so the registry's consistency across replicas is what is measured here."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.e2e.conftest import serve_app, vllm_app

pytestmark = pytest.mark.engine
SERVED = "tiny-llama"


@pytest.fixture(scope="module")
async def replicas(llama_engine: Any, redis_url: str, tiny_llama: Path) -> AsyncIterator[tuple[str, str]]:
    env = {"STEERSERVE_REDIS_URL": redis_url, "STEERSERVE_REGISTRY_NAMESPACE": f"replicas-{uuid.uuid4().hex[:8]}"}
    argv = ["--model", str(tiny_llama), "--served-model-name", SERVED]
    served = [await serve_app(await vllm_app(llama_engine, argv, env)) for _ in range(2)]
    yield served[0][0], served[1][0]
    for _, server, _ in served:
        server.should_exit = True
    await asyncio.gather(*(task for _, _, task in served))


async def within(seconds: float, probe: Callable[[], Awaitable[bool]]) -> float:
    """Seconds until `probe` holds (fails after `seconds`)."""
    start = time.monotonic()
    while not await probe():
        assert time.monotonic() - start < seconds, f"not seen within {seconds} s"
        await asyncio.sleep(0.02)
    return time.monotonic() - start


def layer_data(hidden: int, value: float) -> dict[str, str]:
    return {"0": base64.b64encode(np.full(hidden, value, dtype="<f4").tobytes()).decode()}


async def test_writes_on_one_replica_take_effect_on_the_other(replicas: tuple[str, str], tiny_llama: Path) -> None:
    hidden = json.loads((tiny_llama / "config.json").read_text())["hidden_size"]
    first, second = replicas
    body = {"model": SERVED, "prompt": "hi", "max_tokens": 1, "steering": [{"vector": "shared"}]}
    async with httpx.AsyncClient(base_url=first, timeout=30) as a, httpx.AsyncClient(base_url=second, timeout=30) as b:

        async def version_on_b() -> int | None:
            answer = await b.post("/v1/completions", json=body)
            return answer.json()["steering"]["terms"][0]["version"] if answer.status_code == 200 else None

        assert (await b.post("/v1/completions", json=body)).status_code == 404
        assert (
            await a.post("/v1/steering/vectors", json={"id": "shared", "layers": layer_data(hidden, 1.0)})
        ).status_code == 201

        async def has_v1() -> bool:
            return await version_on_b() == 1

        async def has_v2() -> bool:
            return await version_on_b() == 2

        async def gone() -> bool:
            return (await b.post("/v1/completions", json=body)).status_code == 404

        async def preset_listed() -> bool:
            return "shared-preset" in [m["id"] for m in (await b.get("/v1/models")).json()["data"]]

        seen = {"upload": await within(1.0, has_v1)}  # B has now cached v1 as "latest"
        assert (
            await a.post("/v1/steering/vectors", json={"id": "shared", "layers": layer_data(hidden, 2.0)})
        ).status_code == 201
        seen["new version"] = await within(1.0, has_v2)
        preset = {"steering": [{"vector": "shared", "strength": 0.5}]}
        assert (await a.put("/v1/steering/presets/shared-preset", json=preset)).status_code == 200
        seen["preset"] = await within(1.0, preset_listed)
        assert (await a.delete("/v1/steering/presets/shared-preset")).status_code == 200
        assert (await a.delete("/v1/steering/vectors/shared")).status_code == 200
        seen["delete"] = await within(1.0, gone)
    print("replica propagation (s):", {k: round(v, 3) for k, v in seen.items()})
