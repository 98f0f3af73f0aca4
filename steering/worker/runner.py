"""Runner hooks: build steering state after the model loads, track requests, write per-token slots each step.

Two runners exist in vLLM 0.32 and the one in use is picked at run time by vLLM itself:
- V1 (`v1/worker/gpu_model_runner.GPUModelRunner`, and the CPU runner that subclasses it): requests are
  kept in `runner.requests`; we hook `_prepare_inputs` (batch layout final) and `_on_request_state_removed`.
- Model Runner V2 (`v1/worker/gpu/model_runner.GPUModelRunner`, default on GPUs with Triton): requests enter
  in `add_requests` (the only place `extra_args` is visible), leave in `_remove_request` (finish and
  preemption), and `prepare_inputs` returns the step's `InputBatch`.
Each hook wraps the original method; patching is idempotent because `register()` runs in every process.
"""

from __future__ import annotations

import functools
import importlib
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from steering.config import steering_config_of, unsupported_mode
from steering.errors import UnsupportedModelError
from steering.worker import layers as layer_patch
from steering.worker.layout import token_layout
from steering.worker.tables import SteeringState

logger = logging.getLogger("steerserve.plugin")
STATE_ATTR = "_steerserve_state"
# Speculation tested with steering: the target model verifies drafted tokens as ordinary scheduled tokens of
# their request (consecutive positions, the request's slot), so steering applies to them like to any token; a
# draft model is another model instance, which the per-instance layer patch leaves unsteered. Methods that feed
# the target's hidden states to a head (EAGLE, MTP, Medusa) are refused until tested.


def build_state(runner: Any) -> None:
    """After the model loads: check the mode, size the tables, patch this runner's own decoder layers."""
    config = steering_config_of(runner.vllm_config)
    if config is None or getattr(runner, STATE_ATTR, None) is not None:
        return
    reason = unsupported_mode(runner.vllm_config)
    if reason is not None:
        raise UnsupportedModelError(f"steerserve cannot steer with {reason}; disable it or steering")
    model = runner.get_model()
    layers = layer_patch.decoder_layers(model, config.sites)
    model_config = runner.model_config
    state = SteeringState(
        config,
        local_layers=[index for index, _ in layers],
        steerable_layers=config.steerable_layers(model_config.get_total_num_hidden_layers()),
        hidden_size=model_config.get_hidden_size(),
        max_tokens=int(runner.max_num_tokens) + 64,
        dtype=model_config.dtype,
        device=runner.device,
        max_requests=int(getattr(runner, "max_num_reqs", 256)),
    )
    state.eager_skip = _runs_eagerly_without_graphs(runner.vllm_config)
    layer_patch.install(layers, state)
    setattr(runner, STATE_ATTR, state)
    logger.info(
        "steerserve: steering layers %s of %d local at sites %s",
        ",".join(map(str, state.steerable_layers)),
        len(layers),
        ",".join(config.sites),
    )


def _runs_eagerly_without_graphs(vllm_config: Any) -> bool:
    """True when the model's Python forward runs every step (no torch.compile trace, no CUDA graph replay)."""
    from vllm.config import CompilationMode, CUDAGraphMode

    compilation = vllm_config.compilation_config
    no_graphs = compilation.cudagraph_mode in (None, CUDAGraphMode.NONE) or vllm_config.model_config.enforce_eager
    return bool(compilation.mode == CompilationMode.NONE and no_graphs)


def state_of(runner: Any) -> SteeringState | None:
    state: SteeringState | None = getattr(runner, STATE_ATTR, None)
    return state


