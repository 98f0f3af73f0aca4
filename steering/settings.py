"""steerserve's own settings: each field is an environment variable `STEERSERVE_<FIELD>` and, on
`steerserve serve`, a flag added to vLLM's own parser (`--max-steering-configs` for `max_steering_configs`).

Every process reads the same environment: the API process (registry, limits, auth for writes) and, on the
plain `vllm serve` path, vLLM's workers (the table sizes). Engine flags are vLLM's alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, get_args

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from steering.budget import BudgetRule
from steering.config import EngineSteeringConfig
from steering.spec import SteeringLimits
from steering.vectors import Site

if TYPE_CHECKING:
    from steering.store.base import VectorStore

ENV_PREFIX = "STEERSERVE_"


def default_data_dir() -> Path:
    return Path.home() / ".local" / "share" / "steerserve"


class SteerserveSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    redis_url: str | None = Field(
        default=None, description="Redis URL for the shared vector registry. Default: embedded store in --data-dir."
    )
    data_dir: Path = Field(default_factory=default_data_dir, description="Embedded store and fetched models.")
    registry_namespace: str | None = Field(
        default=None, description="Registry key namespace (default: the served model name)."
    )
    admin_key: str | None = Field(
        default=None, description="Bearer key for steering writes; also accepted wherever --api-key is."
    )
    max_steering_configs: int = Field(default=32, ge=1, description="Distinct steering configs in flight at once.")
    max_strength: float = Field(default=1000.0, gt=0, description="Largest |strength| a term may ask for.")
    steering_sites: list[Site] = Field(
        default_factory=lambda: list(get_args(Site)),
        min_length=1,
        description="Sites with the steering op compiled in; requests for others get 400. Every enabled site "
        "costs on every step, steered or not (GPU figures: benchmarks/results/steering_op_gpu.md).",
    )
    steering_layers: list[int] = Field(
        default_factory=list,
        description="Layers with the steering op compiled in (negative: from the end); requests for others get 400. "
        "Empty: every layer. On CUDA graphs every enabled (layer, site) costs on every step, steered or not.",
    )
    max_terms_per_site: int = Field(
        default=4, ge=1, le=16, description="Terms that may share one (layer, site): the op's channel count K."
    )
    capture_tokens: int = Field(
        default=1024, ge=0, description="Activation rows capturable per step for extraction jobs (0: no capture)."
    )
    max_vector_bytes: int = Field(default=64 * 1024 * 1024, description="Largest vector upload body in bytes.")
    budget_preset: str = Field(
        default="reflect-down",
        description="`reasoning_budget`: the preset whose terms it ramps in (steering.budget).",
    )
    budget_lead: float = Field(
        default=1.5, ge=0, description="`reasoning_budget`: strength from the start, x the preset's strength."
    )
    budget_start: float = Field(default=0.0, ge=0, lt=1, description="`reasoning_budget`: the ramp starts at this x B.")
    budget_scale: float = Field(
        default=6.0, gt=0, description="`reasoning_budget`: strength reached at B, x the preset's strength."
    )
    budget_backstop: float = Field(
        default=1.5, ge=0, description="`reasoning_budget`: vLLM's thinking budget at this x B (0: no hard stop)."
    )

    def budget_rule(self) -> BudgetRule:
        return BudgetRule(
            self.budget_preset, self.budget_lead, self.budget_start, self.budget_scale, self.budget_backstop
        )

    def engine_config(self) -> EngineSteeringConfig:
        return EngineSteeringConfig(
            max_configs=self.max_steering_configs,
            limits=SteeringLimits(max_strength=self.max_strength, max_terms_per_site=self.max_terms_per_site),
            sites=tuple(self.steering_sites),
            layers=tuple(self.steering_layers),
            capture_tokens=self.capture_tokens,
        )

    def open_store(self, namespace: str) -> VectorStore:
        """Redis when `redis_url` is set, else the embedded store in `data_dir`."""
        if self.redis_url:
            from steering.store.redis_store import RedisStore

            return RedisStore(self.redis_url, namespace)
        from steering.store.embedded import EmbeddedStore

        return EmbeddedStore(Path(self.data_dir) / "registry.sqlite3", namespace)
