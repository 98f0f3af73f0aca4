"""The toy's synthetic data has the designed properties, and the committed training script runs (a few steps)."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from steering.extract.keywords import count_markers
from steering.models.arith import TraceStyle, problems, trace


def test_traces_are_right_unless_an_error_slips_through() -> None:
    rng = random.Random(0)
    style = TraceStyle()
    items = problems(0, 3000, "train", style)
    reflective = right = 0
    for problem in items:
        text, answer = trace(problem, rng, style)
        assert text.startswith("<think>\n") and f"</think>\nAnswer: {answer}" in text
        steps = re.findall(r"^(\d+)([+-])(\d+)=(\d+)$", text, flags=re.M)
        assert len(steps) == len(problem.steps)
        right += answer == problem.answer
        reflective += count_markers(text) > 0
    # most reflection re-checks right steps; errors are rare and usually caught
    assert 0.3 < reflective / len(items) < 0.65
    assert 0.93 < right / len(items) < 1.0
    assert {p.split for p in problems(1, 50, "eval")} == {"eval"}
    assert not {p.text for p in problems(1, 200, "eval")} & {p.text for p in items}


def test_training_script_runs_a_few_steps(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from steering.models.demo_train import train

    summary = train(tmp_path, steps=3, batch_size=8, train_traces=300, log_every=1)
    lines = [json.loads(line) for line in (tmp_path / "training_log.jsonl").read_text().splitlines()]
    assert lines[0]["event"] == "start" and [r["step"] for r in lines[1:-1]] == [1, 2, 3]
    assert summary["held_out_loss"] > 0
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path))
    for piece in ("\n\n", "Wait", "<think>", "</think>"):
        assert len(tokenizer.encode(piece, add_special_tokens=False)) == 1, piece
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path))
    assert sum(p.numel() for p in model.parameters()) < 5_000_000
