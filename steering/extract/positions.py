"""Reflective and non-reflective token positions of a reasoning trace.

Reflective: the token just before a reflection keyword (one per reflection episode: a keyword that starts
within `episode_gap` tokens of the previous one, as in "Wait, let me re-check", adds no position).
Non-reflective: a step delimiter — a token after which the text ends with "\\n\\n" — with no keyword within the
next `horizon` tokens and at least `min_tail` tokens before the end. Only positions at or after `start` (the
first generated token) count, so a prompt never contributes.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

from steering.reflection import keyword_spans


@dataclass(frozen=True)
class TracePositions:
    reflective: list[int]
    non_reflective: list[int]


def token_of_char(token_starts: Sequence[int], char: int) -> int:
    """Index of the token whose span contains `char` (token_starts sorted)."""
    return max(0, bisect.bisect_right(token_starts, char) - 1)


def trace_positions(
    text: str,
    offsets: Sequence[tuple[int, int]],
    start: int = 0,
    horizon: int = 50,
    min_tail: int = 10,
    episode_gap: int = 8,
    delimiter: str = "\n\n",
) -> TracePositions:
    """Positions from the text and its tokens' character offsets (`tokenizer(..., return_offsets_mapping=True)`)."""
    token_starts = [s for s, _ in offsets]
    keyword_tokens: list[int] = []
    for char_start, _ in keyword_spans(text):
        keyword_tokens.append(token_of_char(token_starts, char_start))
    reflective: list[int] = []
    last_kept = -(10**9)
    for token in keyword_tokens:
        if token - last_kept <= episode_gap:
            continue
        last_kept = token
        if token - 1 >= start:
            reflective.append(token - 1)
    keyword_set = sorted(set(keyword_tokens))
    non_reflective: list[int] = []
    count = len(offsets)
    for index in range(start, count - min_tail):
        end = offsets[index][1]
        if offsets[index][0] == end or not text[:end].endswith(delimiter):
            continue
        nxt = bisect.bisect_right(keyword_set, index)
        if nxt < len(keyword_set) and keyword_set[nxt] <= index + horizon:
            continue
        non_reflective.append(index)
    return TracePositions(sorted(set(reflective)), non_reflective)
