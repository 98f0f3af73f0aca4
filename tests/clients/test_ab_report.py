"""Grading, dataset layouts and the A/B statistics on fabricated result rows with known effects."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from clients.ab.datasets import load_items
from clients.ab.grading import extract_answer, is_correct
from clients.ab.report import summarize, write_report
from clients.ab.runner import RunConfig, build_arms, random_direction

FIXTURES = Path(__file__).parent / "fixtures"


def test_answer_extraction() -> None:
    assert extract_answer("so \\boxed{\\frac{1}{2}} done") == "\\frac{1}{2}"
    assert is_correct("<think>x</think>\nAnswer: 1,234.", "1234")
    assert is_correct("The answer is: $\\dfrac{3}{4}$", "\\frac{3}{4}")
    assert not is_correct("no answer here", "3") and is_correct("blah #### 72", "72")


def test_published_layouts_load() -> None:
    math = load_items(str(FIXTURES / "math500_test.jsonl"))
    gsm = load_items(str(FIXTURES / "gsm8k_test.jsonl"))
    assert math[0].answer == "\\left( 3, \\frac{\\pi}{2} \\right)" and math[0].id.startswith("test/")
    assert gsm[0].answer == "18" and "Janet" in gsm[0].prompt
    demo = load_items("demo", limit=5)
    assert len(demo) == 5 and all(str(eval(i.prompt)) == i.answer for i in demo)  # noqa: S307 - our own arithmetic


def test_arms_and_statistics(tmp_path: Path) -> None:
    config = RunConfig("http://x", "m", "reflection", (-1.0, 1.0), (1.0,))
    arms = build_arms(config, {"plain": ("reflection-random0", 0.05)})
    assert [a.name for a in arms] == ["reflection@-1", "reflection@0", "reflection@1", "random@1"]
    assert arms[-1].cosine == 0.05 and arms[0].cosine is None
    rng = np.random.default_rng(1)
    rows = []
    for item in range(1000):
        base_ok = rng.random() < 0.8
        for arm in arms:
            better = arm.name == "reflection@1" and not base_ok and rng.random() < 0.5
            rows.append(
                {
                    "item": f"i{item}",
                    "sample": 0,
                    "arm": arm.name,
                    "vector": arm.vector,
                    "strength": arm.strength,
                    "correct": base_ok or better,
                    "completion_tokens": {"reflection@-1": 40, "reflection@1": 80}.get(arm.name, 50),
                    "markers": 1 if (arm.name == "reflection@1" or rng.random() < 0.3) else 0,
                    "reflected": False,
                    "finish_reason": "stop",
                    "latency_s": 0.1,
                }
            )
            rows[-1]["reflected"] = rows[-1]["markers"] > 0
    summary = summarize(arms, rows)
    by = {a["name"]: a for a in summary["arms"]}
    assert by["reflection@1"]["delta_accuracy"] > 0.05 and by["reflection@1"]["mcnemar_p"] < 1e-6
    assert by["reflection@-1"]["delta_tokens_pct"] == -20.0 and by["reflection@1"]["reflection_rate"] == 1.0
    lo, hi = by["random@1"]["reflection_delta_ci"]
    assert lo < 0 < hi and by["random@1"]["mcnemar_p"] == 1.0
    assert by["random@1"]["strength_along_vector"] == 0.05 and "cosine_with_vector" not in by["reflection@1"]
    written = write_report(tmp_path, arms, rows, {"seed": 0}, "steerserve ab run")
    assert (tmp_path / "accuracy_vs_tokens.png").stat().st_size > 1000
    report = (tmp_path / "report.md").read_text()
    assert (tmp_path / "reflection_vs_strength.png").exists() and "| reflection@1 |" in report
    assert "- random@1: cosine +0.0500, i.e. +0.0500 of the vector" in report
    assert json.loads((tmp_path / "summary.json").read_text())["arms"] == written["arms"]
    assert sum(1 for _ in (tmp_path / "results.jsonl").open()) == len(rows)


def test_random_controls_have_the_vector_norms_and_the_orthogonal_one_no_overlap() -> None:
    rng = np.random.default_rng(7)
    vector: dict[str, np.ndarray] = {
        "layer.3": rng.standard_normal(64).astype(np.float32) * 5,
        "layer.5": rng.standard_normal(64) * 2,
    }
    plain, cos_plain = random_direction(vector, seed=0)
    orth, cos_orth = random_direction(vector, seed=0, orthogonal=True)
    for name, values in vector.items():
        assert np.isclose(np.linalg.norm(plain[name]), np.linalg.norm(values))
        assert np.isclose(np.linalg.norm(orth[name]), np.linalg.norm(values))
        assert abs(float(orth[name] @ values)) < 1e-9 * float(np.linalg.norm(values)) ** 2
    assert abs(cos_orth) < 1e-9 and 0.01 < abs(cos_plain) < 0.5  # a chance overlap of order 1/sqrt(128)
    flat = np.concatenate([vector["layer.3"], vector["layer.5"]])
    flat_plain = np.concatenate([plain["layer.3"], plain["layer.5"]])
    assert np.isclose(cos_plain, flat_plain @ flat / np.linalg.norm(flat_plain) / np.linalg.norm(flat))
    again, _ = random_direction(vector, seed=0)
    assert all(np.array_equal(again[n], plain[n]) for n in vector)  # seeded
    arms = build_arms(
        RunConfig("http://x", "m", "reflection", (1.0,), (-1.0, 1.0), random_controls=("plain", "orthogonal")),
        {"plain": ("r0", cos_plain), "orthogonal": ("r0-orth", cos_orth)},
    )
    assert [(a.name, a.vector) for a in arms[2:]] == [
        ("random@-1", "random"),
        ("random@1", "random"),
        ("random-orth@-1", "random-orthogonal"),
        ("random-orth@1", "random-orthogonal"),
    ]
