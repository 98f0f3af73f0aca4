"""The loss map puts each token of a trace in the right class, sums a model's loss per class, and computes the
data's own floor for the decision after a step, the re-check's verdict and the step's result."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from research.toy.arith import Trace, TraceStyle, problems, trace
from research.toy.loss_map import char_classes, entropy, loss_map, markdown, references
from research.toy.probe import held_out_pairs
from tests.research.toy.stand_in import StandInModel

TEXT = (
    "<think>\n37+48=75\n\nWait, let me re-check: 37+48 = 37+40+8 = 77+8 = 85. So it is 85, not 75.\n\n"
    "85-19=66\n\nWait, let me re-check: 85-19 = 66. Yes, it is 66.\n\n"
    "Wait, let me check again: 66+19 = 85, so 85-19=66 is right.\n\n66+3=69\n\n</think>\nAnswer: 69"
)


def test_every_character_of_a_trace_gets_its_class() -> None:
    classes = char_classes(TEXT)

    def at(fragment: str, occurrence: int = 0) -> str:
        index = -1
        for _ in range(occurrence + 1):
            index = TEXT.index(fragment, index + 1)
        return classes[index]

    assert at("37+48=75") == "step_operands" and classes[TEXT.index("=75") + 1] == "step_result"
    assert at("\n\nWait") == "delimiter"
    assert at("Wait") == "step_decision"  # the token after a step line's delimiter: reflect
    assert classes[TEXT.index("Wait") + 1] == "recheck"
    assert at("So it is") == "verdict" and at("Yes, it is") == "verdict"
    assert at("Wait, let me check again") == "again_decision" and at("66+19 = 85") == "again_check"
    assert at("66+3=69") == "step_operands"  # after a confirmed check the chain goes on: that token is a step's
    assert at("</think>") == "step_decision"  # the last step's decision closes the thinking
    assert classes[TEXT.rindex("69")] == "answer" and at("<think>") == "other"


def test_references_are_the_data_entropies_with_and_without_knowing_a_step_is_wrong() -> None:
    slip = Trace("<think>\n37+48=75\n\nWait, let me re-check: 37+48 = 85. So it is 85, not 75.\n\n</think>", 85)
    right = Trace("<think>\n37+48=85\n\n</think>", 85)
    checked = Trace("<think>\n37+48=85\n\nWait, let me re-check: 37+48 = 85. Yes, it is 85.\n\n</think>", 85)
    refs = references([("37+48", slip), ("37+48", right), ("37+48", checked), ("37+48", right)])
    # after the slip it always reflects; after right steps one time in three
    assert refs["step_decision"]["floor"] == pytest.approx(3 * entropy(1 / 3) / 4)
    assert refs["step_decision"]["without_noticing"] == pytest.approx(4 * entropy(2 / 4) / 4)
    assert refs["step_decision"]["one_rate"] == refs["step_decision"]["without_noticing"]  # every step is hard
    assert refs["verdict"] == {"floor": 0.0, "without_noticing": pytest.approx(2 * math.log(2) / 4)}
    assert refs["step_result"]["floor"] == pytest.approx(4 * entropy(1 / 4) / 4)  # all four steps are hard


def test_untrained_drill_digits_are_no_slips_of_the_model() -> None:
    rng = random.Random(3)
    style = TraceStyle(p_error=0.0, p_drill_hard=0.5)
    pairs = [(p.text, trace(p, rng, style)) for p in problems(0, 200, "train", style)]
    assert any(t.untrained for _, t in pairs)
    assert references(pairs)["step_result"]["floor"] == 0.0  # every trained hard step is right


class UniformModel(StandInModel):
    """A stand-in whose every next-token distribution is uniform: each token costs log(vocab) nats."""

    def logits(self, input_ids: Any) -> Any:
        import torch

        return torch.zeros(*input_ids.shape, self.vocab)


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from research.toy.train import build_tokenizer, user_prompt

    rng = random.Random(0)
    return build_tokenizer([user_prompt(p.text) + trace(p, rng).text for p in problems(0, 300, "train")], 320)


def test_loss_map_sums_each_trained_tokens_loss_into_its_class(tokenizer: Any) -> None:
    pairs = held_out_pairs(0, 70, TraceStyle(p_drill_hard=0.2))
    model = UniformModel(len(tokenizer))
    result = loss_map(model, tokenizer, pairs)
    assert model.training  # restored
    per_token = math.log(len(tokenizer))
    assert result["loss_per_token"] == pytest.approx(per_token, rel=1e-4)
    for row in result["classes"].values():
        assert row["nats_per_trace"] == pytest.approx(row["tokens_per_trace"] * per_token, rel=1e-2, abs=1e-2)
    counted = sum(row["tokens_per_trace"] for row in result["classes"].values()) * len(pairs)
    untrained_digits = sum(b - a for _, t in pairs for a, b in t.untrained)  # digits are single tokens
    total = sum(len(tokenizer(t.text + tokenizer.eos_token, add_special_tokens=False)["input_ids"]) for _, t in pairs)
    rounding = 0.005 * len(pairs) * len(result["classes"])  # tokens per trace are rounded to 2 decimals
    assert counted == pytest.approx(total - untrained_digits, abs=rounding)
    # one decision per step line; verdicts only where a re-check ran
    steps = sum(len(p.split("+")) + len(p.split("-")) - 2 for p, _ in pairs)
    assert result["classes"]["step_decision"]["tokens_per_trace"] * len(pairs) == pytest.approx(steps, abs=1)
    table = markdown(result)
    assert "| step_decision |" in table and "| verdict |" in table and "without noticing | one rate |" in table
