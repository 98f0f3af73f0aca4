"""Engine modes where per-token slots would be wrong are refused at start-up, naming the mode."""

from __future__ import annotations

from types import SimpleNamespace

from steering.vllm_plugin.runner import STATE_ATTR, _v1_cpu_seeded_discard, unsupported_mode


def config(method: str | None = None, pcp: int = 1, dbo: bool = False) -> SimpleNamespace:
    return SimpleNamespace(
        speculative_config=None if method is None else SimpleNamespace(method=method),
        parallel_config=SimpleNamespace(prefill_context_parallel_size=pcp, enable_dbo=dbo),
    )


def test_ngram_and_draft_model_speculation_are_accepted() -> None:
    assert unsupported_mode(config()) is None
    assert unsupported_mode(config("ngram")) is None
    assert unsupported_mode(config("draft_model")) is None


def test_untested_proposers_are_refused_naming_what_is_supported() -> None:
    reason = unsupported_mode(config("eagle"))
    assert reason is not None and "'eagle'" in reason and "ngram" in reason


def test_split_token_layouts_are_refused() -> None:
    assert "context parallelism" in (unsupported_mode(config(pcp=2)) or "")
    assert "dual-batch overlap" in (unsupported_mode(config(dbo=True)) or "")


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
