"""The teacher-forced slip-noticing probe reads exactly the step-ending delimiters, by kind of step."""

from __future__ import annotations

import random
from typing import Any

import pytest

from research.toy.arith import TraceStyle, problems, trace
from research.toy.probe import held_out_pairs, reflection_propensity, step_ends
from tests.research.toy.stand_in import StandInModel


def test_step_ends_classifies_every_step_line_and_skips_rechecks() -> None:
    text = (
        "<think>\n37+48=75\n\nWait, let me re-check: 37+48 = 37+40+8 = 77+8 = 85. So it is 85, not 75.\n\n"
        "85-19=66\n\nWait, let me re-check: 85-19 = 66. Yes, it is 66.\n\n"
        "Wait, let me check again: 66+19 = 85, so 85-19=66 is right.\n\n66+3=70\n\n70+2=72\n\n</think>\nAnswer: 72"
    )
    ends = step_ends(text)
    assert [kind for _, kind in ends] == ["slip", "right_hard", "drill", "right_easy"]
    assert all(text[offset : offset + 2] == "\n\n" for offset, _ in ends)
    assert text[: ends[0][0]].endswith("37+48=75")


class DelimiterModel(StandInModel):
    """A stand-in model that puts all probability on "Wait" exactly where the input token is "\\n\\n"."""

    def __init__(self, tokenizer: Any) -> None:
        super().__init__(len(tokenizer))
        self.delimiter = tokenizer("\n\n", add_special_tokens=False)["input_ids"][0]
        self.wait = tokenizer("Wait", add_special_tokens=False)["input_ids"][0]

    def logits(self, input_ids: Any) -> Any:
        import torch

        logits = torch.zeros(*input_ids.shape, self.vocab)
        logits[..., self.wait] = torch.where(input_ids == self.delimiter, 100.0, -100.0)
        return logits


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from research.toy.train import build_tokenizer, user_prompt

    rng = random.Random(0)
    corpus = [user_prompt(p.text) + trace(p, rng).text for p in problems(0, 300, "train")]
    return build_tokenizer(corpus, 320)


def test_propensity_reads_the_delimiter_after_each_step_line(tokenizer: Any) -> None:
    pairs = held_out_pairs(0, 60, TraceStyle(p_drill_hard=0.2))
    model = DelimiterModel(tokenizer)
    result = reflection_propensity(model, tokenizer, pairs)
    assert model.training  # restored
    # every position read is a "\n\n" token: the stand-in gives P(Wait) = 1 there and ~0 anywhere else
    assert result["p_wait"] == {"slip": 1.0, "drill": 1.0, "right_hard": 1.0, "right_easy": 1.0}
    expected: dict[str, int] = {}
    for _, t in pairs:
        for _, kind in step_ends(t.text):
            expected[kind] = expected.get(kind, 0) + 1
    assert result["steps"] == expected and expected["slip"] > 0 and expected["drill"] > 0


def test_propensity_is_none_for_a_kind_with_no_steps(tokenizer: Any) -> None:
    style = TraceStyle(p_error=0.0, p_drill_easy=0.0)
    pairs = held_out_pairs(1, 20, style)
    result = reflection_propensity(DelimiterModel(tokenizer), tokenizer, pairs)
    assert result["p_wait"]["slip"] is None and result["p_wait"]["drill"] is None
    assert result["steps"]["slip"] == 0 and result["p_wait"]["right_easy"] == 1.0


def test_a_saved_model_is_probed_on_the_style_it_was_trained_on(tmp_path: Any) -> None:
    import json

    from research.toy.probe import trained_style

    assert trained_style(tmp_path) == TraceStyle()  # no training log: the bundled data's style
    start = {"event": "start", "style": {"p_error": 0.125, "p_recheck_hard": 0.4}}
    (tmp_path / "training_log.jsonl").write_text(json.dumps(start) + "\n" + json.dumps({"step": 1}) + "\n")
    assert trained_style(tmp_path) == TraceStyle(p_error=0.125, p_recheck_hard=0.4)
