"""The toy's synthetic data has the designed properties, and the committed training script runs (a few steps)."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from research.toy.arith import TraceStyle, problems, trace
from steering.reflection import count_markers


def test_traces_are_right_unless_an_error_slips_through() -> None:
    rng = random.Random(0)
    style = TraceStyle()
    items = problems(0, 3000, "train", style)
    reflective = right = 0
    for problem in items:
        t = trace(problem, rng, style)
        assert t.text.startswith("<think>\n") and f"</think>\nAnswer: {t.answer}" in t.text
        steps = re.findall(r"^(-?\d+)([+-])(\d+)=(-?\d+)$", t.text, flags=re.M)
        assert [(op, int(b)) for _, op, b, _ in steps] == list(problem.steps)
        right += t.answer == problem.answer
        reflective += count_markers(t.text) > 0
    # most traces reflect; the slips are nearly always caught, so nearly every trace ends right
    assert 0.75 < reflective / len(items) < 0.95
    assert 0.98 < right / len(items) < 1.0
    assert {p.split for p in problems(1, 50, "eval")} == {"eval"}
    assert not {p.text for p in problems(1, 200, "eval")} & {p.text for p in items}


def test_slips_are_forgotten_carries_and_most_reflection_rechecks_right_steps() -> None:
    from research.toy.arith import forgot_carry, is_hard

    rng = random.Random(5)
    style = TraceStyle()
    slips = hard = easy = drills = caught = rechecks_of_right = 0
    for problem in problems(0, 3000, "train", style):
        t = trace(problem, rng, style)
        untrained = {t.text[a:b] for a, b in t.untrained}
        lines = t.text.split("\n\n")
        for i, line in enumerate(lines):
            step = re.fullmatch(r"(?:<think>\n)?(\d+)([+-])(\d+)=(\d+)", line)
            if step is None:
                continue
            a, op, b, written = int(step[1]), step[2], int(step[3]), int(step[4])
            right = a + b if op == "+" else a - b
            hard += is_hard(a, op, b)
            easy += not is_hard(a, op, b)
            reflects = lines[i + 1].startswith("Wait")
            if written != right and is_hard(a, op, b):
                slips += 1
                assert written == forgot_carry(right, op)  # 37+48=75, 85-19=76: a trained slip
                caught += reflects
            elif written != right:  # a correction drill: its digits untrained, always fixed
                drills += 1
                assert str(written) in untrained and lines[i + 1].endswith(f"So it is {right}, not {written}.")
            else:
                rechecks_of_right += reflects
    assert 0.2 < slips / hard < 0.3 and caught / slips > 0.97
    assert 0.2 < drills / easy < 0.3
    assert rechecks_of_right > caught  # more re-checks confirm a right step than catch a slip


def test_step_lines_can_point_to_the_next_operation() -> None:
    rng = random.Random(3)
    style = TraceStyle(p_drill=0.05, pointers=True)
    for problem in problems(0, 300, "train", style):
        text = trace(problem, rng, style).text
        steps = re.findall(r"^(-?\d+)([+-])(\d+)=(-?\d+), (?:next ([+-])(\d+)|done)$", text, flags=re.M)
        assert [(op, int(b)) for _, op, b, *_ in steps] == list(problem.steps)
        # every step line names the operation after it, and the last one says it is done
        assert [(op, int(b)) for *_, op, b in steps[:-1]] == list(problem.steps[1:]) and steps[-1][4] == ""


def test_redundant_reflection_is_long_and_drills_are_untrained() -> None:
    rng = random.Random(1)
    style = TraceStyle(p_error=0.0, p_drill=0.3, p_recheck=0.3)
    drills = 0
    for problem in problems(0, 300, "train", style):
        t = trace(problem, rng, style)
        assert t.answer == problem.answer  # drills are always fixed
        for start, end in t.untrained:
            drills += 1
            wrong = t.text[start:end]
            # the untrained span is exactly the wrong result of a step, and the next line corrects it
            line_end = t.text.index("\n\n", start)
            assert end == line_end and wrong.isdigit()
            assert t.text[line_end:].startswith("\n\nWait, let me re-check: ")
            assert f", not {wrong}." in t.text[line_end : t.text.index("\n\n", line_end + 2)]
    assert drills > 100
    long = trace(
        problems(0, 1, "train")[0],
        random.Random(0),
        TraceStyle(p_error=0, p_drill=0, p_recheck=1, p_again=1, p_review=1),
    )
    assert long.text.count("Wait, let me check again") == len(problems(0, 1, "train")[0].steps)
    assert "Wait, let me go over all the steps again" in long.text and not long.untrained


def test_encoding_masks_exactly_the_untrained_digits() -> None:
    from research.toy.train import build_tokenizer, encode, user_prompt

    rng = random.Random(2)
    pairs = [(p.text, trace(p, rng, TraceStyle(p_drill=0.5))) for p in problems(0, 200, "train")]
    tokenizer = build_tokenizer([user_prompt(p) + t.text for p, t in pairs], 320)
    for (prompt, t), (ids, trained) in zip(pairs, encode(tokenizer, pairs, chunk=64), strict=True):
        prompt_len = len(tokenizer.encode(user_prompt(prompt), add_special_tokens=False))
        assert not any(trained[:prompt_len])
        untrained = "".join(
            tokenizer.decode([i]) for i, k in zip(ids[prompt_len:], trained[prompt_len:], strict=True) if not k
        )
        assert untrained == "".join(t.text[a:b] for a, b in t.untrained)


def test_training_script_runs_a_few_steps(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from research.toy.train import DEMO_TEMPERATURE, train

    summary = train(tmp_path, steps=3, batch_size=8, train_traces=300, log_every=1)
    lines = [json.loads(line) for line in (tmp_path / "training_log.jsonl").read_text().splitlines()]
    assert lines[0]["event"] == "start" and [r["step"] for r in lines[1:-1]] == [1, 2, 3]
    assert summary["held_out_loss"] > 0
    # the last step's record carries the held-out loss and the slip-noticing probe (research.toy.probe)
    assert set(lines[-2]["p_wait"]) == {"slip", "drill", "right_hard", "right_easy"} and "held_out_loss" in lines[-2]
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path))
    for piece in ("\n\n", "Wait", "<think>", "</think>"):
        assert len(tokenizer.encode(piece, add_special_tokens=False)) == 1, piece
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path))
    assert sum(p.numel() for p in model.parameters()) < 5_000_000
    generation = json.loads((tmp_path / "generation_config.json").read_text())
    assert generation["temperature"] == DEMO_TEMPERATURE and generation["do_sample"] is True


def test_the_scripts_defaults_are_the_bundled_toys_recipe() -> None:
    """`python -m research.toy.train --out DIR` with no other flag retrains the shipped weights' recipe."""
    import inspect

    from research.toy.train import main, train

    bundled = Path(__file__).resolve().parents[3] / "steering" / "models" / "demo"
    start = json.loads((bundled / "training_log.jsonl").read_text().splitlines()[0])
    recipe = ("seed", "steps", "batch_size", "train_traces", "attention", "decision_weight")
    defaults = {name: p.default for name, p in inspect.signature(train).parameters.items()}
    cli = {name: p.default for name, p in inspect.signature(main).parameters.items()}
    assert {k: start[k] for k in recipe} == {k: defaults[k] for k in recipe} == {k: cli[k] for k in recipe}
    assert start["style"] == TraceStyle().__dict__
    assert start["device"] == "cpu" and start["precision"] == "bf16 autocast"


