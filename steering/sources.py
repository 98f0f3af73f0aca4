"""Where a request's steering comes from, and how the sources combine.

Three ways, one semantics: the body field `steering` (terms, or a preset name), `model` naming a preset, and
the `X-Steering` header (`id[@version][:strength],...`). A preset named by `model` comes first, then the body
or header terms. Body and header together are refused. An experiment (`experiment`, or `model:
experiment/<name>`) picks the steering of one of its arms; `reasoning_budget` adds the budget schedule's terms.
Everything is validated here, in the API process, before the engine sees the request.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from steering.budget import BudgetRule
from steering.errors import BadRequestError, ModelNotFoundError, UnknownVectorError
from steering.experiments import PREFIX as EXPERIMENT_PREFIX
from steering.experiments import Experiments, pick_arm
from steering.spec import ResolvedSpec, SteeringTerm
from steering.store.cache import CachedRegistry
from steering.vectors import SteeringVector

HEADER = "x-steering"
SteeringField = Union[list[SteeringTerm], str, None]  # a request's `steering`: terms, or a preset name


class SteeringFields(BaseModel):
    """steerserve's fields of a generation request's body, beside the API's own."""

    model_config = ConfigDict(extra="ignore")
    steering: SteeringField = None
    experiment: str | None = None
    reasoning_budget: int | None = Field(default=None, ge=1, strict=True)

    @classmethod
    def of(cls, body: Any) -> SteeringFields:
        """The fields of a request body, or a 400 naming the first bad one."""
        try:
            return cls.model_validate(body if isinstance(body, dict) else {})
        except ValidationError as exc:
            first = exc.errors()[0]
            field, *where = [str(p) for p in first.get("loc", ())]
            at = f" at {'.'.join(where)}" if where else ""
            raise BadRequestError(f"{field} is invalid{at}: {first.get('msg')}", param=field) from None


class SpecResolver(Protocol):
    def resolve(self, terms: list[SteeringTerm], lookup: Any) -> ResolvedSpec: ...


@dataclass(frozen=True)
class RequestSteering:
    """The resolved steering of one request and the label it is counted under."""

    spec: ResolvedSpec | None
    preset: str | None = None
    experiment: str | None = None
    arm: str | None = None

    @property
    def steered(self) -> bool:
        return self.spec is not None and not self.spec.is_noop

    @property
    def label(self) -> str:
        if not self.steered:
            return "none"
        return self.preset or "custom"

    @property
    def arm_label(self) -> str:
        return f"{self.experiment}/{self.arm}" if self.experiment else "none"

    def describe(self) -> dict[str, Any]:
        """The response's `steering` object (present on every response; reflection counts are added to it)."""
        base: dict[str, Any] = (
            {**self.spec.describe(), "preset": self.preset}
            if self.steered and self.spec is not None
            else {"config_hash": None, "terms": [], "preset": None}
        )
        if self.experiment:
            base["experiment"] = self.experiment
            base["arm"] = self.arm
        return base

    @property
    def header_value(self) -> str:
        return self.spec.config_hash if self.steered and self.spec is not None else "none"


def parse_header(value: str) -> list[SteeringTerm]:
    """`reflection:-0.5,other@3:0.2` -> terms (strength optional: the vector's default)."""
    terms: list[SteeringTerm] = []
    for index, item in enumerate(part.strip() for part in value.split(",")):
        if not item:
            raise BadRequestError(f"X-Steering item {index} is empty", param="X-Steering")
        ref, _, strength = item.partition(":")
        try:
            number = float(strength) if strength else None
            if number is not None and not math.isfinite(number):
                raise ValueError("strength must be finite")
            terms.append(SteeringTerm(vector=ref.strip(), strength=number))
        except (ValueError, ValidationError) as exc:
            raise BadRequestError(f"X-Steering item {item!r} is invalid: {exc}", param="X-Steering") from None
    return terms


