"""Qwen2, Qwen3 and Mistral decoder layers steer like the HF reference; neighbours stay untouched."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import pytest

from steering.models.tiny import TinyModelSpec, build_tiny_model
from steering.spec import SteeringTerm, TokenPositions
from tests.conftest import make_engine
from tests.e2e.engine_helpers import random_vector, run
from tests.e2e.test_engine_batch import mixed_terms, run_mixed
from tests.e2e.test_engine_vs_reference import GENERATED, PROMPT, STRENGTH, TRIGGER, _check, _ref_terms

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module", params=["qwen2", "qwen3", "mistral"])
async def arch_engine(request: Any, model_cache_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    path = build_tiny_model(TinyModelSpec(architecture=request.param, seed=1), model_cache_dir)
    engine = make_engine(path)
    hf = AutoModelForCausalLM.from_pretrained(str(path), dtype="float32").eval()
    yield request.param, engine, hf
    engine.shutdown()


async def test_architecture_matches_reference_and_isolates_neighbours(arch_engine: Any) -> None:
    arch, engine, hf = arch_engine
    assert engine.shape.architecture.lower().startswith(arch)
    layers, hidden = engine.shape.num_layers, engine.shape.hidden_size
    vectors = {"v": random_vector("v", [0, layers - 1], hidden, scale=0.3, seed=5)}
    cases = [
        [SteeringTerm(vector="v", strength=STRENGTH[op], layers=[0, -1], op=op, site=site, positions=mode)]
        for (op, site), mode in zip(
            itertools.product(("add", "project", "clamp"), ("residual", "mlp", "attn")),
            itertools.cycle(["all", "generated", TokenPositions(tokens=[TRIGGER])]),
        )
    ]
    results = await asyncio.gather(*(run(engine, PROMPT, t, vectors, GENERATED, full_logprobs=True) for t in cases))
    for terms, result in zip(cases, results, strict=True):
        _check(hf, result, _ref_terms(terms, vectors, layers), f"{arch}:{terms[0].op}/{terms[0].site}")
    mixed, plain = await run_mixed(engine)
    plan = mixed_terms(layers)
    assert all(mixed[i] == plain[i] for i, t in enumerate(plan) if t is None)
    assert sum(mixed[i] != plain[i] for i, t in enumerate(plan) if t) >= 3
