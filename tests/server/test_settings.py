"""Server settings reach the engine: table sizes and compiled-in sites from flags and STEERSERVE_ variables."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from server.launch import engine_settings
from server.settings import ServerSettings


def parse(*args: str) -> ServerSettings:
    return ServerSettings(_cli_parse_args=list(args), _cli_kebab_case=True, _cli_implicit_flags=True)  # type: ignore[call-arg]


def test_sites_and_channels_flags_size_the_engine_tables() -> None:
    settings = parse("--steering-sites", "mlp,residual", "--max-terms-per-site", "1", "--max-steering-configs", "8")
    engine = engine_settings(settings, "some/model", "served")
    steering = engine.steering  # type: ignore[attr-defined]
    assert steering.sites == ("mlp", "residual")
    assert steering.limits.max_terms_per_site == 1 and steering.max_configs == 8


def test_defaults_enable_every_site_with_four_channels() -> None:
    steering = engine_settings(parse(), "m", "m").steering  # type: ignore[attr-defined]
    assert set(steering.sites) == {"residual", "mlp", "attn"} and steering.limits.max_terms_per_site == 4


def test_environment_sets_sites(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEERSERVE_STEERING_SITES", '["mlp"]')
    assert ServerSettings().steering_sites == ["mlp"]


@pytest.mark.parametrize("args", [("--steering-sites", "ffn"), ("--max-terms-per-site", "0")])
def test_bad_values_are_refused(args: tuple[str, ...]) -> None:
    with pytest.raises((ValidationError, SystemExit)):
        parse(*args)


def test_kv_cache_size_reaches_vllm_and_the_demo_gets_a_small_one() -> None:
    from server.launch import with_demo_defaults
    from steering.engine import engine_args

    sized = engine_settings(parse("--kv-cache-gib", "1.5"), "m", "m")
    assert engine_args(sized).kv_cache_memory_bytes == 3 * 2**29  # type: ignore[arg-type]
    assert engine_settings(parse(), "m", "m").kv_cache_memory_bytes is None  # type: ignore[attr-defined]
    demo = with_demo_defaults(parse())
    assert demo.kv_cache_gib == 2 and demo.dtype == "float32"
    chosen = with_demo_defaults(parse("--kv-cache-gib", "4", "--dtype", "bfloat16"))
    assert chosen.kv_cache_gib == 4 and chosen.dtype == "bfloat16"
    with pytest.raises((ValidationError, SystemExit)):
        parse("--kv-cache-gib", "0")