class SteeringSources:
    def __init__(
        self,
        registry: CachedRegistry,
        resolver: SpecResolver,
        served_model: str,
        experiments: Experiments | None = None,
        adapters: Callable[[], Iterable[str]] = tuple,
        budget: BudgetRule | None = None,
    ) -> None:
        self.budget = budget or BudgetRule()
        self.registry = registry
        self.resolver = resolver
        self.served_model = served_model
        self.experiments = experiments
        self.adapters = adapters  # names vLLM serves itself besides the base model (LoRA adapters)

    def served_by_vllm(self, model: str) -> bool:
        """The base model or one of vLLM's LoRA adapters (else a preset or an experiment)."""
        return model == self.served_model or model in set(self.adapters())

    async def for_request(
        self,
        model: str,
        body: list[SteeringTerm] | str | None,
        header: str | None,
        experiment: str | None = None,
        user: str | None = None,
        budget: int | None = None,
    ) -> RequestSteering:
        if budget is not None and (experiment is not None or model.startswith(EXPERIMENT_PREFIX)):
            raise BadRequestError(
                "an experiment chooses the steering: drop 'reasoning_budget'", param="reasoning_budget"
            )
        if model.startswith(EXPERIMENT_PREFIX):
            named = model[len(EXPERIMENT_PREFIX) :]
            if experiment is not None and experiment != named:
                raise BadRequestError("'experiment' and model 'experiment/<name>' disagree", param="experiment")
            experiment = named
        if experiment is not None:
            return await self._experiment(experiment, model, body, header, user)
        if body is not None and header is not None:
            raise BadRequestError("send steering either in the body or in X-Steering, not both", param="steering")
        terms: list[SteeringTerm] = []
        preset_name: str | None = None
        if not self.served_by_vllm(model):
            preset = await self.registry.preset(model)
            if preset is None:
                raise ModelNotFoundError(f"model {model!r} does not exist", param="model")
            preset_name = preset.name
            terms.extend(preset.steering)
        if isinstance(body, str):
            preset = await self.registry.preset(body)
            if preset is None:
                raise BadRequestError(f"unknown steering preset {body!r}", param="steering")
            preset_name = preset_name or preset.name
            terms.extend(preset.steering)
        elif body is not None:
            terms.extend(body)
            if body and preset_name is not None:
                preset_name = None  # a preset plus custom terms is custom steering
        if header is not None:
            terms.extend(parse_header(header))
            preset_name = None
        if budget is not None:
            terms.extend(await self._budget_terms(budget))
            preset_name = None
        if not terms:
            return RequestSteering(None, None)
        spec = await self.resolve_terms(terms)
        return RequestSteering(spec, preset_name)

    async def _experiment(
        self, name: str, model: str, body: list[SteeringTerm] | str | None, header: str | None, user: str | None
    ) -> RequestSteering:
        if self.experiments is None:
            raise BadRequestError("experiments are not enabled on this server", param="experiment")
        if body is not None or header is not None:
            raise BadRequestError(
                "an experiment chooses the steering: drop 'steering' / X-Steering", param="experiment"
            )
        if not self.served_by_vllm(model) and not model.startswith(EXPERIMENT_PREFIX):
            raise BadRequestError("an experiment runs on the base model, not on a preset", param="model")
        doc = await self.experiments.get(name)
        arm = pick_arm(name, doc["arms"], user)
        chosen = await self.for_request(self.served_model, _arm_steering(arm["steering"]), None)
        return RequestSteering(chosen.spec, chosen.preset, experiment=name, arm=str(arm["name"]))

    async def _budget_terms(self, budget: int) -> list[SteeringTerm]:
        preset = await self.registry.preset(self.budget.preset)
        if preset is None:
            raise BadRequestError(
                f"reasoning_budget ramps in the preset {self.budget.preset!r}, which this server does not have "
                "(set STEERSERVE_BUDGET_PRESET)",
                param="reasoning_budget",
            )
        return self.budget.terms(budget, await self.resolve_terms(list(preset.steering)))

    async def resolve_terms(self, terms: list[SteeringTerm]) -> ResolvedSpec:
        try:
            vectors = await self.registry.vectors_for(terms)
        except KeyError as exc:
            raise UnknownVectorError(f"unknown steering vector {exc.args[0]!r}", param="steering") from None

        def lookup(vector_id: str, version: int | None) -> SteeringVector:
            return vectors[(vector_id, version)]

        return self.resolver.resolve(terms, lookup)


def _arm_steering(value: Any) -> list[SteeringTerm] | str | None:
    if value is None or isinstance(value, str):
        return value
    return [SteeringTerm.model_validate(t) for t in value]
