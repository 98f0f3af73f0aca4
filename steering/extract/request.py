"""What an extraction job is asked to do (shared by the HTTP API and the CLI)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from steering.vectors import VectorDefaults


class TraceIn(BaseModel):
    """One reasoning trace: the prompt (rendered with the chat template unless `raw`) and the model's completion."""

    model_config = ConfigDict(extra="forbid")
    prompt: str
    completion: str


class ExtractionRequest(BaseModel):
    """One contrast and how to turn it into a stored vector. Exactly one contrast: texts, traces or problems."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(description="Vector id to store the result under (a new version if it exists).")
    method: Literal["diffmean", "pca", "probe"] = Field(
        default="diffmean",
        description="diffmean (the seed paper's), pca, or probe (a logistic probe's weights: the best gate for a "
        "`condition`).",
    )
    site: Literal["residual", "mlp"] = Field(
        default="residual",
        description="Where activations are read: the residual stream after the block, or the block's MLP output.",
    )
    layers: list[int] | None = Field(
        default=None, description="Layers to store; default: the scan's recommended layer. -1 = last."
    )
    positive: list[str] | None = Field(default=None, description="Contrast (a): texts of the behaviour.")
    negative: list[str] | None = Field(default=None, description="Contrast (a): texts without it.")
    text_pool: Literal["mean", "last"] = Field(default="mean", description="Contrast (a): how a text becomes a row.")
    traces: list[TraceIn] | None = Field(default=None, description="Contrast (b): reasoning traces.")
    problems: list[str] | None = Field(
        default=None, description="Contrast (b): problems the served model solves to make the traces."
    )
    samples_per_problem: int = Field(default=1, ge=1, le=64)
    temperature: float | None = Field(
        default=None, ge=0.0, le=2.0, description="Sampling temperature of generated traces (None: the model's)."
    )
    max_tokens: int = Field(default=512, ge=1, le=32768)
    raw: bool = Field(default=False, description="Traces/problems are prompts as-is, not chat messages.")
    horizon: int = Field(default=50, ge=1, description="No keyword within this many tokens after a delimiter.")
    max_positions: int = Field(default=4000, ge=2, le=100_000, description="Rows kept per class.")
    seed: int = 0
    description: str = ""
    defaults: VectorDefaults = Field(default_factory=lambda: VectorDefaults(op="project", site="mlp"))

    @model_validator(mode="after")
    def _one_contrast(self) -> ExtractionRequest:
        kinds = [
            name
            for name, present in (
                ("texts", self.positive is not None or self.negative is not None),
                ("traces", self.traces is not None),
                ("problems", self.problems is not None),
            )
            if present
        ]
        if len(kinds) != 1:
            raise ValueError("give exactly one contrast: positive+negative texts, traces, or problems")
        if kinds[0] == "texts" and not (self.positive and self.negative):
            raise ValueError("a text contrast needs non-empty positive and negative lists")
        if kinds[0] == "traces" and not self.traces:
            raise ValueError("traces must not be empty")
        if kinds[0] == "problems" and not self.problems:
            raise ValueError("problems must not be empty")
        return self

    @property
    def contrast(self) -> str:
        return "texts" if self.positive is not None else "traces" if self.traces is not None else "problems"
