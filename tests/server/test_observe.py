"""A request is counted from the engine outputs vLLM's handler reads: streamed deltas, one final output or
cumulative outputs give the same text, tokens and truncation; vLLM's own reasoning parser splits the thinking
section off (chat, responses, messages; never completions)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
from vllm.sampling_params import RequestOutputKind, SamplingParams

from server.metrics import ServerMetrics
from server.observe import Observation, follow_engine_outputs
from steering.reflection import Reasoning
from steering.sources import RequestSteering

THINK = "<think>Wait, re-check.</think>Answer: 4, wait"


class Vocab:
    """The little of a tokenizer vLLM's reasoning parsers read at construction."""

    def get_vocab(self) -> dict[str, int]:
        return {"<think>": 1, "</think>": 2}


class Client:
    """An engine client whose `generate` replays `outputs` (lists of (index, text, token_ids, finish))."""

    def __init__(self, outputs: list[list[tuple[int, str, list[int], str | None]]]) -> None:
        self.outputs = outputs
        self.renderer = SimpleNamespace(tokenizer=Vocab())
        self.model_config = None

    async def generate(self, prompt: Any, sampling_params: Any, request_id: str) -> AsyncIterator[Any]:
        for i, step in enumerate(self.outputs):
            completions = [SimpleNamespace(index=x, text=t, token_ids=ids, finish_reason=f) for x, t, ids, f in step]
            yield SimpleNamespace(prompt_token_ids=[7, 8, 9] if i == 0 else None, outputs=completions, metrics=None)


class Tallies:
    def __init__(self) -> None:
        self.recorded: list[tuple[Any, ...]] = []

    def record(self, *args: Any) -> None:
        self.recorded.append(args)


def observe(kind: str, client: Client, output_kind: RequestOutputKind, parser: str | None = "deepseek_r1") -> Any:
    metrics = ServerMetrics(registry=__import__("prometheus_client").CollectorRegistry())
    state = SimpleNamespace(metrics=metrics, reasoning=Reasoning.of(parser, client), experiments=Tallies())
    chosen = RequestSteering(None, experiment="e", arm="a")
    observation = Observation(state, chosen, kind, 0.0)  # type: ignore[arg-type]
    follow_engine_outputs(client)

    async def run() -> None:
        from server.observe import CURRENT

        CURRENT.set(observation)
        async for _ in client.generate("p", SamplingParams(output_kind=output_kind), "r"):
            pass

    asyncio.run(run())
    return observation, observation.finish("success"), state.experiments.recorded


DELTAS = [[(0, THINK[i : i + 7], [1] if i == 0 else [5], None)] for i in range(0, len(THINK), 7)]
DELTAS[-1] = [(0, DELTAS[-1][0][1], [6], "length")]
TOKENS = [token for step in DELTAS for token in step[0][2]]


@pytest.mark.parametrize(
    ("output_kind", "outputs"),
    [
        (RequestOutputKind.DELTA, DELTAS),
        (RequestOutputKind.FINAL_ONLY, [[(0, THINK, TOKENS, "length")]]),
        (
            RequestOutputKind.CUMULATIVE,
            [[(0, THINK[: 7 * (i + 1)], TOKENS[: i + 1], DELTAS[i][0][3])] for i in range(len(DELTAS))],
        ),
    ],
)
def test_streamed_final_and_cumulative_count_the_same(output_kind: RequestOutputKind, outputs: Any) -> None:
    observation, steering, recorded = observe("chat", Client(outputs), output_kind)
    assert steering["reflection"] == {
        "markers": 3,
        "markers_reasoning": 2,
        "markers_content": 1,
        "responses_with_reflection": 1,
        "per_choice": [3],
    }
    assert observation.prompt_tokens == 3
    assert recorded == [("e", "a", len(TOKENS), pytest.approx(recorded[0][3]), 3, True)]  # truncated: "length"


def test_completions_are_all_content_and_no_parser_means_no_split() -> None:
    _, completions, _ = observe("completions", Client([[(0, THINK, [1, 5, 2, 6], "stop")]]), RequestOutputKind.DELTA)
    _, plain, _ = observe("chat", Client([[(0, THINK, [1, 5, 2, 6], "stop")]]), RequestOutputKind.DELTA, parser=None)
    for steering in (completions, plain):
        assert steering["reflection"]["markers_content"] == 3 and steering["reflection"]["markers_reasoning"] == 0


def test_choices_are_kept_apart_in_index_order() -> None:
    outputs = [[(1, "wait wait", [5, 5], None)], [(0, "fine", [5], "stop")], [(1, "", [], "length")]]
    _, steering, recorded = observe("chat", Client(outputs), RequestOutputKind.DELTA, parser=None)
    assert steering["reflection"]["per_choice"] == [0, 2]
    assert [(r[2], r[4], r[5]) for r in recorded] == [(1, 0, False), (2, 2, True)]


def test_reasoning_tokens_are_vllms_count() -> None:
    reasoning = Reasoning.of("deepseek_r1", Client([]))
    assert reasoning.tokens([1, 5, 5, 2, 6]) == 2
    assert reasoning.split(THINK, None) == ("Wait, re-check.", "Answer: 4, wait")


def test_a_request_is_running_from_its_observation_until_it_finishes_once() -> None:
    metrics = ServerMetrics(registry=__import__("prometheus_client").CollectorRegistry())
    state = SimpleNamespace(metrics=metrics, reasoning=Reasoning(), experiments=Tallies())
    first = Observation(state, RequestSteering(None), "chat", 0.0)  # type: ignore[arg-type]
    second = Observation(state, RequestSteering(None), "chat", 0.0)  # type: ignore[arg-type]
    assert metrics.running._value.get() == 2
    first.finish("success")
    first.finish("success")  # the stream's end and its error path may both finish it: counted once
    assert metrics.running._value.get() == 1
    second.finish("aborted")
    assert metrics.running._value.get() == 0
