"""Every op x site x positions mode on the real engine equals an independent Hugging Face reference.

Logits are compared at every position of a teacher-forced sequence (prompt + generated tokens), which pins
down layer indexing (incl. negative layers), site and position semantics, and the composition of terms.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest
import torch

from steering.conditions import Condition
from steering.spec import Schedule, SteeringTerm, TokenPositions
from tests.e2e.engine_helpers import Result, random_vector, run
from tests.steering.hf_reference import RefCondition, RefTerm, reference_logprobs

pytestmark = pytest.mark.engine

TRIGGER = 17
PROMPT = [40, 41, 42, TRIGGER, 43, 44, 45, 46, TRIGGER, 47, 48, 49, 50, 51, TRIGGER, 52, 53, 54]
STRENGTH = {"add": 1.0, "project": 2.0, "clamp": 3.0}
MODES: list[Any] = ["all", "prompt", "generated", "last_prompt", TokenPositions(tokens=[TRIGGER])]
GENERATED = 6
TOL = 2e-3


def _ref_terms(terms: list[SteeringTerm], vectors: dict[str, Any], num_layers: int) -> list[RefTerm]:
    out = []
    for term in terms:
        vector = vectors[term.vector]
        positions = term.positions
        layers = term.layers if term.layers is not None else sorted(vector.layers)
        out.append(
            RefTerm(
                direction={k: torch.from_numpy(v) for k, v in vector.layers.items()},
                strength=float(term.strength if term.strength is not None else 1.0),
                layers=tuple(layer % num_layers for layer in layers),
                op=term.op or "add",
                site=term.site or "residual",
                positions="tokens" if isinstance(positions, TokenPositions) else (positions or "all"),
                tokens=tuple(positions.tokens) if isinstance(positions, TokenPositions) else (),  # type: ignore[arg-type]
                schedule=tuple((int(t), float(v)) for t, v in term.schedule.points) if term.schedule else (),
                condition=_ref_condition(term.condition, vectors) if term.condition else None,
            )
        )
    return out


def _ref_condition(condition: Condition, vectors: dict[str, Any]) -> RefCondition:
    assert condition.threshold is not None
    direction = torch.from_numpy(vectors[condition.vector].layers[condition.layer])
    return RefCondition(direction, condition.layer, condition.threshold, condition.scope or "token")


def _check(model: Any, result: Result, terms: list[RefTerm], label: str) -> float:
    assert result.logprobs is not None
    ids = PROMPT + result.token_ids[:-1]
    expected = reference_logprobs(model, ids, len(PROMPT), terms)
    actual = result.logprobs
    assert actual.shape == expected.shape, label
    mask = expected > -15
    diff = (actual - expected).abs()[mask].max().item()
    assert diff < TOL, f"{label}: max |logprob diff| {diff:.2e} vs the HF reference"
    return diff


async def test_every_op_site_and_position_mode_matches_hf(llama_engine: Any, hf_llama: Any) -> None:
    engine = llama_engine
    hidden, layers = engine.shape.hidden_size, engine.shape.num_layers
    vectors = {"v": random_vector("v", [1, layers - 1], hidden, scale=0.3, seed=7)}
    cases = []
    for op, site, mode in itertools.product(("add", "project", "clamp"), ("residual", "mlp", "attn"), MODES):
        cases.append(
            [SteeringTerm(vector="v", strength=STRENGTH[op], layers=[1, -1], op=op, site=site, positions=mode)]
        )
    results = await asyncio.gather(
        run(engine, PROMPT, None, vectors, GENERATED, full_logprobs=True),
        *(run(engine, PROMPT, terms, vectors, GENERATED, full_logprobs=True) for terms in cases),
    )
    baseline, steered = results[0], results[1:]
    _check(hf_llama, baseline, [], "unsteered")
    for terms, result in zip(cases, steered, strict=True):
        term = terms[0]
        label = f"{term.op}/{term.site}/{term.positions}"
        _check(hf_llama, result, _ref_terms(terms, vectors, layers), label)
        assert result.logprobs is not None and baseline.logprobs is not None
        effect = (result.logprobs - baseline.logprobs).abs().max().item()
        assert effect > 0.05, f"{label}: steering changed nothing (max diff {effect:.3g})"
        if isinstance(term.positions, TokenPositions):
            first = PROMPT.index(TRIGGER)  # before the first trigger nothing may change
            assert torch.allclose(result.logprobs[:first], baseline.logprobs[:first], atol=1e-5), label
        if term.positions == "generated":  # the prompt and the first output token are not steered
            upto = len(PROMPT)
            assert torch.allclose(result.logprobs[:upto], baseline.logprobs[:upto], atol=1e-5), label


async def test_terms_compose_in_list_order(llama_engine: Any, hf_llama: Any) -> None:
    engine = llama_engine
    hidden, layers = engine.shape.hidden_size, engine.shape.num_layers
    vectors = {
        "a": random_vector("a", list(range(layers)), hidden, scale=0.3, seed=1),
        "b": random_vector("b", list(range(layers)), hidden, scale=0.3, seed=2),
    }
    terms = [
        SteeringTerm(vector="a", strength=0.8, layers=[2], op="add", site="residual"),
        SteeringTerm(vector="b", strength=2.0, layers=[2], op="project", site="residual"),
        SteeringTerm(vector="a", strength=-1.0, layers=[2], op="clamp", site="residual", positions="generated"),
        SteeringTerm(vector="b", strength=1.5, layers=[0, 2], op="add", site="mlp", positions="prompt"),
        SteeringTerm(vector="a", strength=1.2, layers=[0], op="project", site="attn"),
    ]
    swapped = [terms[1], terms[0], *terms[2:]]
    first, second = await asyncio.gather(
        run(engine, PROMPT, terms, vectors, GENERATED, full_logprobs=True),
        run(engine, PROMPT, swapped, vectors, GENERATED, full_logprobs=True),
    )
    _check(hf_llama, first, _ref_terms(terms, vectors, layers), "composition")
    _check(hf_llama, second, _ref_terms(swapped, vectors, layers), "composition swapped")
    assert first.logprobs is not None and second.logprobs is not None
    assert (first.logprobs - second.logprobs).abs().max().item() > 1e-3, "add and project must not commute"


async def test_schedules_give_each_token_the_strength_of_its_generated_count(llama_engine: Any, hf_llama: Any) -> None:
    """A scheduled term's strength at each position equals its formula at that token's t (HF reference with the
    same per-position strength), in one batch with a fixed-strength term and an unsteered request."""
    engine = llama_engine
    hidden, layers = engine.shape.hidden_size, engine.shape.num_layers
    vectors = {"v": random_vector("v", [1, layers - 1], hidden, scale=0.3, seed=11)}
    ramp = Schedule(points=[(0, 0.0), (2, 0.0), (5, 2.5)])
    cases = [
        [SteeringTerm(vector="v", layers=[1, -1], op="add", site="residual", schedule=ramp)],
        [
            SteeringTerm(
                vector="v", layers=[1], op="project", site="mlp", schedule=Schedule(points=[(1, 3.0), (4, -2.0)])
            )
        ],
        [
            SteeringTerm(vector="v", layers=[-1], op="add", site="attn", positions="generated", schedule=ramp),
            SteeringTerm(vector="v", strength=1.0, layers=[1], op="add", site="residual"),
        ],
    ]
    results = await asyncio.gather(
        run(engine, PROMPT, None, vectors, GENERATED, full_logprobs=True),
        *(run(engine, PROMPT, terms, vectors, GENERATED, full_logprobs=True) for terms in cases),
    )
    baseline, steered = results[0], results[1:]
    _check(hf_llama, baseline, [], "unsteered neighbour")
    for terms, result in zip(cases, steered, strict=True):
        _check(hf_llama, result, _ref_terms(terms, vectors, layers), f"schedule {terms[0].op}/{terms[0].site}")
    assert steered[0].logprobs is not None and baseline.logprobs is not None
    upto = len(PROMPT) + 2  # the ramp is 0 until t = 2: the prompt and the first two outputs are unchanged
    assert torch.allclose(steered[0].logprobs[:upto], baseline.logprobs[:upto], atol=1e-5)
    assert (steered[0].logprobs[upto:] - baseline.logprobs[upto:]).abs().max().item() > 0.05


def _prompt_projections(model: Any, direction: Any, layer: int) -> torch.Tensor:
    """r̂·x over the prompt's stream after block `layer`, unsteered (HF)."""
    with torch.no_grad():
        states = model(torch.tensor([PROMPT]), output_hidden_states=True).hidden_states[layer + 1][0]
    unit = torch.from_numpy(direction) / float(torch.from_numpy(direction).norm())
    return states.float() @ unit


