"""`steerserve serve` flags: vLLM's own parser with steerserve's settings added (each also STEERSERVE_<FIELD>)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.launch import prepare


@pytest.fixture(autouse=True)
def clean_environment() -> Iterator[None]:
    """`prepare` exports settings into the environment (for vLLM's workers): restore it after each test."""
    saved = dict(os.environ)
    for key in [k for k in os.environ if k.startswith("STEERSERVE_")] + ["VLLM_PLUGINS"]:
        os.environ.pop(key, None)
    yield
    os.environ.clear()
    os.environ.update(saved)


def test_no_model_serves_the_demo_with_plugins_tools_and_its_reasoning_parser() -> None:
    args = prepare([])
    assert args.model.endswith("steering/models/demo") and args.served_model_name == ["steerserve-demo"]
    assert args.dtype == "float32" and args.kv_cache_memory_bytes == 2 * 2**30
    assert args.reasoning_parser == "deepseek_r1"
    assert args.enable_auto_tool_choice and args.tool_call_parser == "hermes"
    assert args.shutdown_timeout == 30  # SIGTERM drains (the drain itself: tests/e2e/test_cli_serve.py)
    assert set(os.environ["VLLM_PLUGINS"].split(",")) == {"steerserve", "steerserve_api"}
    steering = args.additional_config["steerserve"]
    assert set(steering["sites"]) == {"residual", "mlp", "attn"} and steering["limits"]["max_terms_per_site"] == 4


def test_steering_flags_size_the_engine_tables_and_reach_the_environment() -> None:
    args = prepare(["--steering-sites", "mlp", "residual", "--max-terms-per-site", "1", "--max-steering-configs", "8"])
    steering = args.additional_config["steerserve"]
    assert steering["sites"] == ["mlp", "residual"] and steering["max_configs"] == 8
    assert steering["limits"]["max_terms_per_site"] == 1
    assert os.environ["STEERSERVE_MAX_STEERING_CONFIGS"] == "8"


def test_environment_sets_sites() -> None:
    os.environ["STEERSERVE_STEERING_SITES"] = '["mlp"]'
    assert prepare([]).additional_config["steerserve"]["sites"] == ["mlp"]


def test_vllm_flags_pass_through_and_the_admin_key_joins_the_api_keys(tiny_llama: Path) -> None:
    args = prepare(
        [str(tiny_llama), "--max-num-seqs", "7", "--api-key", "k", "--admin-key", "a", "--no-enable-auto-tool-choice"]
    )
    assert args.model == str(tiny_llama) and args.max_num_seqs == 7 and args.dtype == "auto"
    assert args.api_key == ["k", "a"] and not args.enable_auto_tool_choice and args.tool_call_parser is None
    assert args.reasoning_parser == "" and args.served_model_name is None
    assert prepare(["--model", str(tiny_llama), "--tool-call-parser", "llama3_json"]).tool_call_parser == "llama3_json"
    assert prepare(["--model", str(tiny_llama), "--shutdown-timeout", "0"]).shutdown_timeout == 0


@pytest.mark.parametrize(
    "argv", [["--steering-sites", "ffn"], ["--max-terms-per-site", "0"], ["--max-steering-configs", "x"]]
)
def test_bad_values_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        prepare(argv)
