"""SmolLM2-135M-Instruct, a real pretrained chat model (fetched from the package registry, dequantized to fp32),
on one shared engine: unsteered output, every op at every site, capture and a vector the server's own
extraction job makes, each against Hugging Face transformers."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from steering.spec import SteeringTerm
from steering.vectors import SteeringVector
from tests.e2e.engine_helpers import extracted, lookup_in, random_vector
from tests.steering.hf_reference import RefTerm, reference_logprobs

pytestmark = pytest.mark.engine

_ids = itertools.count()
TOP = 20  # logprobs compared per position: the engine's top 20 at each position of the teacher-forced sequence
EARLY, LATE = 2, 27


async def generate(
    engine: Any,
    prompt: list[int],
    terms: list[SteeringTerm] | None = None,
    vectors: dict[str, SteeringVector] | None = None,
    max_tokens: int = 6,
    logprobs: bool = True,
) -> tuple[list[int], list[dict[int, float]]]:
    """Greedy tokens and, per position after the first, the top-20 next-token logprobs ({token: logprob})."""
    from vllm import SamplingParams

    params = SamplingParams(
        max_tokens=max_tokens,
        temperature=0.0,
        logprobs=TOP if logprobs else None,
        prompt_logprobs=TOP if logprobs else None,
    )
    spec = engine.resolve(terms, lookup_in(vectors or {})) if terms else None
    final = None
    async for output in engine.generate(prompt, params, f"smol-{next(_ids)}", spec):
        final = output
    assert final is not None
    out = final.outputs[0]
    rows: list[dict[int, float]] = []
    if logprobs:
        for row in list(final.prompt_logprobs[1:]) + list(out.logprobs):
            rows.append({int(t): float(lp.logprob) for t, lp in row.items()})
    return list(out.token_ids), rows


def chat(engine: Any, text: str) -> list[int]:
    ids: list[int] = engine.render_chat([{"role": "user", "content": text}])
    return ids


async def test_unsteered_greedy_equals_transformers(smol_engine: Any, hf_smol: Any) -> None:
    tok = smol_engine.tokenizer
    prompts = [
        chat(smol_engine, "What is the capital of France?"),
        chat(smol_engine, "Write one sentence about the sea."),
        tok.encode("The three primary colors are"),
        tok.encode("def fibonacci(n):\n"),
    ]
    results = await asyncio.gather(*(generate(smol_engine, p, max_tokens=24, logprobs=False) for p in prompts))
    for prompt, (tokens, _) in zip(prompts, results, strict=True):
        with torch.no_grad():
            expected = hf_smol.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False)[0]
        reference = [int(t) for t in expected[len(prompt) :]]
        assert tokens == reference[: len(tokens)] and len(tokens) >= min(len(reference), 1), (
            f"{tok.decode(prompt)!r}: vLLM {tok.decode(tokens)!r} vs HF {tok.decode(reference)!r}"
        )
    assert "Paris" in tok.decode(results[0][0])  # a real model: it knows things


def compare(
    hf: Any, prompt: list[int], result: tuple[list[int], list[dict[int, float]]], terms: list[RefTerm]
) -> float:
    """Largest |engine - HF| logprob over the engine's top-20 at every position of prompt + generated tokens."""
    tokens, rows = result
    expected = reference_logprobs(hf, prompt + tokens[:-1], len(prompt), terms)
    assert expected.shape[0] == len(rows)
    return max(abs(lp - float(expected[i, t])) for i, row in enumerate(rows) for t, lp in row.items() if lp > -12)


async def test_every_op_and_site_on_an_early_and_a_late_layer_matches_hf_hooks(smol_engine: Any, hf_smol: Any) -> None:
    shape = smol_engine.shape
    prompt = chat(smol_engine, "Tell me about apples.")
    vectors = {"v": random_vector("v", [EARLY, LATE], shape.hidden_size, scale=0.3, seed=3)}
    strength = {"add": 4.0, "project": 2.0, "clamp": 3.0}
    cases = [(op, site) for op in ("add", "project", "clamp") for site in ("residual", "mlp", "attn")]
    terms = {
        case: [SteeringTerm(vector="v", strength=strength[case[0]], layers=[EARLY, LATE], op=case[0], site=case[1])]
        for case in cases
    }
    results = await asyncio.gather(
        generate(smol_engine, prompt), *(generate(smol_engine, prompt, terms[c], vectors) for c in cases)
    )
    baseline = results[0]
    assert compare(hf_smol, prompt, baseline, []) < 2e-3
    directions = {k: torch.from_numpy(v) for k, v in vectors["v"].layers.items()}
    for (op, site), result in zip(cases, results[1:], strict=True):
        ref = RefTerm(directions, strength[op], (EARLY, LATE), op, site, "all")
        diff = compare(hf_smol, prompt, result, [ref])
        assert diff < 2e-3, f"{op}/{site}: max |logprob diff| {diff:.2e} vs the HF forward-hook reference"
        unsteered = compare(hf_smol, prompt, result, [])
        assert unsteered > 20 * max(diff, 1e-4), f"{op}/{site}: steering barely moved the logprobs ({unsteered:.2e})"


