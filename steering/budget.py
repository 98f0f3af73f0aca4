"""`reasoning_budget: B` on a chat request: think, but land within B tokens.

The served reflection vector's down-steering (the terms of the budget preset, `reflect-down` by default: its
vector, op, site, positions and layers) is applied with a strength that grows with the request's generated-token
count t instead of a fixed one (s: the preset term's strength):

    strength(t) = lead * s                       for t <= start * B
                  linear from lead * s to scale * s   up to t = B
                = scale * s                      after B

and vLLM's own thinking budget (`thinking_token_budget`) = ceil(backstop * B) stays as the hard stop unless the
request sets one itself (backstop 0: none). lead, start, scale, backstop and the preset are server settings
(`STEERSERVE_BUDGET_*`). The defaults (lead 1.5, start 0, scale 6: the demo's -0.5 preset as -0.75 from the
start, rising to -3.0 at B) were picked on the demo's extraction split by a rule fixed before the run (land within
B by itself on >= 96 % at both budgets, then the best accuracy: benchmarks/results/budget_tuning_demo.md); a ramp
from zero left too much of the thinking unsteered to land within B.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from steering.conditions import Condition, ResolvedCondition
from steering.spec import ResolvedSpec, Schedule, SteeringTerm, TokenPositions


@dataclass(frozen=True)
class BudgetRule:
    preset: str = "reflect-down"
    lead: float = 1.5
    start: float = 0.0
    scale: float = 6.0
    backstop: float = 1.5

    def schedule(self, budget: int, strength: float) -> Schedule:
        ramp_from = min(budget - 1, round(self.start * budget))
        points = [(ramp_from, self.lead * strength), (budget, self.scale * strength)]
        return Schedule(points=[(0, self.lead * strength), *points] if ramp_from > 0 else points)

    def terms(self, budget: int, preset: ResolvedSpec) -> list[SteeringTerm]:
        """The preset's resolved terms (pinned to their vector versions), each on the budget's schedule."""
        return [
            SteeringTerm(
                vector=f"{term.vector_id}@{term.version}",
                layers=list(term.layers),
                op=term.op,  # type: ignore[arg-type]
                site=term.site,  # type: ignore[arg-type]
                positions=TokenPositions(tokens=list(term.tokens)) if term.positions == "tokens" else term.positions,  # type: ignore[arg-type]
                schedule=self.schedule(budget, term.strength),
                condition=_pinned(term.condition),
            )
            for term in preset.terms
        ]

    def backstop_tokens(self, budget: int) -> int | None:
        return math.ceil(self.backstop * budget) if self.backstop > 0 else None


def _pinned(condition: ResolvedCondition | None) -> Condition | None:
    if condition is None:
        return None
    return Condition(
        vector=f"{condition.vector_id}@{condition.version}",
        layer=condition.layer,
        threshold=condition.threshold,
        scope=condition.scope,  # type: ignore[arg-type]
    )
