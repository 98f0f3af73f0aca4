"""Datasets for A/B runs: the bundled demo model's problem sets (`clients/data`), plain JSONL, and MATH-500 /
GSM8K in their published layouts (MATH-500: HuggingFaceH4/MATH-500 `test.jsonl` with `problem`/`answer`;
GSM8K: openai/gsm8k `test.jsonl` with `question` and an `answer` ending in `#### <number>`)."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

FORMATS = ("auto", "jsonl", "math500", "gsm8k")
DATA = Path(__file__).resolve().parents[1] / "data"


@dataclass(frozen=True)
class Item:
    id: str
    prompt: str
    answer: str


def demo_items(limit: int, split: str = "eval", seed: int = 0) -> list[Item]:
    """Problems of the demo model's `eval` split (held out from its training and extraction: the A/B set) or its
    `extract` split (for extracting vectors), as the toy's generator wrote them (`python -m research.toy.package
    --model-dir . --write-problems-to clients/data`). Seed 0: the first `limit` rows; another seed: a seeded
    sample of them."""
    rows = _rows(DATA / f"demo_{split}.jsonl")
    if limit > len(rows):
        raise ValueError(f"the demo {split} set has {len(rows)} problems; asked for {limit}")
    picked = rows[:limit] if seed == 0 else random.Random(seed).sample(rows, limit)
    return [Item(str(r["id"]), str(r["prompt"]), str(r["answer"])) for r in picked]


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
