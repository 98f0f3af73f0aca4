"""A fake engine with the SteeringEngine surface steerserve's routes use (router tests run without vLLM)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from steering.admission import ConfigAdmission
from steering.engine import Admitted
from steering.errors import SteeringNotAppliedError
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
    requests: list[Any] = field(default_factory=list)  # vLLM's request objects as its handler got them

    def resolve(self, terms: list[SteeringTerm], lookup: Any) -> ResolvedSpec:
        return resolve_spec(terms, lookup, self.shape, SteeringLimits(), lambda s: self.tokenizer.encode(s))

    not_applied: set[str] = field(default_factory=set)  # config hashes a "worker" fails to steer

    @contextlib.asynccontextmanager
    async def steered(self, spec: ResolvedSpec | None) -> AsyncIterator[Admitted | None]:
        if spec is None or spec.is_noop:
            yield None
            return
        async with self.admission.admit(spec.config_hash) as slot:
            self.held.append(spec.config_hash)
            ticket = f"ticket-{len(self.held)}"
            yield Admitted(slot, ticket, spec.engine_fields(slot, ticket))

    async def verify(self, admitted: Admitted | None) -> None:
        if admitted is not None and json.loads(admitted.fields["steerserve"])["hash"] in self.not_applied:
            raise SteeringNotAppliedError("the engine could not apply this request's steering: forced in a test")
