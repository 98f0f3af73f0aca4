"""Install the steering op into the decoder layers of one loaded model instance.

Patching is per instance (class swap on the target model's own layers and submodules), never on a class
globally, so a draft model that reuses the class is untouched. The layers are found from the model's own layer
list, whatever their class. Two layer conventions:

- split residual (most vLLM models): a layer returns (h, r) and the stream after block L is h + r; the
  returned h is block L's MLP branch as it joins the stream (after a post-feedforward norm where the
  architecture has one, e.g. Gemma), so `mlp` steers h and `residual` steers h + r;
- single hidden state (e.g. Granite): a layer returns the stream itself, so `residual` steers the output and
  `mlp` the MLP branch's own module output (its post-feedforward norm where there is one, else the MLP or MoE
  block, before any residual multiplier).

`attn` is the attention submodule's output (before any post-attention norm, multiplier and residual add).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from steering.errors import UnsupportedModelError
from steering.worker import ops_triton
from steering.worker.capture import capture_rows
from steering.worker.conditions import condition_gate
from steering.worker.ops import steer_in_place, steered_sum
from steering.worker.tables import SteeringState

ATTENTION_NAMES = ("self_attn", "attn", "self_attention", "attention")
MLP_BRANCH_NAMES = ("post_feedforward_layernorm", "post_mlp_layernorm", "mlp", "block_sparse_moe", "feed_forward")

_STEERED_CLASSES: dict[tuple[type, Any], type] = {}


def decoder_layers(model: nn.Module, sites: tuple[str, ...]) -> list[tuple[int, nn.Module]]:
    """(global index, layer) for the decoder layers this rank holds; raise a start-up error naming what a layer
    lacks when `sites` cannot be steered on it."""
    layers = _layer_list(model)
    found: list[tuple[int, nn.Module]] = []
    for index, layer in enumerate(layers):
        if type(layer).__name__ == "PPMissingLayer":
            continue  # held by another pipeline stage
        problem = unsteerable(layer, sites)
        if problem is not None:
            raise UnsupportedModelError(
                f"steerserve cannot steer {type(model).__name__}: its decoder layer {type(layer).__name__} {problem}"
            )
        found.append((index, layer))
    return found


def _layer_list(model: nn.Module) -> nn.ModuleList:
    """The decoder layer list: `model.layers` of the causal LM's inner model (vLLM's convention), else the
    shallowest `...layers` ModuleList anywhere in the model (e.g. a multimodal model's language model)."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if isinstance(layers, nn.ModuleList):
        return layers
    candidates = [
        (name.count("."), module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and name.split(".")[-1] == "layers"
    ]
    if not candidates:
        raise UnsupportedModelError(f"steerserve cannot steer {type(model).__name__}: no decoder layer list found")
    return min(candidates, key=lambda item: item[0])[1]


def split_residual(layer: nn.Module) -> bool:
    """Whether the layer follows vLLM's split-residual convention (its forward takes and returns a residual)."""
    return "residual" in inspect.signature(type(layer).forward).parameters


def submodule(layer: nn.Module, names: tuple[str, ...]) -> nn.Module | None:
    for name in names:
        module = getattr(layer, name, None)
        if isinstance(module, nn.Module):
            return module
    return None


def unsteerable(layer: nn.Module, sites: tuple[str, ...]) -> str | None:
    """Why `sites` cannot be steered on `layer`, or None."""
    if "attn" in sites and submodule(layer, ATTENTION_NAMES) is None:
        return f"has no attention submodule ({', '.join(ATTENTION_NAMES)}) for site 'attn'"
    if "mlp" in sites and not split_residual(layer) and submodule(layer, MLP_BRANCH_NAMES) is None:
        return f"returns one hidden state and has no MLP submodule ({', '.join(MLP_BRANCH_NAMES)}) for site 'mlp'"
    return None


def install(layers: list[tuple[int, nn.Module]], state: SteeringState) -> None:
    """Swap each layer (and the submodules of its sites) to steered subclasses that read `state`'s tables."""
    sites = state.config.sites
    for index, layer in layers:
        if getattr(layer, "_steerserve_installed", False):
            continue
        split = split_residual(layer)
        if not split and state.capture is not None:
            state.capture.mlp_site = False
        _attach_tables(layer, state, index, ("mlp", "residual") if split else ("residual",))
        _attach_conditions(layer, state, index)
        if state.capture is not None:
            layer.register_buffer("steer_capture_index", state.capture.index, persistent=False)
            layer.register_buffer("steer_capture_buffer", state.capture.buffers[index], persistent=False)
            layer.register_buffer("steer_capture_residual_scale", state.capture.residual_scale, persistent=False)
            layer.register_buffer("steer_capture_count", state.capture.count, persistent=False)
            if not split:
                layer.register_buffer("steer_capture_zero_residual", state.capture.zero_residual, persistent=False)
        setattr(layer, "_steer_capture", state.capture is not None)  # a trace-time constant
        layer.__class__ = _steered_class(type(layer), _layer_forward if split else _single_layer_forward)
        branches = [("attn", ATTENTION_NAMES)] + ([] if split else [("mlp", MLP_BRANCH_NAMES)])
        for site, names in branches:
            module = submodule(layer, names)
            if site in sites and module is not None:
                _attach_tables(module, state, index, (site,))
                module.__class__ = _steered_class(type(module), _branch_forward)
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


def _attach_conditions(layer: nn.Module, state: SteeringState, index: int) -> None:
    tables = state.conditions.tables.get(index)
    setattr(layer, "_steer_conditions", tables is not None)  # a trace-time constant
    if tables is None:
        return
    conditions = state.conditions
    layer.register_buffer("steer_prompt_state", conditions.prompt_state, persistent=False)
    layer.register_buffer("steer_prompt_upto", conditions.prompt_upto, persistent=False)
    layer.register_buffer("steer_token_meta", conditions.token_meta, persistent=False)
    layer.register_buffer("steer_condition_directions", tables.directions, persistent=False)
    layer.register_buffer("steer_condition_threshold", tables.threshold, persistent=False)
    layer.register_buffer("steer_condition_column", tables.column, persistent=False)
    layer.register_buffer("steer_condition_scope", tables.scope, persistent=False)
    layer.register_buffer("steer_condition_count", conditions.count, persistent=False)
    setattr(layer, "_steer_condition_index", conditions.layer_index[index])


def _gate_by_conditions(layer: nn.Module, hidden: torch.Tensor, residual: torch.Tensor | None) -> None:
    """Multiply the gate columns of terms conditioned on this block's stream (before its own steering)."""
    condition_gate(
        getattr(layer, "steer_token_gate"),
        getattr(layer, "steer_prompt_state"),
        getattr(layer, "steer_prompt_upto"),
        hidden,
        residual,
        getattr(layer, "steer_token_slot"),
        getattr(layer, "steer_token_meta"),
        getattr(layer, "steer_condition_directions"),
        getattr(layer, "steer_condition_threshold"),
        getattr(layer, "steer_condition_column"),
        getattr(layer, "steer_condition_scope"),
        getattr(layer, "steer_condition_count"),
        getattr(layer, "_steer_condition_index"),
    )


def _steered(module: nn.Module, site: str, target: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
    """`target` plus the change the steering of `site` makes, computed from the site value `target + extra`."""
    runtime: SteeringState = getattr(module, "_steer_state")
    site_index = runtime.site_index[(getattr(module, "_steer_layer"), site)]
    channels = None
    if _eager(runtime):
        # skip (layer, site)s no request of this step uses, before reading any table
        channels = runtime.step_channels[site_index]
        if channels == 0:
            return target
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
    return steered_sum(target, extra, *tables, channels)


def _eager(runtime: SteeringState) -> bool:
    """This forward runs eagerly, never inside a trace (where a Python branch would be frozen): the step's
    host-side flags may skip work nothing in the step needs."""
    return runtime.eager_skip and not torch.compiler.is_compiling()


def _layer_forward(self: nn.Module, base: type, *args: Any, **kwargs: Any) -> Any:
    hidden, residual = getattr(base, "forward")(self, *args, **kwargs)
    runtime: SteeringState = getattr(self, "_steer_state")
    eager = _eager(runtime)
    if eager and runtime.quiet:  # nothing to steer, gate or capture: the layer's own output
        return hidden, residual
    if getattr(self, "_steer_conditions") and (not eager or runtime.step_gating):
        _gate_by_conditions(self, hidden, residual)
    sites: tuple[str, ...] = getattr(self, "_steer_sites")
    if "mlp" in sites:
        hidden = _steered(self, "mlp", hidden)
    if "residual" in sites:
        hidden = _steered(self, "residual", hidden, residual)
    if getattr(self, "_steer_capture") and (not eager or runtime.capturing):
        _capture(self, hidden, residual)
    return hidden, residual


def _single_layer_forward(self: nn.Module, base: type, *args: Any, **kwargs: Any) -> Any:
    hidden = getattr(base, "forward")(self, *args, **kwargs)
    runtime: SteeringState = getattr(self, "_steer_state")
    eager = _eager(runtime)
    if eager and runtime.quiet:
        return hidden
    if getattr(self, "_steer_conditions") and (not eager or runtime.step_gating):
        _gate_by_conditions(self, hidden, None)
    if "residual" in getattr(self, "_steer_sites"):
        hidden = _steered(self, "residual", hidden)
    if getattr(self, "_steer_capture") and (not eager or runtime.capturing):
        _capture(self, hidden, getattr(self, "steer_capture_zero_residual").expand_as(hidden))
    return hidden


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


def _branch_forward(self: nn.Module, base: type, *args: Any, **kwargs: Any) -> Any:
    """A site's own submodule (attention, or a single-state layer's MLP branch): steer its output, the first
    element where it returns a tuple (e.g. attention weights alongside)."""
    out = getattr(base, "forward")(self, *args, **kwargs)
    runtime: SteeringState = getattr(self, "_steer_state")
    if _eager(runtime) and runtime.quiet:
        return out
    for site in getattr(self, "_steer_sites"):
        if isinstance(out, tuple):
            out = (_steered(self, site, out[0]), *out[1:])
        else:
            out = _steered(self, site, out)
    return out


def _steered_class(base: type, forward: Any) -> type:
    steered = _STEERED_CLASSES.get((base, forward))
    if steered is None:

        def steered_forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
            return forward(self, base, *args, **kwargs)

        steered = type(f"Steered{base.__name__}", (base,), {"forward": steered_forward})
        _STEERED_CLASSES[(base, forward)] = steered
    return steered
