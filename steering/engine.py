"""Engine factory: an `AsyncLLM` with the steering plugin active, vector loading and steered generation.

The server uses this and nothing below it. Per request it (1) waits for admission of the config, (2) puts the
resolved spec into `SamplingParams.extra_args`, with every vector the workers are not yet known to hold carried
inline (so a new vector costs no extra round trip before its first token), and (3) salts the prefix cache with
the config hash, so steered KV is never shared with other configs or with unsteered requests. A vector counts as
held once a request that carried it was verified steered.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from steering.activations import ActivationCapture, Activations
from steering.admission import ConfigAdmission
from steering.coalesce import Coalesced
from steering.config import (
    ADDITIONAL_CONFIG_KEY,
    EngineSteeringConfig,
    prefer_v1_runner,
    steering_config_of,
)
from steering.errors import SteeringNotAppliedError, UnsupportedModelError
from steering.spec import ModelShape, ResolvedSpec, SteeringTerm, resolve_spec
from steering.vectors import VectorLookup

logger = logging.getLogger("steerserve.engine")

Prompt = str | Sequence[int]


@dataclass(frozen=True)
class EngineSettings:
    """Engine pass-through settings (a subset of vLLM's engine args) plus steering table sizes."""

    model: str
    served_model_name: str | None = None
    steering: EngineSteeringConfig | None = EngineSteeringConfig()  # None: plain vLLM (benchmark baseline)
    dtype: str = "auto"
    max_model_len: int | None = None
    enforce_eager: bool = False
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    enable_prefix_caching: bool = True
    seed: int = 0
    kv_cache_memory_bytes: int | None = None  # None: vLLM sizes the KV cache from the memory it finds free
    log_stats: bool = True  # vLLM's own engine metrics (vllm:*), exported next to ours
    extra: tuple[tuple[str, Any], ...] = ()  # further vLLM engine args, by name


def model_shape(model: str) -> ModelShape:
    """Read the model's config in the API process (whether its layers can be steered is checked where they are
    built: the workers refuse at start-up, naming what the layer lacks)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model)
    text_config = getattr(config, "text_config", None) or config
    architectures = tuple(getattr(config, "architectures", None) or ())
    try:
        num_layers, hidden_size = int(text_config.num_hidden_layers), int(text_config.hidden_size)
    except (AttributeError, TypeError):
        raise UnsupportedModelError(f"{model} has no decoder layers to steer (no num_hidden_layers)") from None
    return ModelShape(
        num_layers=num_layers,
        hidden_size=hidden_size,
        vocab_size=int(text_config.vocab_size),
        architecture=architectures[0] if architectures else "",
        name=model,
    )


def engine_args(settings: EngineSettings) -> Any:
    from vllm.engine.arg_utils import AsyncEngineArgs

    kwargs: dict[str, Any] = dict(
        model=settings.model,
        served_model_name=settings.served_model_name,
        dtype=settings.dtype,
        max_model_len=settings.max_model_len,
        enforce_eager=settings.enforce_eager,
        tensor_parallel_size=settings.tensor_parallel_size,
        pipeline_parallel_size=settings.pipeline_parallel_size,
        enable_prefix_caching=settings.enable_prefix_caching,
        seed=settings.seed,
    )
    if settings.max_num_seqs is not None:
        kwargs["max_num_seqs"] = settings.max_num_seqs
    if settings.max_num_batched_tokens is not None:
        kwargs["max_num_batched_tokens"] = settings.max_num_batched_tokens
    if settings.kv_cache_memory_bytes is not None:
        kwargs["kv_cache_memory_bytes"] = settings.kv_cache_memory_bytes
    kwargs.update(dict(settings.extra))
    if settings.steering is not None:
        # additional_config is hashed into vLLM's compile-cache key: artifacts built with different plugin
        # versions or table sizes never load for each other.
        kwargs["additional_config"] = {ADDITIONAL_CONFIG_KEY: settings.steering.to_dict()}
    return AsyncEngineArgs(**kwargs)


@dataclass(frozen=True)
class Admitted:
    """A steered request let in: its slot in the tables, its ticket, the `extra_args` it carries."""

    slot: int
    ticket: str
    fields: dict[str, str]
    carried: tuple[str, ...] = ()  # content hashes of the vectors the request carries to the workers


class SteeringEngine:
    """One vLLM `AsyncLLM` plus the steering bookkeeping of the API process."""

    def __init__(self, llm: Any, shape: ModelShape, tokenizer: Any, steering: EngineSteeringConfig | None) -> None:
        self.llm = llm
        self.shape = shape
        self.tokenizer = tokenizer
        self.steering_config = steering
        self.steering_enabled = steering is not None
        self.limits = steering.limits if steering is not None else None
        self.admission = ConfigAdmission(steering.max_configs if steering is not None else 1)
        self._loaded: OrderedDict[str, None] = OrderedDict()  # held by every worker (confirmed), LRU order
        self._failures: Coalesced[str, str] = Coalesced(self._ask_failures)
        self._vector_refs: dict[str, int] = {}  # vectors used by requests in flight: never dropped
        self.max_loaded_vectors = 4096
        self.activations = ActivationCapture(
            llm,
            shape.num_layers,
            shape.hidden_size,
            steering.capture_tokens if steering is not None else 0,
            int(llm.model_config.max_model_len),
        )

    @classmethod
    def attach(cls, llm: Any) -> SteeringEngine:
        """The steering half of the API process around an engine client vLLM already started (its own server's):
        the steering config is the one the workers read (`steering_config_of`)."""
        from transformers import AutoTokenizer

        model_config = llm.model_config
        steering = steering_config_of(llm.vllm_config)
        shape = model_shape(model_config.model)
        tokenizer = AutoTokenizer.from_pretrained(
            model_config.tokenizer, trust_remote_code=bool(model_config.trust_remote_code)
        )
        return cls(llm, shape, tokenizer, steering)

    @classmethod
    def create(cls, settings: EngineSettings) -> SteeringEngine:
        """Start the engine (call inside a running event loop; vLLM on CPU spawns processes: guard __main__)."""
        from vllm.v1.engine.async_llm import AsyncLLM

        shape = model_shape(settings.model)
        if settings.steering is not None:
            prefer_v1_runner()
        vllm_config = engine_args(settings).create_engine_config()
        if settings.steering is not None:
            from steering.config import unsupported_mode

            reason = unsupported_mode(vllm_config)
            if reason is not None:
                raise UnsupportedModelError(f"steerserve cannot steer with {reason}")
        llm = AsyncLLM.from_vllm_config(vllm_config, disable_log_stats=not settings.log_stats)
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(settings.model)
        return cls(llm, shape, tokenizer, settings.steering)

    # ---- steering specs -----------------------------------------------------------------------------------
    def encode_single_token(self, text: str) -> list[int]:
        ids: list[int] = self.tokenizer.encode(text, add_special_tokens=False)
        return ids

    def resolve(self, terms: Sequence[SteeringTerm], lookup: VectorLookup) -> ResolvedSpec:
        """Validate terms against the registry and this model (raises `SteerserveError` with the field named)."""
        if self.limits is None:
            raise UnsupportedModelError("this engine was started without steering")
        config = self.steering_config
        assert config is not None
        layers = config.steerable_layers(self.shape.num_layers)
        parallel = getattr(getattr(self.llm, "vllm_config", None), "parallel_config", None)
        stages = int(getattr(parallel, "pipeline_parallel_size", 1))
        # a condition gates later layers through the worker's gate buffer: one stage must hold them all
        unavailable = f"the engine runs {stages} pipeline stages" if stages > 1 else None
        return resolve_spec(
            terms, lookup, self.shape, self.limits, self.encode_single_token, config.sites, layers, unavailable
        )

    async def _confirm_loaded(self, hashes: Iterable[str]) -> None:
        """Every worker now holds these vectors (a request that carried them was steered): later requests name
        them by hash only. Beyond `max_loaded_vectors`, idle ones are dropped from the workers."""
        for sha in hashes:
            self._loaded[sha] = None
            self._loaded.move_to_end(sha)
        excess = len(self._loaded) - self.max_loaded_vectors
        victims = [sha for sha in self._loaded if sha not in self._vector_refs][: max(0, excess)]
        for sha in victims:
            self._loaded.pop(sha, None)
        if victims:
            await self.llm.collective_rpc("steerserve_drop_vectors", args=(victims,))

    async def worker_stats(self) -> list[dict[str, Any]]:
        stats: list[dict[str, Any]] = await self.llm.collective_rpc("steerserve_stats")
        return stats

    # ---- generation ---------------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def steered(self, spec: ResolvedSpec | None) -> AsyncIterator[Admitted | None]:
        """Around one request's whole life: wait for admission of its config (all slots taken: it waits) and keep
        its vectors from eviction; yields what the request must carry (with the vectors the workers are not yet
        known to hold, inline). A no-op spec (or None) passes straight through."""
        if spec is None or spec.is_noop:
            yield None
            return
        if not self.steering_enabled:
            raise UnsupportedModelError("this engine was started without steering")
        held = set(spec.vector_hashes)
        async with self.admission.admit(spec.config_hash, getattr(self.llm, "check_admission", None)) as slot:
            self._hold(held)
            for sha in held & self._loaded.keys():
                self._loaded.move_to_end(sha)  # recently used: evicted last
            try:
                carried = {
                    sha: vector
                    for sha, vector in spec.vectors.items()
                    if vector is not None and sha not in self._loaded
                }
                ticket = uuid.uuid4().hex
                fields = spec.engine_fields(slot, ticket, tuple(carried.values()))
                yield Admitted(slot, ticket, fields, tuple(carried))
            finally:
                self._release(held)

    async def verify(self, admitted: Admitted | None) -> None:
        """Raise `SteeringNotAppliedError` when a worker could not steer the request (it must not pass as
        steered): a slot or vector mismatch between this process's ledger and a worker."""
        if admitted is None:
            return
        reasons = await self._failures.get(admitted.ticket)  # one worker RPC for the requests ending together
        if reasons:
            raise SteeringNotAppliedError(f"the engine could not apply this request's steering: {reasons}")
        await self._confirm_loaded(admitted.carried)

    async def _ask_failures(self, tickets: Sequence[str]) -> dict[str, str]:
        """Why each ticket's request could not be steered, over every worker (tickets steered fine are absent)."""
        replies: list[dict[str, str]] = await self.llm.collective_rpc("steerserve_failures", args=(list(tickets),))
        reasons: dict[str, set[str]] = {}
        for reply in replies:
            for ticket, reason in reply.items():
                reasons.setdefault(ticket, set()).add(reason)
        return {ticket: "; ".join(sorted(found)) for ticket, found in reasons.items()}

    async def generate(
        self,
        prompt: Prompt,
        sampling_params: Any,
        request_id: str,
        steering: ResolvedSpec | None = None,
        cache_salt: str | None = None,
        lora_request: Any = None,
    ) -> AsyncIterator[Any]:
        """Stream `RequestOutput`s (the library path: benchmarks, extraction); a steered request waits here while
        all config slots are taken, and raises `SteeringNotAppliedError` at its end if it was not steered.
        `lora_request` is vLLM's `LoRARequest` (engines started with `enable_lora`)."""
        spec = steering if steering is not None and not steering.is_noop else None
        inputs: dict[str, Any] = {"prompt": prompt} if isinstance(prompt, str) else {"prompt_token_ids": list(prompt)}
        async with self.steered(spec) as admitted:
            params, salt = sampling_params, cache_salt
            if admitted is not None and spec is not None:
                params = sampling_params.clone()
                params.extra_args = {**(params.extra_args or {}), **admitted.fields}
                salt = spec.cache_salt(cache_salt)
            if salt:
                inputs["cache_salt"] = salt
            async for output in self.llm.generate(inputs, params, request_id, lora_request=lora_request):
                yield output
            await self.verify(admitted)

    def _hold(self, hashes: set[str]) -> None:
        for sha in hashes:
            self._vector_refs[sha] = self._vector_refs.get(sha, 0) + 1

    def _release(self, hashes: set[str]) -> None:
        for sha in hashes:
            self._vector_refs[sha] -= 1
            if self._vector_refs[sha] <= 0:
                del self._vector_refs[sha]

    async def capture(
        self,
        prompt_token_ids: Sequence[int],
        layers: Sequence[int],
        positions: Sequence[int] | None = None,
        pool: str = "none",
        site: str = "residual",
    ) -> Activations:
        """Activations of one prompt at `layers` (all prompt positions when `positions` is None): the residual
        stream after each block, or its MLP output with `site="mlp"`."""
        return await self.activations.run(prompt_token_ids, layers, positions, pool, site=site)

    # ---- helpers for the server (which never imports vLLM or torch) ---------------------------------------
    def sampling_params(
        self,
        *,
        stream: bool = False,
        json_schema: dict[str, Any] | None = None,
        json_object: bool = False,
        **fields: Any,
    ) -> Any:
        """vLLM `SamplingParams` from OpenAI-style fields. A field left None takes the model's default from its
        `generation_config.json` (temperature, top_p, top_k, min_p, penalties), as vLLM's own server does, else
        vLLM's neutral default."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        kwargs = {**self.default_sampling, **{k: v for k, v in fields.items() if v is not None}}
        if json_schema is not None or json_object:
            kwargs["structured_outputs"] = StructuredOutputsParams(
                json=json_schema if json_schema else None, json_object=True if json_object else None
            )
        kwargs["output_kind"] = RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY
        return SamplingParams(**kwargs)

    @functools.cached_property
    def default_sampling(self) -> dict[str, Any]:
        """The model's sampling defaults from its generation config (not its max_new_tokens: the server sizes
        max_tokens to the context)."""
        defaults = dict(self.llm.model_config.get_diff_sampling_param())
        defaults.pop("max_tokens", None)
        return defaults

    def render_chat(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of `messages` through the tokenizer's chat template, ready for the assistant's turn."""
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return [int(i) for i in ids]

    @property
    def max_model_len(self) -> int:
        return int(self.llm.model_config.max_model_len)

    async def check_health(self) -> bool:
        try:
            await self.llm.check_health()
        except Exception:  # noqa: BLE001 - any failure means the engine is not serving
            return False
        return not self.llm.errored

    def shutdown(self, timeout: float | None = None) -> None:
        """Stop the engine. `timeout`: seconds its processes get to exit before they are killed (vLLM's grace
        period when None; 0 kills them at once, for callers with nothing in flight that need no drain)."""
        self.llm.shutdown(timeout=timeout)
