"""Sampling defaults: a field a request leaves out takes the model's generation-config default, read by vLLM's own
ModelConfig (no engine is started)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from steering.config import EngineSteeringConfig
from steering.engine import SteeringEngine, model_shape


def engine_over(model_dir: Path) -> SteeringEngine:
    from vllm.config import ModelConfig

    config = ModelConfig(model=str(model_dir), dtype="float32")
    return SteeringEngine(
        SimpleNamespace(model_config=config), model_shape(str(model_dir)), None, EngineSteeringConfig()
    )


@pytest.fixture()
def model_with_defaults(tiny_llama: Path, tmp_path: Path) -> Path:
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_llama, model_dir)
    generation = {"do_sample": True, "temperature": 0.3, "top_p": 0.9, "max_new_tokens": 17, "eos_token_id": 2}
    (model_dir / "generation_config.json").write_text(json.dumps(generation))
    return model_dir


def test_missing_fields_take_the_models_defaults(model_with_defaults: Path) -> None:
    engine = engine_over(model_with_defaults)
    assert engine.default_sampling == {"temperature": 0.3, "top_p": 0.9}  # max_new_tokens is not a default here
    params = engine.sampling_params(max_tokens=5, temperature=None, top_p=None, seed=1)
    assert (params.temperature, params.top_p, params.max_tokens, params.seed) == (0.3, 0.9, 5, 1)


def test_fields_a_request_sends_win(model_with_defaults: Path) -> None:
    params = engine_over(model_with_defaults).sampling_params(max_tokens=5, temperature=1.0, top_p=1.0)
    assert (params.temperature, params.top_p) == (1.0, 1.0)


def test_a_model_without_defaults_gets_vllms(tiny_llama: Path, tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_llama, model_dir)
    (model_dir / "generation_config.json").unlink(missing_ok=True)
    engine = engine_over(model_dir)
    assert engine.default_sampling == {}
    assert engine.sampling_params(max_tokens=5).temperature == 1.0
