"""Thinking sections: split `<think>…</think>` into `reasoning_content` (whole or streamed) and count it.

As vLLM's reasoning parsers do, the markers are configurable. When the chat template itself opens the section
(R1's does), the caller passes the output with the start marker prepended; otherwise an output without a
start marker has no thinking section. Reflection keywords are counted inside and outside the section.
"""

from __future__ import annotations

from dataclasses import dataclass

from steering.extract.keywords import ReflectionCount


@dataclass(frozen=True)
class ReasoningMarkers:
    start: str = "<think>"
    end: str = "</think>"


def split_reasoning(text: str, markers: ReasoningMarkers) -> tuple[str | None, str]:
    """(reasoning, content) of a finished output; reasoning None when the output has no thinking section."""
    stripped = text.lstrip("\n")
    if not stripped.startswith(markers.start):
        return None, text
    body = stripped[len(markers.start) :]
    end = body.find(markers.end)
    if end == -1:  # still thinking when generation stopped
        return body.strip("\n"), ""
    return body[:end].strip("\n"), body[end + len(markers.end) :].lstrip("\n")


def reflection_of(text: str, markers: ReasoningMarkers | None) -> ReflectionCount:
    if markers is None:
        return ReflectionCount.of(None, text)
    reasoning, content = split_reasoning(text, markers)
    return ReflectionCount.of(reasoning, content)


class StreamingSplitter:
    """Incremental split of a streamed output into reasoning and content deltas (`opened`: the prompt already
    opened the thinking section, as R1's chat template does).

    Text that might be the beginning of a marker is held back until the next delta decides it, so a marker
    split across deltas is never emitted as text.
    """

    def __init__(self, markers: ReasoningMarkers, opened: bool = False) -> None:
        self.markers = markers
        self.state = "reasoning" if opened else "before"  # before | reasoning | content
        self.pending = ""
        self.text = ""
        self._content_started = False

    def feed(self, delta: str, final: bool = False) -> tuple[str, str]:
        """(reasoning delta, content delta) for one text delta."""
        self.text += delta
        buffer = self.pending + delta
        self.pending = ""
        reasoning, content = [], []
        while buffer:
            if self.state == "before":
                stripped = buffer.lstrip("\n")
                if stripped.startswith(self.markers.start):
                    buffer = stripped[len(self.markers.start) :].lstrip("\n")
                    self.state = "reasoning"
                    continue
                if not final and (not stripped or self.markers.start.startswith(stripped)):
                    self.pending = buffer
                    break
                self.state = "content"
                continue
            marker = self.markers.end if self.state == "reasoning" else None
            if marker is None:
                if not self._content_started and self.state == "content" and self.markers.end in self.text:
                    buffer = buffer.lstrip("\n")  # the newlines after the end marker, as in the whole split
                    if not buffer:
                        break
                self._content_started = True
                content.append(buffer)
                break
            at = buffer.find(marker)
            if at != -1:
                reasoning.append(buffer[:at])
                buffer = buffer[at + len(marker) :].lstrip("\n")
                self.state = "content"
                continue
            keep = _partial_suffix(buffer, marker) if not final else 0
            reasoning.append(buffer[: len(buffer) - keep])
            self.pending = buffer[len(buffer) - keep :]
            break
        return "".join(reasoning), "".join(content)


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `marker`."""
    for size in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0
