"""`reasoning_budget` on a chat request: the budget preset's terms ramped in by generated-token count, vLLM's
thinking budget as the backstop, and its errors in the API's own shape."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.server.fake_engine import FakeEngine
from tests.server.fake_vllm import MODEL, make_client
from tests.server.test_routes import assert_error, upload

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}
DOWN = {"vector": "r", "strength": -0.5, "layers": [1], "site": "mlp", "positions": {"tokens": ["\n"]}}


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, FakeEngine]]:
    c, engine, _ = await make_client(tmp_path)
    assert (await c.post("/v1/steering/vectors", json=upload())).status_code == 201
    yield c, engine
    await c.aclose()


async def test_a_budget_ramps_the_down_preset_in_and_sets_the_backstop(client: Any) -> None:
    c, engine = client
    assert (await c.put("/v1/steering/presets/reflect-down", json={"steering": [DOWN]})).status_code == 200
    answer = await c.post("/v1/chat/completions", json={**CHAT, "reasoning_budget": 40})
    assert answer.status_code == 200, answer.text
    term = answer.json()["steering"]["terms"][0]
    assert term["schedule"] == {"by": "generated_tokens", "points": [[0, -0.75], [40, -3.0]]}
    assert term["strength"] is None and term["site"] == "mlp" and term["positions"] == {"tokens": [10]}
    payload = json.loads(engine.seen[-1][1]["steerserve"])
    assert payload["terms"][0]["schedule"] == [[0, "-0.75"], [40, "-3.0"]]
    assert engine.requests[-1].thinking_token_budget == 60  # 1.5 x B: vLLM's hard stop behind the schedule
    own = await c.post("/v1/chat/completions", json={**CHAT, "reasoning_budget": 40, "thinking_token_budget": 45})
    assert own.status_code == 200 and engine.requests[-1].thinking_token_budget == 45  # the request's own stop
    steered = await c.post("/v1/chat/completions", json={**CHAT, "reasoning_budget": 40, "steering": [{"vector": "r"}]})
    assert [t.get("schedule") is not None for t in steered.json()["steering"]["terms"]] == [False, True]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {**CHAT, "reasoning_budget": 0}),
        ("/v1/chat/completions", {**CHAT, "reasoning_budget": 65}),  # over the model's context (64)
        ("/v1/chat/completions", {**CHAT, "reasoning_budget": "lots"}),
        ("/v1/chat/completions", {**CHAT, "reasoning_budget": 10}),  # no reflect-down preset on this server
        ("/v1/chat/completions", {**CHAT, "reasoning_budget": 10, "experiment": "e"}),
        ("/v1/completions", {"model": MODEL, "prompt": "x", "reasoning_budget": 10}),
    ],
)
async def test_bad_budgets_are_400_naming_the_field(client: Any, path: str, body: dict[str, Any]) -> None:
    c, engine = client
    assert_error(await c.post(path, json=body), 400, "reasoning_budget")
    assert engine.seen == []  # nothing reached vLLM's handler
