"""A term's `condition`: validation naming the field, defaults from the vector, the hash, the salt, the report."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from steering.conditions import Condition
from steering.errors import InvalidSteeringError, UnknownVectorError
from steering.spec import SteeringLimits, SteeringTerm, resolve_spec
from steering.vectors import ConditionDefaults
from tests.steering.test_spec import SHAPE, lookup_of, resolve, vec


def term(condition: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"vector": "r", "strength": 1.0, "layers": [3], "condition": condition, **fields}


def test_a_condition_resolves_reports_and_enters_the_hash() -> None:
    r, c = vec("r"), vec("c", layers=(0, 1))
    plain = resolve([{"vector": "r", "strength": 1.0, "layers": [3]}], r, c)
    gated = resolve([term({"vector": "c", "layer": 1, "threshold": 0.5})], r, c)
    prompt = resolve([term({"vector": "c", "layer": 1, "threshold": 0.5, "scope": "prompt"})], r, c)
    assert len({plain.config_hash, gated.config_hash, prompt.config_hash}) == 3
    assert gated.describe()["terms"][0]["condition"] == {
        "vector": "c", "version": 1, "layer": 1, "threshold": 0.5, "scope": "token",
    }  # fmt: skip
    assert set(gated.vector_hashes) == {r.sha256, c.sha256}, "the workers need the condition vector too"
    # token scope shares the prefix cache within its config; a prompt-scoped decision shares it with no one
    assert gated.cache_salt() == gated.cache_salt()
    assert prompt.cache_salt() != prompt.cache_salt()
    assert prompt.cache_salt().startswith(f"steer:{prompt.config_hash}:")


def test_threshold_and_scope_default_to_what_extraction_stored() -> None:
    r = vec("r")
    c = vec("c", layers=(0, 1), condition=ConditionDefaults(thresholds={1: -0.25}, scope="prompt"))
    resolved = resolve([term({"vector": "c", "layer": -3})], r, c).terms[0].condition
    assert resolved is not None and (resolved.layer, resolved.threshold, resolved.scope) == (1, -0.25, "prompt")
    with pytest.raises(InvalidSteeringError) as caught:
        resolve([term({"vector": "c", "layer": 0})], r, c)
    assert caught.value.param == "steering[0].condition.threshold"


@pytest.mark.parametrize(
    ("condition", "fields", "param"),
    [
        ({"vector": "c", "layer": 2, "threshold": 0.0}, {}, "steering[0].condition.layer"),  # c lacks layer 2
        ({"vector": "c", "layer": 9, "threshold": 0.0}, {}, "steering[0].condition.layer"),
        ({"vector": "c", "layer": 1, "threshold": 0.0}, {"layers": [0, 3]}, "steering[0].condition.layer"),  # later
        ({"vector": "c", "layer": 1, "threshold": 0.0}, {"layers": [1], "site": "attn"}, "steering[0].condition.layer"),
    ],
)
def test_invalid_conditions_name_the_field(condition: dict[str, Any], fields: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidSteeringError) as caught:
        resolve([term(condition, **fields)], vec("r", layers=(0, 1, 3)), vec("c", layers=(0, 1)))
    assert caught.value.param == param


def test_a_condition_at_the_terms_own_layer_is_allowed_outside_attn() -> None:
    spec = resolve([term({"vector": "c", "layer": 1, "threshold": 0.0}, layers=[1], site="mlp")], vec("r"), vec("c"))
    assert spec.terms[0].condition is not None


def test_unknown_condition_vector_is_404_and_bad_values_fail_at_parse() -> None:
    with pytest.raises(UnknownVectorError) as caught:
        resolve([term({"vector": "nope", "layer": 1, "threshold": 0.0})], vec("r"))
    assert caught.value.param == "steering[0].condition.vector"
    bad_values = (
        {"vector": "c", "layer": 1, "threshold": float("nan")},
        {"vector": "c", "layer": 1, "scope": "step"},
        {"vector": "c@0", "layer": 1},
    )
    for bad in bad_values:
        with pytest.raises(ValidationError):
            Condition.model_validate(bad)


def test_conditions_per_layer_are_bounded_and_refused_where_the_engine_cannot_gate() -> None:
    r, c = vec("r"), vec("c")
    cond = {"vector": "c", "layer": 1, "threshold": 0.0}
    sites = ("residual", "mlp", "attn")
    terms = [SteeringTerm.model_validate(term(cond, site=site)) for site in sites]
    with pytest.raises(InvalidSteeringError, match="conditions read layer 1"):
        resolve_spec(terms, lookup_of(r, c), SHAPE, SteeringLimits(max_terms_per_site=2))
    with pytest.raises(InvalidSteeringError, match="pipeline") as caught:
        resolve_spec(terms[:1], lookup_of(r, c), SHAPE, conditions_unavailable="the engine runs 2 pipeline stages")
    assert caught.value.param == "steering[0].condition"
