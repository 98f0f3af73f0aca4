"""Pydantic models of steerserve's own routes (the registry). Generation requests are vLLM's own models."""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from steering.spec import SteeringTerm
from steering.vectors import VectorDefaults

SteeringField = Union[list[SteeringTerm], str, None]  # a request's `steering`: terms, or a preset name


class VectorUpload(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    layers: dict[str, str] = Field(min_length=1, description="layer index -> base64 little-endian float32")
    description: str = Field(default="", max_length=4096)
    defaults: VectorDefaults | None = None
    provenance: dict[str, Any] = Field(default_factory=dict)


class VectorImport(BaseModel):
    """The form fields of `POST /v1/steering/vectors/import` besides the file."""

    model_config = ConfigDict(extra="forbid")
    id: str
    format: Literal["safetensors", "gguf", "npy"] | None = Field(default=None, description="default: detected")
    layer: int | None = Field(default=None, description="the layer of a 1-D .npy array")
    description: str = Field(default="", max_length=4096)
    defaults: VectorDefaults | None = None


class VectorCreated(BaseModel):
    id: str
    version: int
    sha256: str
    hidden_size: int
    layers: list[int]


class PresetBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    steering: list[SteeringTerm] = Field(min_length=1)
    description: str = Field(default="", max_length=4096)
