"""Server settings: environment variables with prefix STEERSERVE_, and CLI flags built from the same fields."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from steering.spec import Site

DEMO_NAME = "steerserve-demo"  # served name of the bundled toy model


def default_data_dir() -> Path:
    return Path.home() / ".local" / "share" / "steerserve"


class ServerSettings(BaseSettings):
    """Every field is also a `steerserve serve` flag (`--max-model-len` for `max_model_len`); docs are the help."""

    model_config = SettingsConfigDict(env_prefix="STEERSERVE_", extra="ignore")

    model: str | None = Field(
        default=None,
        description="Hugging Face id or local path. Default: a tiny demo model built offline on first start.",
    )
    served_model_name: str | None = Field(default=None, description="Name clients use as `model` (default: --model).")
    host: str = Field(default="127.0.0.1", description="Interface to bind.")
    port: int = Field(default=8000, description="Port to bind.")
    redis_url: str | None = Field(
        default=None, description="Redis URL for the shared vector registry. Default: embedded store in --data-dir."
    )
    data_dir: Path = Field(default_factory=default_data_dir, description="Embedded store and built demo models.")
    registry_namespace: str | None = Field(
        default=None, description="Registry key namespace (default: the served model name)."
    )
    api_key: str | None = Field(default=None, description="Bearer key required on every /v1 route.")
    admin_key: str | None = Field(default=None, description="Bearer key for steering writes; grants API access too.")
    max_steering_configs: int = Field(default=32, description="Distinct steering configs in flight at once.")
    max_strength: float = Field(default=1000.0, description="Largest |strength| a term may ask for.")
    steering_sites: list[Site] = Field(
        default_factory=lambda: list(get_args(Site)),
        min_length=1,
        description="Sites with the steering op compiled in; requests for others get 400. Every enabled site "
        "costs on every step, steered or not (GPU figures: benchmarks/results/steering_op_gpu.md).",
    )
    max_terms_per_site: int = Field(
        default=4, ge=1, le=16, description="Terms that may share one (layer, site): the op's channel count K."
    )
    max_queued_requests: int = Field(default=256, description="Requests in flight before new ones get 503.")
    drain_timeout: float = Field(
        default=30.0, ge=0, description="On SIGTERM: seconds to let requests in flight finish (new ones get 503)."
    )
    cors_origins: list[str] = Field(default_factory=list, description="Allowed CORS origins (default: CORS off).")
    max_vector_bytes: int = Field(default=64 * 1024 * 1024, description="Largest vector upload body in bytes.")
    reasoning: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="Split the thinking section into reasoning_content (auto: when the end marker is a token).",
    )
    reasoning_start: str = Field(default="<think>", description="Marker that opens the thinking section.")
    reasoning_end: str = Field(default="</think>", description="Marker that closes the thinking section.")
    # engine pass-through
    dtype: str = Field(
        default="auto", description="Model dtype (vLLM --dtype; auto serves the bundled toy demo in float32)."
    )
    max_model_len: int | None = Field(default=None, description="Context length (vLLM --max-model-len).")
    enforce_eager: bool = Field(default=False, description="Disable torch.compile / CUDA graphs.")
    tensor_parallel_size: int = Field(default=1, description="vLLM tensor parallelism.")
    pipeline_parallel_size: int = Field(default=1, description="vLLM pipeline parallelism.")
    max_num_seqs: int | None = Field(default=None, description="vLLM --max-num-seqs.")
    enable_prefix_caching: bool = Field(default=True, description="vLLM prefix caching (steered requests are salted).")
    kv_cache_gib: float | None = Field(
        default=None,
        gt=0,
        description="KV-cache size in GiB (vLLM --kv-cache-memory-bytes); 2 for the bundled toy demo. Unset: vLLM "
        "sizes it from free memory (on CPU 92 % of the memory node). On CPU, VLLM_CPU_KVCACHE_SPACE wins over both.",
    )
    seed: int = Field(default=0, description="Engine seed.")
    log_level: str = Field(default="info", description="uvicorn log level.")