async def test_capture_equals_hf_hidden_states(smol_engine: Any, hf_smol: Any) -> None:
    ids = chat(smol_engine, "How many legs does a spider have?")
    layers = [0, EARLY, 14, LATE, 28]  # not the last block: HF's hidden_states[-1] has the final norm applied
    captured = await smol_engine.capture(ids, layers)
    with torch.no_grad():
        hidden = hf_smol(torch.tensor([ids]), output_hidden_states=True).hidden_states
    for layer in layers:
        expected = hidden[layer + 1][0].numpy()
        got = captured.layers[layer]
        assert got.shape == expected.shape
        scale = float(np.abs(expected).max())
        err = float(np.abs(got - expected).max())
        assert err < 1e-3 * max(1.0, scale), f"layer {layer}: max |capture - HF| {err:.2e} (scale {scale:.1f})"


SEA = ["ocean", "sea", "waves", "beach", "tide", "sailors", "harbor", "coral"]
PEAKS = ["mountain", "summit", "glacier", "cliffs", "valley", "climbers", "alpine", "ridge"]
FRAMES = [
    "We spent the whole day by the {}.",
    "The photograph shows the {} at dawn.",
    "Everyone talked about the {} all evening.",
    "She painted the {} in bright colours.",
]


def texts(words: list[str]) -> list[str]:
    return [frame.format(word) for word in words for frame in FRAMES]  # 32 texts


async def test_vector_from_the_servers_extraction_job_moves_topic_words_monotonically(
    smol_engine: Any, smollm2: Path, tmp_path: Path
) -> None:
    from tests.e2e.conftest import vllm_app

    env = {"STEERSERVE_DATA_DIR": str(tmp_path), "STEERSERVE_ADMIN_KEY": "admin"}
    app = await vllm_app(smol_engine, ["--model", str(smollm2), "--served-model-name", "smol"], env)
    admin = {"Authorization": "Bearer admin"}
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://smol", timeout=600) as client,
    ):
        body = {
            "id": "sea",
            "positive": texts(SEA),
            "negative": texts(PEAKS),
            "defaults": {"op": "add", "site": "residual", "strength": 1.0},
        }
        result = await extracted(client, body, headers=admin, every=0.5)
        _, vector = await app.state.steerserve.registry.vector("sea", None)
        layer = result["layers"][0]
        assert set(vector.layers) == {layer}
    tok = smol_engine.tokenizer
    sea_ids = [tok.encode(f" {w}")[0] for w in ("ocean", "sea", "beach", "waves")]
    peak_ids = [tok.encode(f" {w}")[0] for w in ("mountain", "mountains", "summit", "hills")]
    held_out = ["Last summer we drove to the", "My favourite place to relax is the", "In the picture you can see the"]
    strengths = [-1.0, -0.5, 0.0, 0.5, 1.0]

    async def score(strength: float) -> float:
        """Mean over held-out prompts of log P(sea words) - log P(mountain words) for the next token."""
        from vllm import SamplingParams

        terms = [SteeringTerm(vector="sea", strength=strength)] if strength else None
        total = 0.0
        for text in held_out:
            params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=-1)
            spec = smol_engine.resolve(terms, lookup_in({"sea": vector})) if terms else None
            final = None
            async for output in smol_engine.generate(tok.encode(text), params, f"smol-{next(_ids)}", spec):
                final = output
            assert final is not None
            row = final.outputs[0].logprobs[0]
            sea = torch.logsumexp(torch.tensor([row[t].logprob for t in sea_ids]), 0)
            peak = torch.logsumexp(torch.tensor([row[t].logprob for t in peak_ids]), 0)
            total += float(sea - peak)
        return total / len(held_out)

    scores = [await score(s) for s in strengths]
    assert all(b > a for a, b in itertools.pairwise(scores)), f"not monotone over {strengths}: {scores}"
    assert scores[-1] - scores[0] > 0.3, scores  # measured: 0.52 nats from -1 to +1
