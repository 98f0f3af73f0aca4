"""A fake engine with the SteeringEngine surface steerserve's routes use (router tests run without vLLM)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from steering.admission import ConfigAdmission
from steering.spec import ModelShape, ResolvedSpec, SteeringLimits, SteeringTerm, resolve_spec


class CharTokenizer:
    """One token per character (ids = code points % 256)."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [ord(c) % 256 for c in text]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(chr(i) for i in ids)


@dataclass
class FakeEngine:
    shape: ModelShape = field(default_factory=lambda: ModelShape(num_layers=4, hidden_size=8, vocab_size=256))
    tokenizer: CharTokenizer = field(default_factory=CharTokenizer)
    admission: ConfigAdmission = field(default_factory=lambda: ConfigAdmission(4))
    max_model_len: int = 64
    seen: list[tuple[str | None, dict[str, Any], str | None]] = field(default_factory=list)  # (model, xargs, salt)
    held: list[str] = field(default_factory=list)  # config hashes admitted, in order

    def resolve(self, terms: list[SteeringTerm], lookup: Any) -> ResolvedSpec:
        return resolve_spec(terms, lookup, self.shape, SteeringLimits(), lambda s: self.tokenizer.encode(s))

    @contextlib.asynccontextmanager
    async def steered(self, spec: ResolvedSpec | None) -> AsyncIterator[None]:
        if spec is None or spec.is_noop:
            yield
            return
        async with self.admission.admit(spec.config_hash):
            self.held.append(spec.config_hash)
            yield
