"""A thinking budget (`max_reasoning_tokens`): when the thinking section reaches the budget, close it and let
the answer follow, in two engine calls that share the prefix cache.

Phase 1 generates at most `budget` tokens. If it stopped for length with tokens left, phase 2 continues from
prompt + phase 1 (+ the end marker, when the section is still open) for the rest of `max_tokens`; an output
that never opened a thinking section just goes on. The caller
gets the same shapes it gets from the engine: deltas when streaming, one final output otherwise.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Piece:
    """The fields of a vLLM `CompletionOutput` the server reads."""

    index: int = 0
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: Any = None
    finish_reason: str | None = None


@dataclass
class Step:
    outputs: list[Piece]
    prompt_logprobs: Any = None


Generate = Callable[[list[int], Any, str], AsyncIterator[Any]]


async def generate_with_budget(
    generate: Generate,
    prompt: list[int],
    params: Any,
    request_id: str,
    budget: int,
    close_ids: list[int],
    close_text: str,
    markers: tuple[str, str],
    opened: bool,
    stream: bool,
) -> AsyncIterator[Step]:
    total = int(params.max_tokens)
    first = params.clone()
    first.max_tokens = min(budget, total)
    ids: list[int] = []
    text = ""
    finish: str | None = None
    async for output in generate(prompt, first, request_id):
        out = output.outputs[0]
        new_ids = list(out.token_ids)
        if stream:
            ids += new_ids
            text += out.text
            finish = out.finish_reason
            if finish == "length" and len(ids) < total:
                piece = Piece(0, out.text, new_ids, None, None)  # not the end: the answer follows
            else:
                piece = Piece(0, out.text, new_ids, None, finish)
            yield Step([piece])
        else:
            ids, text, finish = new_ids, out.text, out.finish_reason
    if finish != "length" or len(ids) >= total:
        if not stream:
            yield Step([Piece(0, text, ids, None, finish)])
        return
    start_marker, end_marker = markers
    thinking = (opened or text.lstrip("\n").startswith(start_marker)) and end_marker not in text
    forced_ids = list(close_ids) if thinking else []  # not thinking (or done): the answer just goes on
    forced_text = close_text if thinking else ""
    rest = total - len(ids) - len(forced_ids)
    if rest <= 0:
        if stream:
            yield Step([Piece(0, forced_text, forced_ids, None, "length")])
        else:
            yield Step([Piece(0, text + forced_text, ids + forced_ids, None, "length")])
        return
    if stream and forced_ids:
        yield Step([Piece(0, forced_text, forced_ids, None, None)])
    second = params.clone()
    second.max_tokens = rest
    tail_ids: list[int] = []
    tail_text = ""
    tail_finish: str | None = None
    async for output in generate(prompt + ids + forced_ids, second, f"{request_id}-answer"):
        out = output.outputs[0]
        if stream:
            yield Step([Piece(0, out.text, list(out.token_ids), None, out.finish_reason)])
        else:
            tail_ids, tail_text, tail_finish = list(out.token_ids), out.text, out.finish_reason
    if not stream:
        yield Step([Piece(0, text + forced_text + tail_text, ids + forced_ids + tail_ids, None, tail_finish)])
