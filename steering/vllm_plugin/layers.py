"""Install the steering op into the decoder layers of one loaded model instance.

Patching is per instance (class swap on the target model's own layers), never on the layer class globally,
so a draft model that reuses the class is untouched. vLLM's split residual form: a decoder layer returns
(h, r) and the stream after block L is h + r; the returned h is block L's MLP output.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from steering import ops_triton
from steering.config import SUPPORTED_ARCHITECTURES
from steering.errors import UnsupportedModelError
from steering.ops import steer_in_place, steered_sum
from steering.vllm_plugin.capture import capture_rows
from steering.vllm_plugin.state import SteeringState

SUPPORTED_LAYER_CLASSES = ("LlamaDecoderLayer", "MistralDecoderLayer", "Qwen2DecoderLayer", "Qwen3DecoderLayer")

_STEERED_CLASSES: dict[type, type] = {}


def decoder_layers(model: nn.Module) -> list[tuple[int, nn.Module]]:
    """(global index, layer) for the layers this rank holds; raise for architectures we do not support."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise UnsupportedModelError(
            f"steering supports {', '.join(SUPPORTED_ARCHITECTURES)}; {type(model).__name__} has no decoder layers"
        )
    found: list[tuple[int, nn.Module]] = []
    for index, layer in enumerate(layers):
        if type(layer).__name__ == "PPMissingLayer":
            continue  # held by another pipeline stage
        if not _is_supported(type(layer)):
            raise UnsupportedModelError(
                f"steering supports {', '.join(SUPPORTED_LAYER_CLASSES)} layers, not {type(layer).__name__}"
            )
        found.append((index, layer))
    return found


def _is_supported(cls: type) -> bool:
    return any(base.__name__ in SUPPORTED_LAYER_CLASSES for base in cls.__mro__)


def install(layers: list[tuple[int, nn.Module]], state: SteeringState) -> None:
    """Swap each layer (and its attention for site 'attn') to a steered subclass that reads `state`'s tables."""
    for index, layer in layers:
        if getattr(layer, "_steerserve_installed", False):
            continue
        _attach_tables(layer, state, index, ("mlp", "residual"))
        if state.capture is not None:
            layer.register_buffer("steer_capture_index", state.capture.index, persistent=False)
            layer.register_buffer("steer_capture_buffer", state.capture.buffers[index], persistent=False)
            layer.register_buffer("steer_capture_residual_scale", state.capture.residual_scale, persistent=False)
            layer.register_buffer("steer_capture_count", state.capture.count, persistent=False)
        setattr(layer, "_steer_capture", state.capture is not None)  # a trace-time constant
        layer.__class__ = _steered_class(type(layer), _layer_forward)
        if "attn" in state.config.sites:
            attn: nn.Module = getattr(layer, "self_attn")
            _attach_tables(attn, state, index, ("attn",))
            attn.__class__ = _steered_class(type(attn), _attn_forward)
        setattr(layer, "_steerserve_installed", True)


def _attach_tables(module: nn.Module, state: SteeringState, layer: int, sites: tuple[str, ...]) -> None:
    # The fused Triton kernel on CUDA (one launch per (layer, site)); the torch op elsewhere. Fixed at start-up.
    fused = state.device.type == "cuda" and state.hidden_size <= ops_triton.MAX_HIDDEN and ops_triton.available()
    setattr(module, "_steer_fused", fused)
    module.register_buffer("steer_token_slot", state.token_slot, persistent=False)
    module.register_buffer("steer_token_gate", state.token_gate, persistent=False)
    if state.device.type == "cpu":
        module.register_buffer("steer_channel_count", state.channel_count, persistent=False)
    installed: list[str] = []
    for site in sites:
        tables = state.tables.get((layer, site))
        if tables is None:
            continue
        module.register_buffer(f"steer_{site}_directions", tables.directions, persistent=False)
        module.register_buffer(f"steer_{site}_coefficients", tables.coefficients, persistent=False)
        module.register_buffer(f"steer_{site}_term_index", tables.term_index, persistent=False)
        installed.append(site)
    setattr(module, "_steer_sites", tuple(installed))  # fixed at start-up: a trace-time constant
    setattr(module, "_steer_layer", layer)
    setattr(module, "_steer_state", state)


def _steered(module: nn.Module, site: str, target: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
    """`target` plus the change the steering of `site` makes, computed from the site value `target + extra`."""
    runtime: SteeringState = getattr(module, "_steer_state")
    site_index = runtime.site_index[(getattr(module, "_steer_layer"), site)]
    tables = (
        getattr(module, "steer_token_slot"),
        getattr(module, "steer_token_gate"),
        getattr(module, f"steer_{site}_directions"),
        getattr(module, f"steer_{site}_coefficients"),
        getattr(module, f"steer_{site}_term_index"),
    )
    if getattr(module, "_steer_fused"):
        ops_triton.steer_in_place(target, extra, *tables)  # rows of slot 0 are neither read nor written
        return target
    if runtime.device.type == "cpu":
        # No CUDA graph on CPU: the custom op reads this step's channel count itself, eagerly and compiled,
        # so a (layer, site) no request of the step uses costs one call and nothing else.
        steer_in_place(target, extra, *tables, getattr(module, "steer_channel_count"), site_index)
        return target
    channels = None
    if runtime.eager_skip and not torch.compiler.is_compiling():
        # CUDA, eager, no graph to freeze it: skip (layer, site)s no request of this step uses.
        channels = int(runtime.channel_count[site_index])
        if channels == 0:
            return target
    return steered_sum(target, extra, *tables, channels)


def _layer_forward(self: nn.Module, base: type, *args: Any, **kwargs: Any) -> Any:
    hidden, residual = getattr(base, "forward")(self, *args, **kwargs)
    sites: tuple[str, ...] = getattr(self, "_steer_sites")
    if "mlp" in sites:
        hidden = _steered(self, "mlp", hidden)
    if "residual" in sites:
        hidden = _steered(self, "residual", hidden, residual)
    if getattr(self, "_steer_capture"):
        _capture(self, hidden, residual)
    return hidden, residual


def _capture(layer: nn.Module, hidden: torch.Tensor, residual: torch.Tensor) -> None:
    """Gather the wanted rows of the stream after this block into the layer's fixed capture buffer (the op
    checks the step's row count itself: no work when nothing is captured, eagerly or compiled)."""
    capture_rows(
        hidden,
        residual,
        getattr(layer, "steer_capture_index"),
        getattr(layer, "steer_capture_residual_scale"),
        getattr(layer, "steer_capture_count"),
        getattr(layer, "steer_capture_buffer"),
    )


def _attn_forward(self: nn.Module, base: type, *args: Any, **kwargs: Any) -> Any:
    out = getattr(base, "forward")(self, *args, **kwargs)
    if "attn" in getattr(self, "_steer_sites"):
        out = _steered(self, "attn", out)
    return out


def _steered_class(base: type, forward: Any) -> type:
    steered = _STEERED_CLASSES.get(base)
    if steered is None:

        def steered_forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
            return forward(self, base, *args, **kwargs)

        steered = type(f"Steered{base.__name__}", (base,), {"forward": steered_forward})
        _STEERED_CLASSES[base] = steered
    return steered
