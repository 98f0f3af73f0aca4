"""The budget rule's formula: lead x s until start x B, linear to scale x s at B, held after; the backstop."""

from __future__ import annotations

import numpy as np

from steering.budget import BudgetRule
from steering.spec import ModelShape, SteeringTerm, resolve_spec
from steering.vectors import SteeringVector


def test_schedule_and_backstop_follow_the_documented_formula() -> None:
    rule = BudgetRule(lead=0.0, start=0.5, scale=2.0, backstop=1.5)
    assert rule.schedule(300, -0.5).points == [(0, 0.0), (150, 0.0), (300, -1.0)]
    assert BudgetRule().schedule(10, -0.5).points == [(0, -0.75), (10, -3.0)]  # defaults: 1.5 s, then 6 s at B
    assert rule.schedule(1, -0.5).points == [(0, 0.0), (1, -1.0)]  # the ramp never starts at B itself
    assert rule.backstop_tokens(301) == 452 and BudgetRule(backstop=0).backstop_tokens(10) is None


def test_terms_keep_the_presets_vector_version_operator_and_gate() -> None:
    vector = SteeringVector("reflection", {2: np.ones(4, dtype=np.float32)}, version=3)
    preset = resolve_spec(
        [SteeringTerm(vector="reflection", strength=-0.5, site="mlp", positions={"tokens": [5]})],
        lambda _i, _v: vector,
        ModelShape(num_layers=4, hidden_size=4, vocab_size=10),
    )
    (term,) = BudgetRule().terms(100, preset)
    assert (term.vector, term.layers, term.site, term.strength) == ("reflection@3", [2], "mlp", None)
    assert term.positions is not None and term.positions.tokens == [5]  # type: ignore[union-attr]
    assert term.schedule is not None and term.schedule.points == [(0, -0.75), (100, -3.0)]
