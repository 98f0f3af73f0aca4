"""What one steered (or unsteered) response is counted as: its text as each API returns it, reflection markers
inside and outside the thinking section, our Prometheus families and the experiment tallies."""

from __future__ import annotations

import contextvars
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from steering.extract.keywords import ReflectionCount

if TYPE_CHECKING:
    from server.state import ServerState
    from server.steering_sources import RequestSteering

TRUNCATED = {"length", "max_tokens", "incomplete"}


@dataclass
class Choice:
    reasoning: str = ""
    content: str = ""
    truncated: bool = False
    completion_tokens: int | None = None


@dataclass
class Texts:
    """The choices of one response, from a whole body (`of_response`) or fed event by event (`feed`)."""

    choices: dict[int, Choice] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0  # from vLLM's usage details (a --reasoning-parser is on)
    finished: bool = False

    def choice(self, index: int) -> Choice:
        return self.choices.setdefault(index, Choice())

    def usage(self, usage: dict[str, Any] | None) -> None:
        if not usage:
            return
        self.prompt_tokens = int(usage.get("prompt_tokens", usage.get("input_tokens", self.prompt_tokens)) or 0)
        self.completion_tokens = int(
            usage.get("completion_tokens", usage.get("output_tokens", self.completion_tokens)) or 0
        )
        details = usage.get("completion_tokens_details") or usage.get("output_tokens_details") or {}
        self.reasoning_tokens = int(details.get("reasoning_tokens") or self.reasoning_tokens)

    @classmethod
    def of_response(cls, kind: str, body: dict[str, Any]) -> Texts:
        texts = cls(finished=True)
        texts.usage(body.get("usage"))
        if kind in ("chat", "completions"):
            for c in body.get("choices") or []:
                choice = texts.choice(int(c.get("index", 0)))
                message = c.get("message") or {}
                choice.content = (message.get("content") if kind == "chat" else c.get("text")) or ""
                choice.reasoning = message.get("reasoning_content") or message.get("reasoning") or ""
                choice.truncated = c.get("finish_reason") in TRUNCATED
        elif kind == "responses":
            choice = texts.choice(0)
            for item in body.get("output") or []:
                parts = (item.get("content") or []) + (item.get("summary") or [])
                text = "".join(str(p.get("text") or "") for p in parts if isinstance(p, dict))
                if item.get("type") == "reasoning":
                    choice.reasoning += text
                elif item.get("type") == "message":
                    choice.content += text
            choice.truncated = body.get("status") in TRUNCATED
        else:  # Anthropic messages
            choice = texts.choice(0)
            for block in body.get("content") or []:
                if block.get("type") == "thinking":
                    choice.reasoning += str(block.get("thinking") or "")
                elif block.get("type") == "text":
                    choice.content += str(block.get("text") or "")
            choice.truncated = body.get("stop_reason") in TRUNCATED
        if len(texts.choices) == 1:
            next(iter(texts.choices.values())).completion_tokens = texts.completion_tokens
        return texts

    def feed(self, kind: str, data: dict[str, Any]) -> None:
        """One streamed event's data."""
        if kind in ("chat", "completions"):
            self.usage(data.get("usage"))
            for c in data.get("choices") or []:
                choice = self.choice(int(c.get("index", 0)))
                delta = c.get("delta") or {}
                choice.content += (delta.get("content") if kind == "chat" else c.get("text")) or ""
                choice.reasoning += delta.get("reasoning_content") or delta.get("reasoning") or ""
                if c.get("finish_reason") is not None:
                    choice.truncated = c["finish_reason"] in TRUNCATED
            return
        event = data.get("type")
        if kind == "responses" and event == "response.completed":
            whole = Texts.of_response("responses", data.get("response") or {})
            self.choices, self.prompt_tokens, self.completion_tokens = (
                whole.choices,
                whole.prompt_tokens,
                whole.completion_tokens,
            )
        elif kind == "messages":
            choice = self.choice(0)
            if event == "message_start":
                self.usage((data.get("message") or {}).get("usage"))
            elif event == "content_block_delta":
                delta = data.get("delta") or {}
                choice.content += str(delta.get("text") or "")
                choice.reasoning += str(delta.get("thinking") or "")
            elif event == "message_delta":
                usage = data.get("usage") or {}
                self.completion_tokens = int(usage.get("output_tokens") or self.completion_tokens)
                choice.truncated = (data.get("delta") or {}).get("stop_reason") in TRUNCATED
                choice.completion_tokens = self.completion_tokens


