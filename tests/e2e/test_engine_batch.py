"""Steering stays inside its own requests of a shared continuous batch (real engine)."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import pytest

from steering.conditions import Condition
from steering.spec import Schedule, SteeringTerm
from steering.vectors import SteeringVector
from tests.e2e.engine_helpers import forcing_direction, random_vector, run

pytestmark = pytest.mark.engine


def prompts(count: int, length: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(20, 500) for _ in range(length + i)] for i in range(count)]


def mixed_terms(layers: int) -> list[list[SteeringTerm] | None]:
    """10 requests: 5 unsteered, 5 steered with different configs (one with a schedule, two conditioned)."""
    return [
        None,
        [SteeringTerm(vector="u", strength=2.0, layers=[1], condition=Condition(vector="w", layer=0, threshold=0.0))],
        None,
        [SteeringTerm(vector="w", strength=1.5, layers=[0, 2], op="project", site="mlp")],
        None,
        [SteeringTerm(vector="u", strength=-2.0, layers=[layers - 1], site="attn", positions="generated")],
        [SteeringTerm(vector="w", strength=0.5, op="clamp", positions="last_prompt")],
        None,
        [
            SteeringTerm(vector="u", strength=1.0),
            SteeringTerm(vector="w", strength=3.0, op="project"),
            SteeringTerm(vector="u", layers=[0], schedule=Schedule(points=[(0, 0.0), (3, 0.0), (12, 1.5)])),
            SteeringTerm(
                vector="w",
                strength=-2.0,
                layers=[2],
                condition=Condition(vector="u", layer=1, threshold=-5.0, scope="prompt"),
            ),
        ],
        None,
    ]


def mixed_vectors(engine: Any) -> dict[str, SteeringVector]:
    hidden, layers = engine.shape.hidden_size, engine.shape.num_layers
    return {
        "u": random_vector("u", list(range(layers)), hidden, scale=0.5, seed=11),
        "w": random_vector("w", list(range(layers)), hidden, scale=0.5, seed=12),
    }


async def run_mixed(engine: Any, max_tokens: int = 16) -> tuple[list[list[int]], list[list[int]]]:
    """(mixed batch outputs, all-unsteered batch outputs) for the same 10 prompts."""
    vectors = mixed_vectors(engine)
    batch = prompts(10, 12, seed=3)
    plan = mixed_terms(engine.shape.num_layers)
    mixed = await asyncio.gather(*(run(engine, p, t, vectors, max_tokens) for p, t in zip(batch, plan, strict=True)))
    plain = await asyncio.gather(*(run(engine, p, None, vectors, max_tokens) for p in batch))
    return [r.token_ids for r in mixed], [r.token_ids for r in plain]


async def test_unsteered_neighbours_are_token_identical(llama_engine: Any) -> None:
    # the session's engine is shared: a test that forces a worker error (test_server_openai) may have run first
    errors_before = [s["errors"] for s in await llama_engine.worker_stats()]
    mixed, plain = await run_mixed(llama_engine)
    plan = mixed_terms(llama_engine.shape.num_layers)
    for i, terms in enumerate(plan):
        if terms is None:
            assert mixed[i] == plain[i], f"unsteered request {i} changed beside steered ones"
    changed = sum(mixed[i] != plain[i] for i, terms in enumerate(plan) if terms is not None)
    assert changed >= 4, f"only {changed} of 5 steered requests changed"
    stats = await llama_engine.worker_stats()
    assert [s["errors"] for s in stats] == errors_before, stats  # none during this batch


async def test_unembedding_vector_forces_its_token(llama_engine: Any, tiny_llama: Path) -> None:
    engine = llama_engine
    target = 300
    vector = SteeringVector("force", forcing_direction(tiny_llama, target))
    batch = prompts(8, 10, seed=5)
    steer = [SteeringTerm(vector="force", strength=1.0, layers=[-1])]
    plan = [steer if i % 2 else None for i in range(8)]
    results = await asyncio.gather(*(run(engine, p, t, {"force": vector}, 6) for p, t in zip(batch, plan, strict=True)))
    plain = await asyncio.gather(*(run(engine, p, None, {}, 6) for p in batch))
    for i, terms in enumerate(plan):
        if terms is None:
            assert results[i].token_ids == plain[i].token_ids
        else:
            assert results[i].token_ids == [target] * 6, results[i].token_ids
