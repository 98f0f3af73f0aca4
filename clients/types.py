"""What the steering API returns, as pydantic models (unknown fields kept, so newer servers do not break)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from steering.spec import SteeringTerm
from steering.vectors import VectorDefaults


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class VectorDefaultsInfo(VectorDefaults):
    """`steering.vectors.VectorDefaults` as a server returns them (fields a newer server adds are kept)."""

    model_config = ConfigDict(extra="allow", frozen=True)


class VectorCreated(_Open):
    id: str
    version: int
    sha256: str
    hidden_size: int
    layers: list[int]


class VectorInfo(_Open):
    """A stored version; `GET /vectors/{id}` also lists every version under `versions`."""

    id: str
    version: int
    sha256: str
    hidden_size: int
    layers: list[int]
    defaults: VectorDefaultsInfo = Field(default_factory=VectorDefaultsInfo)
    description: str = ""
    provenance: dict[str, Any] = Field(default_factory=dict)
    created_at: float | None = None
    versions: list[VectorInfo] = Field(default_factory=list)


class Preset(_Open):
    name: str
    steering: list[SteeringTerm]
    description: str = ""


class Arm(_Open):
    name: str
    steering: list[SteeringTerm] | str | None = None
    weight: float = 1.0


class Experiment(_Open):
    name: str
    arms: list[Arm]
    description: str = ""


class ArmReport(_Open):
    name: str
    requests: int = 0
    mean_completion_tokens: float | None = None
    median_completion_tokens: float | None = None
    mean_latency_s: float | None = None
    reflection_rate: float | None = None
    truncation_rate: float | None = None


class ExperimentReport(_Open):
    name: str
    arms: list[ArmReport]


class Job(_Open):
    """An extraction job: `status` queued | running | succeeded | failed; `progress` 0..1."""

    id: str
    status: str
    stage: str = ""
    progress: float = 0.0
    vector_id: str | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None

    @property
    def done(self) -> bool:
        return self.status not in ("queued", "running")


class ApiErrorBody(_Open):
    message: str = ""
    type: str = ""
    param: str | None = None
    code: str | None = None
