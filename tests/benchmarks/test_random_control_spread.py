"""The random-control statistics (paired effects, the overlap fit), the demo A/B's control target, and the
committed results (the GPU run itself cannot run here)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.random_control_spread import arm_effects, fit, markdown
from benchmarks.reflection_demo import check_targets

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


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


def test_committed_results_are_consistent() -> None:
    spread = json.loads((RESULTS / "random_control_spread.json").read_text())
    arms = spread["arms"]
    plain = [a for k, a in arms.items() if k.startswith("random") and not k.startswith("random-orth")]
    orth = [a for k, a in arms.items() if k.startswith("random-orth")]
    assert len(plain) == len(orth) == 16 and all(abs(a["cosine"]) < 1e-6 for a in orth)
    assert spread["summary"]["plain_fit"] == fit([a["along"] for a in plain], [a["delta"] for a in plain])
    assert (RESULTS / "random_control_spread.md").read_text() == markdown(spread)
    demo = json.loads((RESULTS / "reflection_demo.json").read_text())
    assert demo["targets"] == check_targets(demo["arms"])
    controls = {a["name"]: a for a in demo["arms"] if "cosine_with_vector" in a}
    assert set(controls) == {"random@-0.5", "random@0.5", "random-orth@-0.5", "random-orth@0.5"}
    assert controls["random-orth@0.5"]["cosine_with_vector"] == 0.0
