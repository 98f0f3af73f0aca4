"""Speculative decoding with steering. The drafted tokens, from n-gram (prompt lookup) speculation or a draft
model, are verified by the target model as ordinary scheduled tokens of their request, at consecutive
positions, each carrying the request's slot. Steered greedy output with speculation must equal steered greedy
output without it, in a mixed batch, with drafts actually accepted. The draft model is not steered: patching
is per model instance, so with the target itself as the draft every draft is accepted for unsteered requests
and fewer are for steered ones."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_engine, stop_engine
from tests.e2e.engine_helpers import run
from tests.e2e.test_engine_batch import mixed_terms, mixed_vectors, prompts

pytestmark = pytest.mark.engine

NGRAM = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 1, "prompt_lookup_max": 3}


@pytest.fixture(scope="module", params=["ngram", "draft_model"])
async def spec_engine(request: Any, tiny_llama: Path, llama_engine: Any) -> Any:
    """Started after the shared engine, so vLLM's Prometheus collectors in this process are this engine's."""
    speculative = NGRAM if request.param == "ngram" else {"method": "draft_model", "model": str(tiny_llama)}
    speculative = {"num_speculative_tokens": 3, **speculative}
    extra = (("max_logprobs", -1), ("block_size", 32), ("speculative_config", speculative))
    engine = make_engine(tiny_llama, extra=extra)
    yield request.param, engine
    stop_engine(engine)


def spec_counts() -> tuple[float, float]:
    """(draft tokens, accepted tokens) so far, from vLLM's own spec-decode counters."""
    from vllm.v1.metrics.reader import Counter, get_metrics_snapshot

    totals = {"vllm:spec_decode_num_draft_tokens": 0.0, "vllm:spec_decode_num_accepted_tokens": 0.0}
    for metric in get_metrics_snapshot():
        if isinstance(metric, Counter) and metric.name in totals:
            totals[metric.name] += metric.value
    return totals["vllm:spec_decode_num_draft_tokens"], totals["vllm:spec_decode_num_accepted_tokens"]


async def mixed(engine: Any, steer: bool = True) -> list[list[int]]:
    """10 prompts that repeat themselves (so n-grams match), 5 steered with different configs, 5 not."""
    vectors = mixed_vectors(engine)
    plan = mixed_terms(engine.shape.num_layers) if steer else [None] * 10
    batch = [p + p for p in prompts(10, 12, seed=3)]
    results = await asyncio.gather(*(run(engine, p, t, vectors, 32) for p, t in zip(batch, plan, strict=True)))
    return [r.token_ids for r in results]


async def counted(engine: Any, steer: bool) -> tuple[list[list[int]], float, float]:
    """The mixed batch's outputs, and the draft and accepted tokens it took."""
    drafted_before, accepted_before = spec_counts()
    outputs = await mixed(engine, steer)
    drafted, accepted = spec_counts()
    return outputs, drafted - drafted_before, accepted - accepted_before


async def test_steered_greedy_with_speculation_equals_without(spec_engine: Any, llama_engine: Any) -> None:
    method, engine = spec_engine
    with_speculation, drafted, accepted = await counted(engine, steer=True)
    without = await mixed(llama_engine)
    assert with_speculation == without
    assert drafted > 0 and accepted > 0, (drafted, accepted)
    plain = await mixed(llama_engine, steer=False)
    plan = mixed_terms(llama_engine.shape.num_layers)
    assert sum(without[i] != plain[i] for i, t in enumerate(plan) if t) >= 4
    assert all(without[i] == plain[i] for i, t in enumerate(plan) if t is None)
    stats = await engine.worker_stats()
    assert all(s["errors"] == 0 for s in stats), stats
    if method == "draft_model":  # the draft is the target's own checkpoint, unsteered
        _, plain_drafted, plain_accepted = await counted(engine, steer=False)
        assert plain_accepted == plain_drafted > 0
        assert accepted < drafted