def test_eager_attention_trains_the_same_model_with_other_rounding(tmp_path: Path) -> None:
    import pytest

    from research.toy.train import train

    first = {}
    for attention in ("sdpa", "eager"):
        train(tmp_path / attention, steps=1, batch_size=8, train_traces=300, log_every=1, attention=attention)
        lines = [json.loads(x) for x in (tmp_path / attention / "training_log.jsonl").read_text().splitlines()]
        assert lines[0]["attention"] == attention
        first[attention] = lines[1]["loss"]
    # Same initialisation and batch: the first loss agrees to bf16 rounding, not bit for bit.
    assert first["eager"] == pytest.approx(first["sdpa"], rel=1e-2)
    with pytest.raises(ValueError, match="attention"):
        train(tmp_path / "bad", steps=1, batch_size=8, train_traces=300, attention="flash")


def test_hard_drills_show_forgotten_carries_untrained_and_keep_the_learned_slip_rate() -> None:
    from research.toy.arith import forgot_carry, is_hard

    rng = random.Random(4)
    style = TraceStyle(p_error=0.1875, p_drill_hard=0.25)
    slips = hard_drills = hard_right = 0
    for problem in problems(0, 3000, "train", style):
        t = trace(problem, rng, style)
        untrained = {(a, b) for a, b in t.untrained}
        for step in re.finditer(r"^(\d+)([+-])(\d+)=(\d+)$", t.text, flags=re.M):
            a, op, b, written = int(step[1]), step[2], int(step[3]), int(step[4])
            if not is_hard(a, op, b):
                continue
            right = a + b if op == "+" else a - b
            shown_untrained = step.span(4) in untrained
            if written == right:
                hard_right += 1
                continue
            assert written == forgot_carry(right, op)  # slips and hard drills alike forget the carry
            hard_drills += shown_untrained
            slips += not shown_untrained
            if shown_untrained:  # a drill is always caught
                assert t.text[step.end() :].startswith(f"\n\nWait, let me re-check: {a}{op}{b} = ")
    assert 0.22 < hard_drills / (slips + hard_drills + hard_right) < 0.28
    # what the model is trained to write on a hard step: a slip 25 % of the time, as with the default data
    assert 0.22 < slips / (slips + hard_right) < 0.28
    # the knob is off by default and only applies to carry slips
    plain = TraceStyle(carry_slips=False, p_error=0.03, p_drill_hard=0.5)
    assert all(not trace(p, random.Random(0), plain).untrained for p in problems(0, 200, "train", plain))