CURRENT: contextvars.ContextVar[Observation | None] = contextvars.ContextVar("steerserve_observation", default=None)


def follow_engine_outputs(engine_client: Any) -> None:
    """Let the request being observed (`CURRENT`, set by the steered route before it calls vLLM's handler) see
    the `RequestOutput`s vLLM's handler reads from `engine_client.generate`: their stats carry the first token's
    time, which a non-streamed answer (generated as one final output) shows nowhere else. Idempotent."""
    original: Callable[..., AsyncIterator[Any]] = engine_client.generate
    if getattr(original, "_steerserve_follows", False):
        return

    def generate(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        stream = original(*args, **kwargs)
        observation = CURRENT.get()
        return stream if observation is None else observation.follow(stream)

    generate._steerserve_follows = True  # type: ignore[attr-defined]
    engine_client.generate = generate


class Observation:
    """The timing and outcome of one request; `finish` records it once and returns its `steering` object."""

    def __init__(self, state: ServerState, chosen: RequestSteering, kind: str, started: float) -> None:
        self.state = state
        self.chosen = chosen
        self.kind = kind
        self.started = started
        self.started_wall = time.time()
        self.first: float | None = None  # perf_counter time of the first token
        self.last: float | None = None
        self.gaps: list[float] = []
        self._described: dict[str, Any] | None = None

    @property
    def finished(self) -> bool:
        return self._described is not None

    async def follow(self, outputs: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for output in outputs:
            self.output(output)
            yield output

    def output(self, output: Any) -> None:
        """One engine output: the first token's time from vLLM's request stats (arrival + first-token latency,
        on the same wall clock), else the time the first output with tokens arrived (stats off)."""
        if self.first is not None:
            return
        stats: Any = getattr(output, "metrics", None)
        latency = float(getattr(stats, "first_token_latency", 0.0) or 0.0)
        if latency > 0:
            self.first = self.started + (float(stats.arrival_time) + latency - self.started_wall)
        elif any(getattr(o, "token_ids", None) for o in getattr(output, "outputs", ())):
            self.first = time.perf_counter()

    def event(self) -> None:
        """A streamed event went out: the gaps between them are the inter-token latencies."""
        now = time.perf_counter()
        if self.last is not None:
            self.gaps.append(now - self.last)
        self.last = now

    def finish(self, status: str, texts: Texts) -> dict[str, Any]:
        if self._described is not None:
            return self._described
        chosen, m = self.chosen, self.state.metrics
        labels = ("true" if chosen.steered else "false", chosen.label)
        latency = time.perf_counter() - self.started
        m.requests.labels(*labels, status).inc()
        m.e2e.labels(*labels).observe(latency)
        if self.first is not None:
            m.ttft.labels(*labels).observe(max(0.0, self.first - self.started))
        for gap in self.gaps:
            m.itl.labels(*labels).observe(gap)
        m.prompt_tokens.labels(*labels).inc(texts.prompt_tokens)
        m.generation_tokens.labels(*labels).inc(texts.completion_tokens)
        counts = [ReflectionCount.of(c.reasoning, c.content) for c in texts.choices.values()]
        arm_labels = (chosen.label, chosen.arm_label)
        m.reasoning_tokens.labels(*arm_labels).inc(texts.reasoning_tokens)
        for count, choice in zip(counts, texts.choices.values(), strict=True):
            m.responses.labels(*arm_labels).inc()
            if count.reflected:
                m.responses_with_reflection.labels(*arm_labels).inc()
            m.reflection_markers.labels(*arm_labels, "reasoning").inc(count.reasoning)
            m.reflection_markers.labels(*arm_labels, "content").inc(count.content)
            if choice.completion_tokens is not None:
                m.completion_tokens_per_response.labels(*arm_labels).observe(choice.completion_tokens)
            if status == "success" and chosen.experiment and chosen.arm:
                tokens = choice.completion_tokens if choice.completion_tokens is not None else 0
                self.state.experiments.record(
                    chosen.experiment, chosen.arm, tokens, latency, count.total, choice.truncated
                )
        body = chosen.describe()
        body["reflection"] = {
            "markers": sum(c.total for c in counts),
            "markers_reasoning": sum(c.reasoning for c in counts),
            "markers_content": sum(c.content for c in counts),
            "responses_with_reflection": sum(c.reflected for c in counts),
            "per_choice": [c.total for c in counts],
        }
        self._described = body
        return body