# ---- V1 ------------------------------------------------------------------------------------------------------
def _v1_prepare_inputs(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def wrapper(self: Any, scheduler_output: Any, num_scheduled_tokens: np.ndarray) -> Any:
        result = original(self, scheduler_output, num_scheduled_tokens)
        state = state_of(self)
        if state is not None:
            batch = self.input_batch
            num_reqs = batch.num_reqs
            req_ids = batch.req_ids[:num_reqs]
            for req_id in req_ids:
                if req_id not in state.known_requests:
                    params = self.requests[req_id].sampling_params
                    state.attach_request(req_id, getattr(params, "extra_args", None))
            if state.idle:
                state.quiet = True
                return result
            layout = token_layout(
                state.slots_for(req_ids),
                num_scheduled_tokens,
                batch.num_computed_tokens_cpu[:num_reqs],
                [self.requests[r].num_prompt_tokens for r in req_ids],
            )
            state.prepare_step(layout, self.input_ids.gpu, req_ids)
        return result

    return wrapper


def _v1_cpu_seeded_discard(original: Callable[..., Any]) -> Callable[..., Any]:
    """vLLM 0.32 rewinds the generator of a seeded request whose sampled token is discarded (a partial prefill
    chunk) with `Generator.set_offset`, which CPU generators refuse: the worker raises and the engine dies on
    any `seed` request whose prompt is chunked. On CPU, skip the rewind for those requests (their seeded
    stream then depends on how the prompt was chunked) instead of losing the engine. Only in engines that
    steer: any other engine in the environment runs vLLM's own code unchanged."""

    @functools.wraps(original)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self.device.type != "cpu" or state_of(self) is None:
            return original(self, *args, **kwargs)
        generators = self.input_batch.generators
        discarded = np.nonzero(self.discard_request_mask.np[: self.input_batch.num_reqs])[0]
        held = {int(i): generators.pop(int(i)) for i in discarded if int(i) in generators}
        try:
            return original(self, *args, **kwargs)
        finally:
            generators.update(held)

    return wrapper


def _collect_captures(original: Callable[..., Any]) -> Callable[..., Any]:
    """After the model ran (V1 `_model_forward`, V2 `execute_model`): copy out the captured rows."""

    @functools.wraps(original)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)
        state = state_of(self)
        if state is not None and state.capture is not None and state.capture.active:
            state.capture.collect()
        return result

    return wrapper


def _v1_request_removed(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def wrapper(self: Any, req_id: str, req_state: Any) -> Any:
        state = state_of(self)
        if state is not None:
            state.forget_request(req_id)
        return original(self, req_id, req_state)

    return wrapper


# ---- Model Runner V2 -----------------------------------------------------------------------------------------
def _v2_add_requests(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def wrapper(self: Any, scheduler_output: Any) -> Any:
        result = original(self, scheduler_output)
        state = state_of(self)
        if state is not None:
            for new_req in scheduler_output.scheduled_new_reqs:
                params = new_req.sampling_params
                state.attach_request(new_req.req_id, getattr(params, "extra_args", None))
        return result

    return wrapper


def _v2_remove_request(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def wrapper(self: Any, req_id: str) -> Any:
        state = state_of(self)
        if state is not None:
            state.forget_request(req_id)
        return original(self, req_id)

    return wrapper


def _v2_prepare_inputs(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        input_batch = original(self, *args, **kwargs)
        state = state_of(self)
        if state is not None and not state.idle:
            layout = v2_layout(self, state, input_batch)
            state.prepare_step(layout, input_batch.input_ids, list(input_batch.req_ids))
        elif state is not None:
            state.quiet = True
        return input_batch

    return wrapper


def v2_layout(runner: Any, state: SteeringState, input_batch: Any) -> Any:
    """The per-token layout of a V2 `InputBatch` (batch order = `req_ids`, re-sorted every step)."""
    return token_layout(
        state.slots_for(input_batch.req_ids),
        input_batch.num_scheduled_tokens,
        input_batch.num_computed_tokens_np,
        runner.req_states.prompt_len.np[input_batch.idx_mapping_np],
    )


def _after_load(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)
        with torch.inference_mode(False):
            build_state(self)
        return result

    return wrapper


def _patch(cls: type, name: str, make: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    original = cls.__dict__.get(name)
    if original is None or getattr(original, "_steerserve_patched", False):
        return
    wrapped = make(original)
    wrapped._steerserve_patched = True  # type: ignore[attr-defined]
    setattr(cls, name, wrapped)


# Hook points per runner class (module:class -> method -> wrapper). CPUModelRunner (V1) overrides load_model.
_HOOKS: dict[str, dict[str, Callable[[Callable[..., Any]], Callable[..., Any]]]] = {
    "vllm.v1.worker.gpu_model_runner:GPUModelRunner": {
        "load_model": _after_load,
        "_prepare_inputs": _v1_prepare_inputs,
        "_on_request_state_removed": _v1_request_removed,
        "_model_forward": _collect_captures,
        "_bookkeeping_sync": _v1_cpu_seeded_discard,
    },
    "vllm.v1.worker.cpu_model_runner:CPUModelRunner": {"load_model": _after_load},
    "vllm.v1.worker.gpu.model_runner:GPUModelRunner": {
        "load_model": _after_load,
        "add_requests": _v2_add_requests,
        "_remove_request": _v2_remove_request,
        "prepare_inputs": _v2_prepare_inputs,
        "execute_model": _collect_captures,
    },
}


def patch_runners() -> None:
    """Wrap the hook points of every runner class this vLLM build has; safe to call more than once."""
    for path, hooks in _HOOKS.items():
        module_name, class_name = path.split(":")
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except ImportError:  # pragma: no cover - depends on the installed vLLM build
            logger.debug("steerserve: %s not available in this vLLM build", path)
            continue
        for method, make in hooks.items():
            _patch(cls, method, make)
