"""Fifty clients leave mid-stream (steered and unsteered, at once): every engine request is aborted, and no
steering slot, vector reference or running-request count is left behind."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.e2e.conftest import ADMIN, SERVED

pytestmark = pytest.mark.engine
USER = {"Authorization": "Bearer user-secret"}
CLIENTS = 50


async def leave_after_first_chunk(http: httpx.AsyncClient, body: dict[str, Any]) -> float:
    """Stream until one token arrives, then drop the connection; returns when it left."""
    async with http.stream("POST", "/v1/completions", json=body) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data: ") and '"text"' in line:
                break
    return time.monotonic()


def running(metrics: str) -> float:
    for line in metrics.splitlines():
        if line.startswith("steerserve:num_requests_running"):
            return float(line.split()[-1])
    raise AssertionError("steerserve:num_requests_running is not exported")


async def test_fifty_disconnects_abort_their_engine_requests(server: str, llama_engine: Any, tiny_llama: Path) -> None:
    hidden = json.loads((tiny_llama / "config.json").read_text())["hidden_size"]
    direction = base64.b64encode(np.ones(hidden, dtype="<f4").tobytes()).decode()
    async with httpx.AsyncClient(base_url=server, timeout=120) as http:
        created = await http.post(
            "/v1/steering/vectors", headers=ADMIN, json={"id": "leave", "layers": {"0": direction}}
        )
        assert created.status_code == 201, created.text
    base = {"model": SERVED, "prompt": "x", "max_tokens": 900, "ignore_eos": True, "stream": True}
    bodies = [
        {**base, "steering": [{"vector": "leave", "strength": 0.01 * (i % 5 + 1)}]} if i % 2 else dict(base)
        for i in range(CLIENTS)
    ]
    output = llama_engine.llm.output_processor
    async with httpx.AsyncClient(
        base_url=server, headers=USER, timeout=120, limits=httpx.Limits(max_connections=64)
    ) as http:
        left = await asyncio.gather(*(leave_after_first_chunk(http, b) for b in bodies))
        last_left = max(left)
        while output.get_num_unfinished_requests() and time.monotonic() - last_left < 30:
            await asyncio.sleep(0.02)
        drained_after = time.monotonic() - last_left
        assert output.get_num_unfinished_requests() == 0, "requests kept running after their clients left"
        assert llama_engine.admission.active_configs == 0 and not llama_engine._vector_refs
        assert running((await http.get("/metrics")).text) == 0
        # each of 50 requests would otherwise generate 900 tokens; they stop within a fraction of that
        assert drained_after < 5.0, drained_after
        print(f"{CLIENTS} disconnects: engine idle {drained_after:.3f} s after the last client left")
        again = await http.post("/v1/completions", json={**base, "stream": False, "max_tokens": 3})
        assert again.status_code == 200 and again.json()["usage"]["completion_tokens"] == 3
