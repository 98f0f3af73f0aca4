"""Engine modes where per-token slots would be wrong are refused at start-up, naming the mode."""

from __future__ import annotations

from types import SimpleNamespace

from steering.config import unsupported_mode


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
