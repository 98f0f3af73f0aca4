"""The design screen's rules and designs (the GPU runs themselves cannot run here)."""

from __future__ import annotations

from research.demo_design_screen import ROUNDS, best_arms, probe_cell
from research.toy.arith import TraceStyle


def arm(accuracy: float, reflection: float, tokens: float) -> dict[str, float]:
    return {"accuracy": accuracy, "reflection_rate": reflection, "mean_tokens": tokens}


def test_down_and_up_rules_are_the_issues() -> None:
    base = arm(0.80, 0.50, 100)
    sweep = {
        "-1.0": arm(0.771, 0.25, 80),  # down: half the reflection, -20 % tokens, -2.9 points
        "-0.5": arm(0.76, 0.20, 70),  # -4 points: too costly
        "0.5": arm(0.80, 0.75, 130),  # up: 1.5x reflection, accuracy kept
        "1.0": arm(0.79, 0.90, 150),  # accuracy lost
    }
    assert best_arms(base, sweep) == {"down": "-1.0", "up": "0.5"}


def test_every_design_is_a_valid_style() -> None:
    for plan in ROUNDS.values():
        for design in plan["designs"].values():
            TraceStyle(**design["style"])


def test_the_probe_column_shows_slip_against_right_hard_steps_where_measured() -> None:
    assert probe_cell({"slip": 0.4379, "drill": 0.39, "right_hard": 0.4259, "right_easy": 0.39}) == "0.44 / 0.43"
    assert probe_cell(None) == "–" and probe_cell({"slip": None, "right_hard": 0.2}) == "–"
    # round 3 screens the cheap recipe (eager attention, 2,000 steps) over three seeds of each design
    designs = ROUNDS[3]["designs"]
    assert ROUNDS[3]["steps"] == 2000 and all(d["attention"] == "eager" for d in designs.values())
    assert sorted(d["seed"] for d in designs.values()) == [0, 0, 1, 1, 2, 2]


def test_round_four_screens_two_cheap_designs_over_three_seeds() -> None:
    designs = ROUNDS[4]["designs"]
    assert all(d["batch_size"] == 48 and d["attention"] == "eager" for d in designs.values())
    assert ROUNDS[4]["steps"] * 48 <= 0.55 * 2800 * 64  # about half the bundled recipe's traces
    weighted = sorted(d["seed"] for d in designs.values() if d["decision_weight"] == 5.0 and d["style"] == {})
    rechecks = [d["style"] for d in designs.values() if d["decision_weight"] == 1.0]
    assert weighted == [0, 1, 2] and len(rechecks) == 3
    assert all(s["p_recheck_hard"] > s["p_recheck"] for s in rechecks)


def test_round_five_screens_the_half_batch_recipes_over_three_seeds() -> None:
    designs = ROUNDS[5]["designs"].values()
    assert all(d["batch_size"] == 32 and d["style"] == {} for d in designs)
    recipes = sorted((d["attention"], d["steps"], d["seed"]) for d in designs)
    assert recipes == [("eager", 3600, s) for s in (0, 1, 2)] + [("sdpa", 2800, s) for s in (0, 1, 2)]
    assert all(d["steps"] * 32 <= 0.65 * 2800 * 64 for d in designs)  # at most 0.65x the bundled recipe's traces
