"""Prefix caching stays on and never shares KV across steering configs (real engine, block size 32), on a dense
model and on an MoE."""

from __future__ import annotations

import random
from typing import Any

import pytest

from steering.conditions import Condition
from steering.spec import SteeringTerm
from tests.e2e.engine_helpers import random_vector, run

pytestmark = pytest.mark.engine


@pytest.fixture(params=["llama_engine", "moe_engine"])
def engine(request: Any) -> Any:
    return request.getfixturevalue(request.param)


def _prompt(seed: int, length: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(20, 500) for _ in range(length)]


def _setup(engine: Any) -> tuple[dict[str, Any], list[SteeringTerm]]:
    layers, hidden = engine.shape.num_layers, engine.shape.hidden_size
    vectors = {"p": random_vector("p", list(range(layers)), hidden, 0.5, 31)}
    return vectors, [SteeringTerm(vector="p", strength=1.5, layers=[1, 2])]


async def test_steered_request_never_reuses_unsteered_kv(engine: Any) -> None:
    vectors, terms = _setup(engine)
    prompt = _prompt(101, 300)
    warm = await run(engine, prompt, None, vectors, 8)
    again = await run(engine, prompt, None, vectors, 8)
    assert again.num_cached_tokens >= 256, "prefix caching should be on for repeated unsteered prompts"
    steered = await run(engine, prompt, terms, vectors, 8)
    assert steered.num_cached_tokens == 0, "a steered request reused unsteered KV"
    cold = await run(engine, prompt, terms, vectors, 8, cache_salt="cold-steered")
    assert steered.token_ids == cold.token_ids and steered.token_ids != warm.token_ids
    repeat = await run(engine, prompt, terms, vectors, 8)
    assert repeat.num_cached_tokens >= 256, "identical steered requests should share their cache"
    assert repeat.token_ids == steered.token_ids


async def test_unsteered_request_never_reuses_steered_kv(engine: Any) -> None:
    vectors, terms = _setup(engine)
    prompt = _prompt(202, 300)
    steered = await run(engine, prompt, terms, vectors, 8)
    plain = await run(engine, prompt, None, vectors, 8)
    assert plain.num_cached_tokens == 0, "an unsteered request reused steered KV"
    cold = await run(engine, prompt, None, vectors, 8, cache_salt="cold-plain")
    assert plain.token_ids == cold.token_ids != steered.token_ids


async def test_second_turn_after_generated_only_steering_matches_cold_run(engine: Any) -> None:
    """Turn 1 steers only generated tokens; vLLM caches full blocks of them. Turn 2 (unsteered) must not reuse."""
    vectors, _ = _setup(engine)
    terms = [SteeringTerm(vector="p", strength=2.0, layers=[1, 2], positions="generated")]
    turn1_prompt = _prompt(303, 64)
    turn1 = await run(engine, turn1_prompt, terms, vectors, 96)
    turn2_prompt = turn1_prompt + turn1.token_ids + _prompt(304, 10)
    turn2 = await run(engine, turn2_prompt, None, vectors, 12)
    assert turn2.num_cached_tokens == 0, "turn 2 reused KV computed under turn 1's steering"
    cold = await run(engine, turn2_prompt, None, vectors, 12, cache_salt="cold-turn2")
    assert turn2.token_ids == cold.token_ids


async def test_conditioned_terms_share_the_cache_by_token_and_never_by_prompt(llama_engine: Any) -> None:
    """A token-scoped condition is a function of each token's own prefix: identical requests share their KV. A
    prompt-scoped one decides from the whole prompt and shapes the KV after it: its requests never share."""
    engine = llama_engine
    vectors, _ = _setup(engine)
    vectors["c"] = random_vector("c", [1], engine.shape.hidden_size, 1.0, 32)
    prompt = _prompt(404, 300)
    by_token = [
        SteeringTerm(vector="p", strength=1.5, layers=[1, 2], condition=Condition(vector="c", layer=1, threshold=0.0))
    ]
    first = await run(engine, prompt, by_token, vectors, 8)
    repeat = await run(engine, prompt, by_token, vectors, 8)
    cold = await run(engine, prompt, by_token, vectors, 8, cache_salt="cold-conditioned")
    assert repeat.num_cached_tokens >= 256 and first.token_ids == repeat.token_ids == cold.token_ids
    whole = Condition(vector="c", layer=1, threshold=-1000.0, scope="prompt")  # fires
    by_prompt = [SteeringTerm(vector="p", strength=1.5, layers=[1, 2], condition=whole)]
    once = await run(engine, prompt, by_prompt, vectors, 8)
    twice = await run(engine, prompt, by_prompt, vectors, 8)
    assert twice.num_cached_tokens == 0, "a prompt-scoped request reused another request's KV"
    assert once.token_ids == twice.token_ids
    plain = await run(engine, prompt, None, vectors, 8)
    assert once.token_ids != plain.token_ids, "the prompt-scoped condition should have fired"