def test_decision_loss_weights_only_the_token_after_each_delimiter() -> None:
    import pytest
    import torch

    from research.toy.train import decision_loss

    torch.manual_seed(0)
    delimiter = 7
    inputs = torch.tensor([[1, 2, 7, 3, 4, 7, 5], [1, 7, 6, 2, 0, 0, 0]])
    labels = inputs.clone()
    labels[0, :2] = -100  # an untrained prompt
    labels[1, 4:] = -100  # padding
    logits = torch.randn(2, 7, 9)
    per_token = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], reduction="none")
    trained = labels[:, 1:] != -100
    after_delimiter = inputs[:, :-1] == delimiter  # targets 3, 5 (row 0) and 6 (row 1)
    assert int((after_delimiter & trained).sum()) == 3
    plain = per_token[trained].mean()
    weights = torch.where(after_delimiter, 4.0, 1.0) * trained
    loss, logged = decision_loss(logits, inputs, labels, delimiter, 4.0)
    assert float(loss) == pytest.approx(float((per_token * weights).sum() / weights.sum()), rel=1e-6)
    assert float(logged) == pytest.approx(float(plain), rel=1e-6)
    # weight 1 is the model's own loss (Hugging Face's shifted, masked mean)
    assert float(decision_loss(logits, inputs, labels, delimiter, 1.0)[0]) == pytest.approx(float(plain), rel=1e-6)


def test_training_with_a_decision_weight_logs_it_and_rejects_nonsense(tmp_path: Path) -> None:
    import pytest

    from research.toy.train import train

    train(tmp_path, steps=2, batch_size=8, train_traces=300, log_every=1, decision_weight=5.0)
    lines = [json.loads(x) for x in (tmp_path / "training_log.jsonl").read_text().splitlines()]
    assert lines[0]["decision_weight"] == 5.0 and lines[1]["loss"] > 0
    with pytest.raises(ValueError, match="decision_weight"):
        train(tmp_path / "bad", steps=1, batch_size=8, train_traces=300, decision_weight=0)


def test_held_out_loss_is_the_mean_of_padded_batch_losses_of_128() -> None:
    import torch
    import transformers

    from research.toy.train import batch_tensors, held_out_loss

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2
    )
    model = transformers.LlamaForCausalLM(config).eval()  # type: ignore[no-untyped-call]
    rng = random.Random(0)
    examples = []
    for _ in range(200):  # a group of 128 and one of 72, lengths 3..60, some tokens untrained
        length = rng.randint(3, 60)
        examples.append(([rng.randrange(1, 40) for _ in range(length)], [rng.random() < 0.8 for _ in range(length)]))
    with torch.no_grad():
        expected = [
            float(model(input_ids=inputs, labels=labels).loss)
            for inputs, labels in (batch_tensors(examples[s : s + 128], 0) for s in (0, 128))
        ]
    assert abs(held_out_loss(model, examples, 0, bf16=False) - sum(expected) / 2) < 1e-5