async def test_conditions_fire_exactly_where_the_reference_projection_exceeds_theta(
    llama_engine: Any, hf_llama: Any
) -> None:
    """Token- and prompt-scoped conditions on the real engine equal the HF reference gated by the same rule, beside
    an unsteered request; a condition at a term's own layer reads the stream before that layer's steering."""
    engine = llama_engine
    hidden, layers = engine.shape.hidden_size, engine.shape.num_layers
    vectors = {
        "v": random_vector("v", [1, 2, layers - 1], hidden, scale=0.3, seed=21),
        "c": random_vector("c", [1], hidden, scale=1.0, seed=22),
    }
    proj = _prompt_projections(hf_llama, vectors["c"].layers[1], 1)
    ordered = proj.sort().values
    middle = range(len(ordered) // 4, 3 * len(ordered) // 4)
    k = max(middle, key=lambda i: float(ordered[i + 1] - ordered[i]))
    theta = float(ordered[k] + ordered[k + 1]) / 2  # in the widest gap of the middle: no token sits near it
    by_token = Condition(vector="c", layer=1, threshold=theta)
    mean, spread = float(proj.mean()), float(proj.std())
    fires = Condition(vector="c", layer=1, threshold=mean - 0.5 * spread, scope="prompt")
    never = Condition(vector="c", layer=1, threshold=mean + 0.5 * spread, scope="prompt")
    cases = [
        [SteeringTerm(vector="v", strength=1.0, layers=[2, -1], op="add", site="residual", condition=by_token)],
        [SteeringTerm(vector="v", strength=3.0, layers=[1], op="project", site="mlp", condition=by_token)],
        [
            SteeringTerm(vector="v", strength=1.5, layers=[2], op="add", site="attn", condition=fires),
            SteeringTerm(vector="v", strength=0.5, layers=[1], op="add", site="residual"),
        ],
        [SteeringTerm(vector="v", strength=1.5, layers=[2], op="add", site="residual", condition=never)],
    ]
    results = await asyncio.gather(
        run(engine, PROMPT, None, vectors, GENERATED, full_logprobs=True),
        *(run(engine, PROMPT, terms, vectors, GENERATED, full_logprobs=True) for terms in cases),
    )
    baseline, steered = results[0], results[1:]
    _check(hf_llama, baseline, [], "unsteered neighbour")
    for i, (terms, result) in enumerate(zip(cases, steered, strict=True)):
        _check(hf_llama, result, _ref_terms(terms, vectors, layers), f"condition case {i}")
    assert baseline.logprobs is not None and all(r.logprobs is not None for r in steered)
    first = int((proj > theta).nonzero()[0])  # before the first token that fires, nothing changes
    assert torch.allclose(steered[0].logprobs[:first], baseline.logprobs[:first], atol=1e-5)  # type: ignore[index]
    assert (steered[0].logprobs - baseline.logprobs).abs().max().item() > 0.05  # type: ignore[operator]
    assert torch.allclose(steered[3].logprobs, baseline.logprobs, atol=1e-5), "a condition that never fires steered"  # type: ignore[arg-type]
