"""Steering spec: defaults, validation errors naming the field, canonical hashing (no torch, no engine)."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from steering.config import EngineSteeringConfig
from steering.errors import InvalidSteeringError, UnknownVectorError
from steering.spec import ModelShape, SteeringLimits, SteeringTerm, TokenPositions, resolve_spec
from steering.vectors import SteeringVector, VectorDefaults, parse_vector_ref

SHAPE = ModelShape(num_layers=4, hidden_size=8, vocab_size=100)


def vec(vector_id: str = "r", layers=(1, 3), seed: int = 0, **defaults) -> SteeringVector:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    return SteeringVector(
        vector_id,
        {layer: rng.standard_normal(8).astype(np.float32) for layer in layers},
        defaults=VectorDefaults(**defaults),
    )


def lookup_of(*vectors: SteeringVector):  # type: ignore[no-untyped-def]
    table = {v.id: v for v in vectors}

    def lookup(vector_id: str, version: int | None) -> SteeringVector:
        vector = table[vector_id]
        if version is not None and version != vector.version:
            raise KeyError(vector_id)
        return vector

    return lookup


def resolve(terms, *vectors, limits=None, encode=None):  # type: ignore[no-untyped-def]
    return resolve_spec(
        [SteeringTerm(**t) for t in terms], lookup_of(*vectors), SHAPE, limits or SteeringLimits(), encode
    )


def test_unset_fields_take_vector_defaults() -> None:
    spec = resolve([{"vector": "r"}], vec(strength=0.5, op="project", site="mlp", positions="generated"))
    (term,) = spec.terms
    assert (term.strength, term.op, term.site, term.positions, term.layers) == (
        0.5,
        "project",
        "mlp",
        "generated",
        (1, 3),
    )


def test_negative_layers_count_from_the_end_and_dedupe() -> None:
    spec = resolve([{"vector": "r", "layers": [-1, 3, 1]}], vec())
    assert spec.terms[0].layers == (1, 3)


@pytest.mark.parametrize(
    ("term", "param"),
    [
        ({"vector": "r", "layers": [4]}, "steering[0].layers"),
        ({"vector": "r", "layers": [-5]}, "steering[0].layers"),
        ({"vector": "r", "layers": [0]}, "steering[0].layers"),  # not covered by the vector
        ({"vector": "r", "layers": []}, "steering[0].layers"),
        ({"vector": "r", "strength": 1001.0}, "steering[0].strength"),
        ({"vector": "r", "positions": {"tokens": [100]}}, "steering[0].positions.tokens"),
    ],
)
def test_invalid_terms_name_the_field(term: dict, param: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(InvalidSteeringError) as err:
        resolve([term], vec())
    assert err.value.param == param and err.value.status_code == 400


def test_unknown_vector_and_version_are_404() -> None:
    with pytest.raises(UnknownVectorError) as err:
        resolve([{"vector": "nope"}], vec())
    assert err.value.status_code == 404 and err.value.param == "steering[0].vector"
    with pytest.raises(UnknownVectorError):
        resolve([{"vector": "r@2"}], vec())


@pytest.mark.parametrize("strength", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_strength_is_rejected_at_parse(strength: float) -> None:
    with pytest.raises(ValidationError):
        SteeringTerm(vector="r", strength=strength)


@pytest.mark.parametrize("ref", ["", "a b", "../x", "x@0", "x@-1", "x@", "@1", "a/b", "a:b"])
def test_bad_vector_references(ref: str) -> None:
    with pytest.raises(ValidationError):
        SteeringTerm(vector=ref)
    with pytest.raises(InvalidSteeringError):
        parse_vector_ref(ref)


def test_unknown_fields_and_ops_are_rejected() -> None:
    with pytest.raises(ValidationError):
        SteeringTerm(vector="r", strenght=1.0)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        SteeringTerm(vector="r", op="multiply")  # type: ignore[arg-type]


def test_limits_on_terms_and_channels() -> None:
    many = [{"vector": "r", "strength": 1.0}] * 17
    with pytest.raises(InvalidSteeringError, match="at most 16"):
        resolve(many, vec())
    crowded = [{"vector": "r", "layers": [1], "strength": float(i + 1)} for i in range(5)]
    with pytest.raises(InvalidSteeringError, match="share one layer and site"):
        resolve(crowded, vec())
    resolve(crowded[:4], vec())


def test_hidden_size_mismatch() -> None:
    wide = SteeringVector("w", {1: np.ones(16, dtype=np.float32)})
    with pytest.raises(InvalidSteeringError, match="hidden size 16"):
        resolve([{"vector": "w"}], wide)


def test_string_triggers_must_be_one_token() -> None:
    encode = {"\n\n": [7], "wait": [3, 4]}.__getitem__
    spec = resolve([{"vector": "r", "positions": {"tokens": ["\n\n", 9]}}], vec(), encode=encode)
    assert spec.terms[0].positions == "tokens" and spec.terms[0].tokens == (7, 9)
    with pytest.raises(InvalidSteeringError, match="exactly one token"):
        resolve([{"vector": "r", "positions": {"tokens": ["wait"]}}], vec(), encode=encode)


def test_hash_follows_content_not_names() -> None:
    a = resolve([{"vector": "r", "strength": 2.0}], vec("r", seed=1))
    b = resolve([{"vector": "other", "strength": 2.0}], vec("other", seed=1))
    c = resolve([{"vector": "r", "strength": 2.5}], vec("r", seed=1))
    d = resolve([{"vector": "r", "strength": 2.0}], vec("r", seed=2))
    assert a.config_hash == b.config_hash
    assert len({a.config_hash, c.config_hash, d.config_hash}) == 3
    assert a.engine_payload()["terms"][0]["sha256"] == vec("r", seed=1).sha256


def test_order_matters_and_zero_strength_is_identity() -> None:
    v, w = vec("v", seed=1), vec("w", seed=2)
    ab = resolve([{"vector": "v"}, {"vector": "w", "op": "project"}], v, w)
    ba = resolve([{"vector": "w", "op": "project"}, {"vector": "v"}], v, w)
    assert ab.config_hash != ba.config_hash
    assert resolve([{"vector": "v", "strength": 0.0}], v).is_noop
    assert not resolve([{"vector": "v", "strength": 0.0, "op": "clamp"}], v).is_noop


def test_token_positions_needs_tokens() -> None:
    with pytest.raises(ValidationError):
        TokenPositions(tokens=[])


def test_vectors_reject_bad_data() -> None:
    with pytest.raises(InvalidSteeringError):
        SteeringVector("x", {0: np.array([np.nan, 1.0], dtype=np.float32)})
    with pytest.raises(InvalidSteeringError):
        SteeringVector("x", {0: np.zeros(4, dtype=np.float32)})
    with pytest.raises(InvalidSteeringError):
        SteeringVector("x", {0: np.ones(4, dtype=np.float32), 1: np.ones(5, dtype=np.float32)})
    with pytest.raises(InvalidSteeringError):
        SteeringVector("x", {})


def test_a_site_the_engine_has_no_op_at_is_refused_naming_the_field() -> None:
    terms = [SteeringTerm(vector="r"), SteeringTerm(vector="r", site="attn")]
    spec = resolve_spec(terms[:1], lookup_of(vec()), SHAPE, SteeringLimits(), None, ("residual", "mlp"))
    assert spec.terms[0].site == "residual"
    with pytest.raises(InvalidSteeringError) as err:
        resolve_spec(terms, lookup_of(vec()), SHAPE, SteeringLimits(), None, ("residual", "mlp"))
    assert err.value.param == "steering[1].site" and "--steering-sites" in str(err.value)


def test_a_layer_the_engine_has_no_op_at_is_refused_naming_the_field() -> None:
    """`--steering-layers`: terms on the steerable layers resolve; one reaching past them is a 400 naming it."""
    steerable = EngineSteeringConfig(layers=(1, -1)).steerable_layers(SHAPE.num_layers)
    assert steerable == (1, SHAPE.num_layers - 1)
    lookup = lookup_of(vec(layers=(0, 1, 3)))
    ok = resolve_spec([SteeringTerm(vector="r", layers=[1])], lookup, SHAPE, layers=steerable)
    assert ok.terms[0].layers == (1,)
    terms = [SteeringTerm(vector="r", layers=[-1]), SteeringTerm(vector="r", layers=[0, 1])]
    with pytest.raises(InvalidSteeringError) as err:
        resolve_spec(terms, lookup, SHAPE, layers=steerable)
    assert err.value.param == "steering[1].layers" and "--steering-layers" in str(err.value)
    with pytest.raises(ValueError):
        EngineSteeringConfig(layers=(SHAPE.num_layers,)).steerable_layers(SHAPE.num_layers)
    assert EngineSteeringConfig.from_dict(EngineSteeringConfig(layers=(1, -1)).to_dict()).layers == (1, -1)


SCHEDULE = {"by": "generated_tokens", "points": [[0, 0.0], [300, 0.0], [600, -1.0]]}


@pytest.mark.parametrize(
    "term",
    [
        {"vector": "r", "strength": 1.0, "schedule": SCHEDULE},  # strength or schedule
        {"vector": "r", "op": "clamp", "schedule": SCHEDULE},  # a schedule scales add and project only
        {"vector": "r", "schedule": {"points": [[i, 0.1] for i in range(9)]}},  # more points than the tables
        {"vector": "r", "schedule": {"points": [[0, 0.0], [10, 1001.0]]}},  # a strength over the limit
    ],
)
def test_invalid_schedules_name_the_field(term: dict) -> None:  # type: ignore[type-arg]
    with pytest.raises(InvalidSteeringError) as err:
        resolve([term], vec())
    assert err.value.param == "steering[0].schedule"


@pytest.mark.parametrize("points", [[[5, 0.0], [5, 1.0]], [[-1, 0.0]], [[0, float("nan")]], []])
def test_malformed_schedules_are_rejected_at_parse(points: list) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValidationError):
        SteeringTerm(vector="r", schedule={"points": points})


def test_a_schedule_is_part_of_the_config_and_reported() -> None:
    scheduled = resolve([{"vector": "r", "schedule": SCHEDULE}], vec())
    other = resolve([{"vector": "r", "schedule": {"points": [[0, 0.0], [300, 0.0], [601, -1.0]]}}], vec())
    fixed = resolve([{"vector": "r", "strength": 1.0}], vec())
    assert len({scheduled.config_hash, other.config_hash, fixed.config_hash}) == 3
    described = scheduled.describe()["terms"][0]
    assert described["strength"] is None and described["schedule"]["points"] == [[0, 0.0], [300, 0.0], [600, -1.0]]
    assert scheduled.engine_payload()["terms"][0]["strength"] == "1.0"  # the unit: the gate carries s(t)
    assert resolve([{"vector": "r", "schedule": {"points": [[0, 0.0], [9, 0.0]]}}], vec()).is_noop
