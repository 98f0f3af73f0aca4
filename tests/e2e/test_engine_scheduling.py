"""Scheduling must not change steering: chunked prefill, preemption and config queueing (real engine, a dense
model and an MoE).

A constrained engine (2 config slots, 32-token step budget, a KV cache of 6 blocks of 32 tokens) runs the same
requests as the roomy shared engine; every output must match token for token. Each request needs 4 blocks by
its end (70+ prompt tokens + 40 generated); with `scheduler_reserve_full_isl` off, admission only checks the
first chunk, so requests are over-admitted and the scheduler must preempt.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from steering.config import EngineSteeringConfig
from steering.spec import SteeringTerm
from tests.conftest import make_engine, stop_engine
from tests.e2e.engine_helpers import random_vector, run
from tests.e2e.test_engine_batch import prompts

pytestmark = pytest.mark.engine


def _preemptions() -> float:
    from prometheus_client import REGISTRY

    total = 0.0
    for metric in REGISTRY.collect():
        if metric.name.startswith("vllm:num_preemptions"):
            total += sum(s.value for s in metric.samples if s.name.endswith("_total"))
    return total


@pytest.fixture(scope="module", params=["llama", "moe"])
async def engines(request: Any, tiny_llama: Path, tiny_moe: Path, llama_engine: Any, moe_engine: Any) -> Any:
    """(constrained engine, roomy shared engine) of one model: the tiny Llama, then the tiny Qwen3-MoE."""
    model, roomy = (tiny_llama, llama_engine) if request.param == "llama" else (tiny_moe, moe_engine)
    engine = make_engine(
        model,
        steering=EngineSteeringConfig(max_configs=2),
        max_num_batched_tokens=32,
        max_num_seqs=8,
        max_model_len=128,
        extra=(
            ("num_gpu_blocks_override", 6),
            ("block_size", 32),
            ("max_logprobs", -1),
            ("scheduler_reserve_full_isl", False),
        ),
    )
    yield engine, roomy
    stop_engine(engine)


async def test_chunked_prefill_preemption_and_queueing_change_nothing(engines: Any) -> None:
    constrained_engine, roomy_engine = engines
    layers, hidden = roomy_engine.shape.num_layers, roomy_engine.shape.hidden_size
    vectors = {"u": random_vector("u", list(range(layers)), hidden, 0.5, 11)}
    batch = prompts(8, 70, seed=21)  # 70+ tokens: 3+ prefill chunks of 32 each
    plans: list[list[SteeringTerm] | None] = [
        [SteeringTerm(vector="u", strength=0.5 * (i + 1), layers=[1], positions="all" if i % 2 else "generated")]
        if i % 4 != 3
        else None
        for i in range(8)
    ]
    before = _preemptions()
    constrained = await asyncio.gather(
        *(run(constrained_engine, p, t, vectors, 40) for p, t in zip(batch, plans, strict=True))
    )
    preempted = _preemptions() - before
    roomy = await asyncio.gather(*(run(roomy_engine, p, t, vectors, 40) for p, t in zip(batch, plans, strict=True)))
    for i, (a, b) in enumerate(zip(constrained, roomy, strict=True)):
        assert a.token_ids == b.token_ids, f"request {i} ({plans[i]}) differs under chunking/preemption"
    assert preempted > 0, "the constrained engine was meant to preempt; make its KV cache smaller"
    assert len({tuple(r.token_ids) for r in constrained}) > 4
    stats = await constrained_engine.worker_stats()
    assert stats[0]["errors"] == 0 and stats[0]["active_requests"] == 0 and stats[0]["configs_in_use"] == 0


async def test_seeded_requests_survive_chunked_prefill(engines: Any) -> None:
    """A `seed` request whose prompt is split into chunks used to kill the CPU engine (Generator.set_offset)."""
    from vllm import SamplingParams

    constrained_engine = engines[0]

    async def seeded(prompt: list[int], seed: int) -> list[int]:
        params = SamplingParams(max_tokens=6, temperature=1.0, seed=seed)
        final = None
        async for output in constrained_engine.generate(prompt, params, f"seeded-{seed}-{len(prompt)}"):
            final = output
        assert final is not None
        return list(final.outputs[0].token_ids)

    long_prompts = prompts(3, 70, seed=5)
    outs = await asyncio.gather(*(seeded(p, 7 + i) for i, p in enumerate(long_prompts)))
    assert all(len(o) == 6 for o in outs)
    assert await constrained_engine.check_health()
