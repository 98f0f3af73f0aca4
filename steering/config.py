"""Engine-side steering configuration: sizes of the preallocated tables (no torch)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

from steering import __version__
from steering.spec import SteeringLimits
from steering.vectors import SITES

ADDITIONAL_CONFIG_KEY = "steerserve"
PLUGIN_NAME = "steerserve"  # the general plugin's entry-point name, as `VLLM_PLUGINS` lists it
ENDPOINT_PLUGIN_NAME = "steerserve_api"  # the endpoint plugin's


@dataclass(frozen=True)
class EngineSteeringConfig:
    """Travels to every worker inside vLLM's `additional_config` (which also keys the compile cache)."""

    max_configs: int = 32  # distinct steering configs in flight at once (table rows besides row 0)
    limits: SteeringLimits = field(default_factory=SteeringLimits)
    sites: tuple[str, ...] = SITES  # sites with an op compiled in; fewer sites, less always-on work
    layers: tuple[int, ...] = ()  # layers with an op compiled in (negative: from the end); empty: every layer
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
        data["layers"] = list(self.layers)
        return data

    def steerable_layers(self, num_layers: int) -> tuple[int, ...]:
        """The absolute layers with an op (all of them when `layers` is empty); raise for a layer the model lacks."""
        if not self.layers:
            return tuple(range(num_layers))
        wrong = [layer for layer in self.layers if not -num_layers <= layer < num_layers]
        if wrong:
            raise ValueError(f"steering layers {wrong} do not exist: the model has {num_layers} layers")
        return tuple(sorted({layer % num_layers for layer in self.layers}))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EngineSteeringConfig:
        return cls(
            max_configs=int(data["max_configs"]),
            limits=SteeringLimits(**data["limits"]),
            sites=tuple(data["sites"]),
            layers=tuple(int(layer) for layer in data.get("layers") or ()),
            capture_tokens=int(data.get("capture_tokens", 0)),
            plugin_version=str(data.get("plugin_version", __version__)),
        )


def prefer_v1_runner() -> None:
    """Ask vLLM for its V1 model runner unless the user chose (`VLLM_USE_V2_MODEL_RUNNER`): the V1 path is the one
    steerserve's tests run (the CPU runner is V1's); the plugin's V2 hooks have not run inside vLLM on a GPU."""
    os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")


def named_in_vllm_plugins() -> bool:
    """True when `VLLM_PLUGINS` explicitly allow-lists the steerserve general plugin."""
    names = os.environ.get("VLLM_PLUGINS")
    return names is not None and PLUGIN_NAME in {n.strip() for n in names.split(",")}


def steering_config_of(vllm_config: Any) -> EngineSteeringConfig | None:
    """The engine's steering config: `additional_config["steerserve"]` (what `steerserve serve` sets; a partial
    dict fills in from the environment), else the `STEERSERVE_*` environment when `VLLM_PLUGINS` names this
    plugin (plain `vllm serve`), else None: this engine is not steered."""
    extra = getattr(vllm_config, "additional_config", None) or {}
    data = extra.get(ADDITIONAL_CONFIG_KEY)
    if data is None and not named_in_vllm_plugins():
        return None
    from steering.settings import SteerserveSettings

    base = SteerserveSettings().engine_config().to_dict()
    return EngineSteeringConfig.from_dict({**base, **(data or {})})


SPECULATIVE_METHODS = ("ngram", "draft_model")  # proposers tested with per-token steering


def unsupported_mode(vllm_config: Any) -> str | None:
    """Why per-token slots would be wrong in this engine configuration, or None."""
    speculative = getattr(vllm_config, "speculative_config", None)
    if speculative is not None and getattr(speculative, "method", None) not in SPECULATIVE_METHODS:
        return (
            f"speculative decoding method {getattr(speculative, 'method', None)!r} (steering supports "
            f"{', '.join(SPECULATIVE_METHODS)})"
        )
    parallel = vllm_config.parallel_config
    if getattr(parallel, "prefill_context_parallel_size", 1) > 1:
        return "prefill context parallelism (tokens are split across ranks)"
    if getattr(parallel, "enable_dbo", False):
        return "dual-batch overlap (micro-batches see a slice of the step's tokens)"
    return None
