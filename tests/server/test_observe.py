"""Each API's response, whole or streamed, read the same way: text by section, truncation, token counts."""

from __future__ import annotations

from typing import Any

import pytest

from server.observe import Texts
from steering.extract.keywords import ReflectionCount

CHAT = {
    "choices": [
        {"index": 0, "message": {"reasoning": "Wait, re-check.", "content": "Answer: 4"}, "finish_reason": "stop"},
        {"index": 1, "message": {"reasoning": None, "content": "wait"}, "finish_reason": "length"},
    ],
    "usage": {"prompt_tokens": 5, "completion_tokens": 9, "completion_tokens_details": {"reasoning_tokens": 4}},
}
RESPONSES = {
    "output": [
        {"type": "reasoning", "content": [{"type": "reasoning_text", "text": "wait, let me reconsider"}]},
        {"type": "message", "content": [{"type": "output_text", "text": "Answer: 4"}]},
    ],
    "status": "incomplete",
    "usage": {"input_tokens": 3, "output_tokens": 7},
}
MESSAGES = {
    "content": [{"type": "thinking", "thinking": "try again"}, {"type": "text", "text": "4, wait"}],
    "stop_reason": "end_turn",
    "usage": {"input_tokens": 2, "output_tokens": 6},
}


def counts(texts: Texts) -> list[tuple[int, int, bool]]:
    found = []
    for choice in texts.choices.values():
        c = ReflectionCount.of(choice.reasoning, choice.content)
        found.append((c.reasoning, c.content, choice.truncated))
    return found


@pytest.mark.parametrize(
    ("kind", "body", "expected", "tokens"),
    [
        ("chat", CHAT, [(2, 0, False), (0, 1, True)], (5, 9, 4)),
        ("responses", RESPONSES, [(2, 0, True)], (3, 7, 0)),
        ("messages", MESSAGES, [(1, 1, False)], (2, 6, 0)),
    ],
)
def test_whole_responses(kind: str, body: dict[str, Any], expected: list[Any], tokens: tuple[int, ...]) -> None:
    texts = Texts.of_response(kind, body)
    assert counts(texts) == expected
    assert (texts.prompt_tokens, texts.completion_tokens, texts.reasoning_tokens) == tokens


def test_streamed_chat_equals_whole() -> None:
    texts = Texts()
    for delta in ({"reasoning": "Wait, "}, {"reasoning": "re-check."}, {"content": "Answer: 4"}):
        texts.feed("chat", {"choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
    texts.feed("chat", {"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]})
    assert counts(texts) == [(2, 0, True)]


def test_streamed_messages_and_responses() -> None:
    texts = Texts()
    for event in (
        {"type": "message_start", "message": {"usage": {"input_tokens": 2}}},
        {"type": "content_block_delta", "delta": {"type": "thinking_delta", "thinking": "try "}},
        {"type": "content_block_delta", "delta": {"type": "thinking_delta", "thinking": "again"}},
        {"type": "content_block_delta", "delta": {"type": "text_delta", "text": "4, wait"}},
        {"type": "message_delta", "delta": {"stop_reason": "max_tokens"}, "usage": {"output_tokens": 6}},
    ):
        texts.feed("messages", event)
    assert counts(texts) == [(1, 1, True)] and (texts.prompt_tokens, texts.completion_tokens) == (2, 6)
    streamed = Texts()
    streamed.feed("responses", {"type": "response.output_text.delta", "delta": "ignored: the final event counts"})
    streamed.feed("responses", {"type": "response.completed", "response": RESPONSES})
    assert counts(streamed) == counts(Texts.of_response("responses", RESPONSES))
