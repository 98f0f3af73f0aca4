"""Pydantic models of the OpenAI-compatible surface and of the steering admin API."""

from __future__ import annotations

import logging
import math
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from steering.spec import SteeringTerm

logger = logging.getLogger("steerserve.server")

# OpenAI fields this server does not implement: a 400 naming the field, never a silent ignore.
UNSUPPORTED_FIELDS = (
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "parallel_tool_calls",
    "audio",
    "modalities",
    "prediction",
    "web_search_options",
    "suffix",
    "store",
    "metadata",
    "service_tier",
    "reasoning_effort",
)
SteeringField = Union[list[SteeringTerm], str, None]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False
    continuous_usage_stats: bool = False


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


class SamplingFields(BaseModel):
    """Fields shared by completions and chat completions."""

    model_config = ConfigDict(extra="allow")

    model: str
    n: int = Field(default=1, ge=1, le=16)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = None
    user: str | None = None
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    response_format: ResponseFormat | None = None
    # vLLM's common extras
    top_k: int | None = Field(default=None, ge=-1)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(default=None, gt=0.0)
    ignore_eos: bool = False
    min_tokens: int = Field(default=0, ge=0)
    stop_token_ids: list[int] | None = None
    # steering
    steering: SteeringField = Field(default=None, description="A list of steering terms, or the name of a preset.")
    experiment: str | None = Field(default=None, description="Join this A/B experiment (it picks the steering).")

    @field_validator("temperature", "top_p", "presence_penalty", "frequency_penalty", "min_p", "repetition_penalty")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _bias(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for key, bias in (value or {}).items():
            if not key.lstrip("-").isdigit() or not -100 <= bias <= 100:
                raise ValueError("keys must be token ids and values within [-100, 100]")
        return value

    def extra_field_problem(self) -> str | None:
        """The first unknown field we must refuse (unsupported OpenAI field, or a misspelt steering field)."""
        extra = self.model_extra or {}
        for name, value in extra.items():
            if name in UNSUPPORTED_FIELDS and value is not None:
                return name
            if name.lower().startswith("steer"):
                return name
        if extra:
            logger.info("ignoring unknown request fields: %s", ", ".join(sorted(extra)))
        return None


class CompletionRequest(SamplingFields):
    prompt: Union[str, list[str], list[int], list[list[int]]]
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=20)
    best_of: int | None = Field(default=None, ge=1, le=1)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "developer"]
    content: Union[str, list[dict[str, Any]], None] = None

    def text(self) -> str:
        if isinstance(self.content, str) or self.content is None:
            return self.content or ""
        parts = []
        for part in self.content:
            if part.get("type") != "text":
                raise ValueError(f"content part type {part.get('type')!r} is not supported (text only)")
            parts.append(str(part.get("text", "")))
        return "".join(parts)


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    max_reasoning_tokens: int | None = Field(
        default=None, ge=1, description="Thinking budget: at this many tokens the thinking section is closed."
    )


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = False

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' or 'messages'")
        return self


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    tokens: list[int]


class VectorDefaultsBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    op: Literal["add", "project", "clamp"] = "add"
    site: Literal["residual", "mlp", "attn"] = "residual"
    positions: Literal["all", "prompt", "generated", "last_prompt"] = "all"
    strength: float = 1.0
    layers: list[int] | None = None


class VectorUpload(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    layers: dict[str, str] = Field(min_length=1, description="layer index -> base64 little-endian float32")
    description: str = Field(default="", max_length=4096)
    defaults: VectorDefaultsBody | None = None
    provenance: dict[str, Any] = Field(default_factory=dict)


class VectorImport(BaseModel):
    """The form fields of `POST /v1/steering/vectors/import` besides the file."""

    model_config = ConfigDict(extra="forbid")
    id: str
    format: Literal["safetensors", "gguf", "npy"] | None = Field(default=None, description="default: detected")
    layer: int | None = Field(default=None, description="the layer of a 1-D .npy array")
    description: str = Field(default="", max_length=4096)
    defaults: VectorDefaultsBody | None = None


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
