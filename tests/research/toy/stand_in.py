"""A stand-in causal LM for the teacher-forced probes: fixed logits from the input ids, no weights."""

from __future__ import annotations

from typing import Any


class StandInModel:
    """Called like a Hugging Face causal LM (``model(input_ids=...).logits``); subclasses define `logits`."""

    def __init__(self, vocab: int) -> None:
        self.vocab = vocab
        self.training = True

    def eval(self) -> None:
        self.training = False

    def train(self, mode: bool = True) -> None:
        self.training = mode

    def logits(self, input_ids: Any) -> Any:
        raise NotImplementedError

    def __call__(self, input_ids: Any) -> Any:
        return type("Output", (), {"logits": self.logits(input_ids)})()
