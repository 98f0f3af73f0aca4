"""The CPU seeded-sampling workaround applies only to runners that steer."""

from __future__ import annotations

from types import SimpleNamespace

from steering.worker.runner import STATE_ATTR, _v1_cpu_seeded_discard


class FakeRunner:
    """The attributes `_v1_cpu_seeded_discard` reads of vLLM's CPU runner."""

    def __init__(self, steering: bool) -> None:
        import numpy as np
        import torch

        self.device = torch.device("cpu")
        self.input_batch = SimpleNamespace(generators={0: "gen0", 1: "gen1"}, num_reqs=2)
        self.discard_request_mask = SimpleNamespace(np=np.array([True, False]))
        if steering:
            setattr(self, STATE_ATTR, object())

    def sample(self) -> dict[int, str]:
        return dict(self.input_batch.generators)  # what the original method would see


def test_seeded_discard_workaround_applies_only_to_engines_that_steer() -> None:
    wrapped = _v1_cpu_seeded_discard(FakeRunner.sample)
    steering = FakeRunner(steering=True)
    assert wrapped(steering) == {1: "gen1"}  # the discarded request's generator is held back from the rewind
    assert steering.input_batch.generators == {0: "gen0", 1: "gen1"}  # and put back afterwards
    plain = FakeRunner(steering=False)
    assert wrapped(plain) == {0: "gen0", 1: "gen1"}  # vLLM's own behaviour, untouched
