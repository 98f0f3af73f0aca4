"""Thinking-section split: whole outputs, every streaming chunking, and reflection counts per section."""

from __future__ import annotations

import pytest

from server.reasoning import ReasoningMarkers, StreamingSplitter, reflection_of, split_reasoning
from steering.extract.keywords import count_markers

M = ReasoningMarkers()
CASES = [
    (
        "<think>\n1+2=3\n\nWait, let me re-check: 3.\n\n</think>\nAnswer: 3",
        ("1+2=3\n\nWait, let me re-check: 3.", "Answer: 3"),
    ),
    ("no thinking here", (None, "no thinking here")),
    ("<think>\nstill going", ("still going", "")),
    (
        "<think>reasoned in a template-opened section</think>\n\nfinal",
        ("reasoned in a template-opened section", "final"),
    ),
    ("text before <think>x</think> is content", (None, "text before <think>x</think> is content")),
    ("<think></think>answer", ("", "answer")),
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_split_whole_output(text: str, expected: tuple[str | None, str]) -> None:
    assert split_reasoning(text, M) == expected


@pytest.mark.parametrize(("text", "expected"), CASES)
@pytest.mark.parametrize("size", [1, 2, 3, 5, 8, 1000])
def test_streaming_split_equals_whole_split_for_any_chunking(
    text: str, expected: tuple[str | None, str], size: int
) -> None:
    splitter = StreamingSplitter(M)
    reasoning, content = "", ""
    chunks = [text[i : i + size] for i in range(0, len(text), size)]
    for i, chunk in enumerate(chunks):
        r, c = splitter.feed(chunk, final=i == len(chunks) - 1)
        reasoning, content = reasoning + r, content + c
    assert reasoning.strip("\n") == (expected[0] or "")
    assert content == expected[1]


def test_streaming_with_template_opened_section() -> None:
    splitter = StreamingSplitter(M, opened=True)
    out = [splitter.feed(x) for x in ("thinking ", "hard</th", "ink>\nAnswer")] + [splitter.feed("", final=True)]
    assert "".join(r for r, _ in out) == "thinking hard" and "".join(c for _, c in out) == "Answer"


def test_reflection_counts_by_section() -> None:
    text = "<think>\nWait, let me re-check. Let me think again.\n</think>\nWait: the answer is 3"
    count = reflection_of(text, M)
    assert (count.reasoning, count.content, count.total, count.reflected) == (3, 1, 4, True)
    assert count_markers("Reconsider, RE-EXAMINE and reevaluate") == 3
    assert not reflection_of("plain answer", None).reflected
