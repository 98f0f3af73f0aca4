"""What one steered (or unsteered) request is counted as, read from the engine's own outputs.

The steered route sets `CURRENT` before it calls vLLM's handler; every `engine_client.generate` stream the
handler opens in that context is followed (`follow_engine_outputs`): the first token's time (from vLLM's request
stats, so a non-streamed answer's TTFT is right too), the gaps between outputs (inter-token latency), and each
choice's text, token ids and finish reason. The four APIs are counted the same way, with no parse of what vLLM
sends the client; the thinking section is split off by the server's own `--reasoning-parser`, as vLLM splits it.
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from steering.reflection import ReflectionCount

if TYPE_CHECKING:
    from server.state import ServerState
    from steering.sources import RequestSteering

logger = logging.getLogger("steerserve.server")
CURRENT: contextvars.ContextVar[Observation | None] = contextvars.ContextVar("steerserve_observation", default=None)


@dataclass
class Generated:
    """One choice as the engine produced it."""

    text: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"


def follow_engine_outputs(engine_client: Any) -> None:
    """Route the engine outputs of every observed request (`CURRENT` set) through its `Observation`. Idempotent."""
    original: Callable[..., AsyncIterator[Any]] = engine_client.generate
    if getattr(original, "_steerserve_follows", False):
        return

    def generate(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        stream = original(*args, **kwargs)
        observation = CURRENT.get()
        if observation is None:
            return stream
        params = kwargs.get("sampling_params", args[1] if len(args) > 1 else None)
        cumulative = getattr(getattr(params, "output_kind", None), "name", "") == "CUMULATIVE"
        return observation.follow(stream, cumulative)

    generate._steerserve_follows = True  # type: ignore[attr-defined]
    engine_client.generate = generate


class Observation:
    """The timing and outcome of one request; `finish` records it once and returns its `steering` object."""

    def __init__(
        self, state: ServerState, chosen: RequestSteering, kind: str, started: float, request: Any = None
    ) -> None:
        self.state = state
        self.chosen = chosen
        self.kind = kind
        self.request = request
        self.started = started
        self.started_wall = time.time()
        self.first: float | None = None  # perf_counter time of the first token
        self.last: float | None = None
        self.gaps: list[float] = []
        self.prompt_tokens = 0
        self.streams: list[dict[int, Generated]] = []  # one per `generate` call (a prompt of a batch)
        self._described: dict[str, Any] | None = None
        state.metrics.running.inc()  # until `finish`

    async def follow(self, outputs: AsyncIterator[Any], cumulative: bool = False) -> AsyncIterator[Any]:
        choices: dict[int, Generated] = {}
        self.streams.append(choices)
        counted_prompt = False
        async for output in outputs:
            now = time.perf_counter()
            if self.first is None:
                self._first_token(output, now)
            elif self.last is not None:
                self.gaps.append(now - self.last)
            self.last = now
            if not counted_prompt and output.prompt_token_ids is not None:
                self.prompt_tokens += len(output.prompt_token_ids)
                counted_prompt = True
            for completion in output.outputs:
                generated = choices.get(completion.index)
                if generated is None:
                    generated = choices[completion.index] = Generated()
                if cumulative:  # every output holds the whole text so far
                    generated.text = [completion.text]
                    generated.token_ids = list(completion.token_ids)
                else:  # DELTA (streamed) or FINAL_ONLY (one output)
                    generated.text.append(completion.text)
                    generated.token_ids.extend(completion.token_ids)
                generated.finish_reason = completion.finish_reason
            yield output

    def _first_token(self, output: Any, now: float) -> None:
        """vLLM's request stats give the first token's time (arrival + first-token latency, on the wall clock)
        even when the answer came as one final output; else the time the first output with tokens arrived."""
        stats: Any = getattr(output, "metrics", None)
        latency = float(getattr(stats, "first_token_latency", 0.0) or 0.0)
        if latency > 0:
            self.first = self.started + (float(stats.arrival_time) + latency - self.started_wall)
        elif any(getattr(o, "token_ids", None) for o in output.outputs):
            self.first = now

    def finish(self, status: str) -> dict[str, Any]:
        if self._described is not None:
            return self._described
        chosen, m, reasoning = self.chosen, self.state.metrics, self.state.reasoning
        m.running.dec()
        labels = ("true" if chosen.steered else "false", chosen.label)
        latency = time.perf_counter() - self.started
        choices = [g for stream in self.streams for _, g in sorted(stream.items())]
        m.requests.labels(*labels, status).inc()
        m.e2e.labels(*labels).observe(latency)
        if self.first is not None:
            m.ttft.labels(*labels).observe(max(0.0, self.first - self.started))
        itl = m.itl.labels(*labels)
        for gap in self.gaps:
            itl.observe(gap)
        m.prompt_tokens.labels(*labels).inc(self.prompt_tokens)
        m.generation_tokens.labels(*labels).inc(sum(len(g.token_ids) for g in choices))
        split = self.kind != "completions"  # vLLM splits thinking off chat, responses and messages only
        counts = [
            ReflectionCount.of(*(reasoning.split(text, self.request) if split else ("", text)))
            for text in ("".join(g.text) for g in choices)
        ]
        arm_labels = (chosen.label, chosen.arm_label)
        if split:
            m.reasoning_tokens.labels(*arm_labels).inc(sum(reasoning.tokens(g.token_ids) for g in choices))
        for count, generated in zip(counts, choices, strict=True):
            m.responses.labels(*arm_labels).inc()
            if count.reflected:
                m.responses_with_reflection.labels(*arm_labels).inc()
            m.reflection_markers.labels(*arm_labels, "reasoning").inc(count.reasoning)
            m.reflection_markers.labels(*arm_labels, "content").inc(count.content)
            m.completion_tokens_per_response.labels(*arm_labels).observe(len(generated.token_ids))
            if status == "success" and chosen.experiment and chosen.arm:
                self.state.experiments.record(
                    chosen.experiment, chosen.arm, len(generated.token_ids), latency, count.total, generated.truncated
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
