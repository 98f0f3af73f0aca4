"""A fake engine with the SteeringEngine surface the server uses (router tests run without vLLM)."""

from __future__ import annotations

import asyncio
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

    def apply_chat_template(self, messages: list[dict[str, str]], **_: Any) -> list[int]:
        return self.encode("".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>")


@dataclass
class FakeCompletion:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None
    logprobs: Any = None


@dataclass
class FakeOutput:
    outputs: list[FakeCompletion]
    prompt_logprobs: Any = None
    num_cached_tokens: int = 0


@dataclass
class FakeEngine:
    shape: ModelShape = field(default_factory=lambda: ModelShape(num_layers=4, hidden_size=8, vocab_size=256))
    tokenizer: CharTokenizer = field(default_factory=CharTokenizer)
    admission: ConfigAdmission = field(default_factory=lambda: ConfigAdmission(4))
    max_model_len: int = 64
    delay: float = 0.0
    healthy: bool = True
    seen: list[tuple[list[int], dict[str, Any], str | None]] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)

    def resolve(self, terms: list[SteeringTerm], lookup: Any) -> ResolvedSpec:
        return resolve_spec(terms, lookup, self.shape, SteeringLimits(), lambda s: self.tokenizer.encode(s))

    def sampling_params(self, **fields: Any) -> dict[str, Any]:
        if fields.get("temperature") == 1.99:
            raise ValueError("temperature 1.99 is refused by the fake engine")
        return fields

    def render_chat(self, messages: list[dict[str, str]]) -> list[int]:
        return self.tokenizer.apply_chat_template(messages)

    async def generate(
        self, prompt: list[int], params: dict[str, Any], request_id: str, steering: ResolvedSpec | None
    ) -> AsyncIterator[FakeOutput]:
        """Emits 'a'*n unsteered, or the first letter of the config hash when steered."""
        self.seen.append((prompt, params, steering.config_hash if steering else None))
        letter = steering.config_hash[0] if steering else "a"
        count = params.get("max_tokens") or 16
        stream = params.get("stream")
        try:
            for i in range(count):
                if self.delay:
                    await asyncio.sleep(self.delay)
                done = i == count - 1
                if stream:
                    outs = [
                        FakeCompletion(k, letter, [ord(letter)], "length" if done else None)
                        for k in range(params.get("n", 1))
                    ]
                    yield FakeOutput(outs)
            if not stream:
                outs = [
                    FakeCompletion(k, letter * count, [ord(letter)] * count, "length")
                    for k in range(params.get("n", 1))
                ]
                yield FakeOutput(outs)
        except asyncio.CancelledError:
            self.aborted.append(request_id)
            raise

    async def check_health(self) -> bool:
        return self.healthy

    @staticmethod
    def vllm_version() -> str:
        return "fake"
