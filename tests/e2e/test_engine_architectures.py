"""Decoder layers of other architectures steer like the HF reference; neighbours stay untouched: Qwen2, Qwen3,
Phi-3, Gemma 3 (post-norms: `mlp` is the branch after its post-feedforward norm), Granite (layers that
return one hidden state; residual and logit multipliers) and two MoE models, Mixtral and Qwen3-MoE (`mlp` is the
sparse MoE block's output). Found from each model's own layer list, whatever the layer class."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from steering.errors import InvalidSteeringError
from steering.spec import SteeringTerm, TokenPositions
from tests.conftest import make_engine, stop_engine
from tests.e2e.engine_helpers import random_vector, run
from tests.e2e.test_engine_batch import mixed_terms, run_mixed
from tests.e2e.test_engine_vs_reference import GENERATED, PROMPT, STRENGTH, TRIGGER, _check, _ref_terms
from tests.fixtures.tiny import TinyModelSpec, build_tiny_model

pytestmark = pytest.mark.engine


# Mistral is not listed: vLLM serves it with Llama's decoder layer (MistralDecoderLayer subclasses it).
ARCHITECTURES = ["qwen2", "qwen3", "phi3", "gemma3", "granite", "mixtral", "qwen3_moe"]


@pytest.fixture(scope="module", params=[*ARCHITECTURES, "qwen3_moe:compiled"])
async def arch_engine(request: Any, model_cache_dir: Path, moe_engine: Any) -> Any:
    """One engine per architecture, eager; and an MoE under torch.compile (vLLM's default), where a Python
    branch frozen at trace time would show as a mismatch with the reference."""
    from transformers import AutoModelForCausalLM

    arch, _, mode = str(request.param).partition(":")
    path = build_tiny_model(TinyModelSpec(architecture=arch, seed=1), model_cache_dir)
    shared = request.param == "qwen3_moe"  # the session's MoE engine is this one
    engine = moe_engine if shared else make_engine(path, enforce_eager=mode != "compiled")
    hf = AutoModelForCausalLM.from_pretrained(str(path), dtype="float32").eval()
    yield arch, engine, hf
    if not shared:
        stop_engine(engine)


async def test_architecture_matches_reference_and_isolates_neighbours(arch_engine: Any) -> None:
    arch, engine, hf = arch_engine
    assert engine.shape.architecture.lower().startswith(arch.replace("_", ""))
    layers, hidden = engine.shape.num_layers, engine.shape.hidden_size
    plain_run = await run(engine, PROMPT, None, None, GENERATED)
    assert plain_run.token_ids == _hf_greedy(hf, PROMPT, GENERATED), f"{arch}: unsteered greedy differs from HF"
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
    await _check_capture(arch, engine, hf)
    mixed, plain = await run_mixed(engine)
    plan = mixed_terms(layers)
    assert all(mixed[i] == plain[i] for i, t in enumerate(plan) if t is None)
    assert sum(mixed[i] != plain[i] for i, t in enumerate(plan) if t) >= 3


async def _check_capture(arch: str, engine: Any, hf: Any) -> None:
    """Capture at the residual site equals HF's hidden_states after block 0 (every convention); the MLP site
    of a layer that returns one hidden state is refused with a clear error rather than answered wrongly."""
    acts = await engine.capture(PROMPT, [0])
    with torch.no_grad():
        expected = hf(torch.tensor([PROMPT]), output_hidden_states=True).hidden_states[1][0].numpy()
    np.testing.assert_allclose(acts.layers[0], expected, atol=2e-4, rtol=1e-3, err_msg=arch)
    if arch == "granite":
        with pytest.raises(InvalidSteeringError, match="site 'mlp'"):
            await engine.capture(PROMPT, [0], site="mlp")


def _hf_greedy(model: Any, prompt: list[int], steps: int) -> list[int]:
    """Greedy continuation by plain forward passes (EOS not special, as with the engine's ignore_eos)."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt) :]
