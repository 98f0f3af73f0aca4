"""Engine-side steering configuration: sizes of the preallocated tables (no torch)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from steering import __version__
from steering.spec import SITES, SteeringLimits

ADDITIONAL_CONFIG_KEY = "steerserve"
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")


@dataclass(frozen=True)
class EngineSteeringConfig:
    """Travels to every worker inside vLLM's `additional_config` (which also keys the compile cache)."""

    max_configs: int = 32  # distinct steering configs in flight at once (table rows besides row 0)
    limits: SteeringLimits = field(default_factory=SteeringLimits)
    sites: tuple[str, ...] = SITES  # sites with an op compiled in; fewer sites, less always-on work
    capture_tokens: int = 1024  # activation rows capturable per step (0: no capture); memory = rows x layers x hidden
    plugin_version: str = __version__

    def __post_init__(self) -> None:
        if self.capture_tokens < 0:
            raise ValueError("capture_tokens must be >= 0")
        if self.max_configs < 1:
            raise ValueError("max_configs must be >= 1")
        unknown = set(self.sites) - set(SITES)
        if unknown or not self.sites:
            raise ValueError(f"sites must be a non-empty subset of {SITES}, got {self.sites}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["sites"] = list(self.sites)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EngineSteeringConfig:
        return cls(
            max_configs=int(data["max_configs"]),
            limits=SteeringLimits(**data["limits"]),
            sites=tuple(data["sites"]),
            capture_tokens=int(data.get("capture_tokens", 0)),
            plugin_version=str(data.get("plugin_version", __version__)),
        )
