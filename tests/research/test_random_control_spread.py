"""The random-control statistics (paired effects, the overlap fit) and the demo A/B's control target (the GPU
run itself cannot run here)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.reflection_demo import check_targets
from research.random_control_spread import arm_effects, fit


def test_paired_effects_and_fit() -> None:
    rng = np.random.default_rng(0)
    base = rng.random(2000) < 0.5
    more = base | (rng.random(2000) < 0.2)  # only ever adds reflection: about +10 points
    effects = arm_effects({"baseline": base, "more": more, "same": base.copy()}, "baseline")
    assert effects["same"]["delta"] == 0 and effects["same"]["delta_ci"] == [0.0, 0.0]
    lo, hi = effects["more"]["delta_ci"]
    assert 0.07 < lo < effects["more"]["delta"] < hi < 0.13
    line = fit([-0.02, 0.0, 0.01, 0.03], [-0.036, 0.0, 0.018, 0.054])
    assert line["slope"] == pytest.approx(1.8) and line["r"] == pytest.approx(1.0)


def arm(name: str, vector: str, strength: float, reflection: float, ci: list[float], cos: float | None = None) -> dict:
    a = {"name": name, "vector": vector, "strength": strength, "reflection_rate": reflection}
    a |= {"accuracy": 0.8, "mean_tokens": 100.0, "reflection_delta_ci": ci, "delta_accuracy_ci": [0.0, 0.0]}
    if cos is not None:
        a |= {"cosine_with_vector": cos, "strength_along_vector": strength * cos}
    return a


def test_every_random_control_plain_or_orthogonal_is_judged() -> None:
    refl = [arm(f"reflection@{s:g}", "reflection", s, 0.5 + s / 4, [0.0, 0.0]) for s in (-1, -0.5, 0, 0.5, 1)]
    plain = arm("random@1", "random", 1.0, 0.52, [0.0, 0.04], 0.05)  # +2 points: inside the band
    orth = arm("random-orth@1", "random-orthogonal", 1.0, 0.56, [0.03, 0.09], 0.0)  # +6 points, CI excludes 0
    target = check_targets([*refl, plain, orth])["random_controls_flat"]
    assert target["arms"] == ["random@1", "random-orth@1"] and target["outside"] == ["random-orth@1"]
    assert target["met"] is False
    target = check_targets([*refl, plain])["random_controls_flat"]
    assert target["met"] is True and target["outside"] == []
