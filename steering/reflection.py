"""Reflection keywords (the seed paper's list), counting them in text, and splitting a response's thinking
section off as the server's `--reasoning-parser` does."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

REFLECTION_KEYWORDS: tuple[str, ...] = (
    "wait",
    "re-check",
    "recheck",
    "rethink",
    "re-think",
    "reconsider",
    "re-consider",
    "re-evaluat",
    "reevaluat",
    "re-examine",
    "reexamine",
    "check again",
    "try again",
    "think again",
    "consider again",
    "evaluate again",
    "examine again",
)
logger = logging.getLogger("steerserve")
_PATTERN = re.compile("|".join(re.escape(k) for k in sorted(REFLECTION_KEYWORDS, key=len, reverse=True)))


def keyword_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of non-overlapping keyword matches (lower-cased substring match, as in the paper)."""
    return [m.span() for m in _PATTERN.finditer(text.lower())]


def count_markers(text: str) -> int:
    return len(keyword_spans(text))


@dataclass(frozen=True)
class ReflectionCount:
    """Keyword markers of one response, inside and outside its thinking section."""

    reasoning: int = 0
    content: int = 0

    @property
    def total(self) -> int:
        return self.reasoning + self.content

    @property
    def reflected(self) -> bool:
        return self.total > 0

    @classmethod
    def of(cls, reasoning: str | None, content: str | None) -> ReflectionCount:
        return cls(count_markers(reasoning or ""), count_markers(content or ""))


class Reasoning:
    """The served `--reasoning-parser` (none: every token is content): vLLM's own split and token count."""

    def __init__(self, parser: Any = None) -> None:
        self.parser = parser

    @classmethod
    def of(cls, name: str | None, engine_client: Any) -> Reasoning:
        if not name or engine_client is None:
            return cls()
        from vllm.parser import ParserManager

        parser_cls = ParserManager.get_reasoning_parser(name)
        if parser_cls is None:
            return cls()
        return cls(parser_cls(engine_client.renderer.tokenizer, model_config=engine_client.model_config))

    def split(self, text: str, request: Any) -> tuple[str, str]:
        if self.parser is None:
            return "", text
        try:
            reasoning, content = self.parser.extract_reasoning(text, request)
        except Exception:  # noqa: BLE001 - a parser that reads chat-only fields, given another API's request
            logger.debug("the reasoning parser cannot split a %s answer: counted as content", type(request).__name__)
            return "", text
        return reasoning or "", content or ""

    def tokens(self, token_ids: Sequence[int]) -> int:
        return int(self.parser.count_reasoning_tokens(token_ids)) if self.parser is not None else 0
