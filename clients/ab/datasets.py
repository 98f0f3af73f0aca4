"""Datasets for A/B runs: the bundled toy arithmetic set, plain JSONL, and MATH-500 / GSM8K in their published
layouts (MATH-500: HuggingFaceH4/MATH-500 `test.jsonl` with `problem`/`answer`; GSM8K: openai/gsm8k
`test.jsonl` with `question` and an `answer` ending in `#### <number>`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

FORMATS = ("auto", "jsonl", "math500", "gsm8k")


@dataclass(frozen=True)
class Item:
    id: str
    prompt: str
    answer: str


def demo_items(limit: int, seed: int = 2026) -> list[Item]:
    """Held-out problems of the toy demo model (never in its training or extraction split)."""
    from steering.models.arith import problems

    return [Item(f"demo-{i}", p.text, str(p.answer)) for i, p in enumerate(problems(seed, limit, "eval"))]


def _rows(path: Path) -> list[dict[str, object]]:
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not JSON ({exc})") from None
    return rows


def load_items(source: str, fmt: str = "auto", limit: int | None = None) -> list[Item]:
    """`source` is "demo" or a JSONL path; `fmt` picks the layout (auto: by the fields of the first row)."""
    if source == "demo":
        return demo_items(limit or 1000)
    rows = _rows(Path(source))
    if not rows:
        raise ValueError(f"{source}: no rows")
    if fmt == "auto":
        first = rows[0]
        fmt = "math500" if "problem" in first else "gsm8k" if "question" in first else "jsonl"
    items = []
    for index, row in enumerate(rows[:limit] if limit else rows):
        ident = str(row.get("unique_id") or row.get("id") or index)
        if fmt == "math500":
            items.append(Item(ident, str(row["problem"]), str(row["answer"])))
        elif fmt == "gsm8k":
            answer = str(row["answer"]).rsplit("####", 1)[-1].strip().replace(",", "")
            items.append(Item(ident, str(row["question"]), answer))
        elif fmt == "jsonl":
            items.append(Item(ident, str(row["prompt"]), str(row["answer"])))
        else:
            raise ValueError(f"format must be one of {FORMATS}")
    return items
