"""Reflection keywords (the seed paper's list) and counting them in text."""

from __future__ import annotations

import re
from dataclasses import dataclass

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
