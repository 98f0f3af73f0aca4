"""Does the toy notice its slips? A teacher-forced probe of the demo model, cheap enough to log during training.

On held-out traces, the model's probability that the next line starts a reflection ("Wait") is read at the
``\\n\\n`` that ends each step line, and averaged by kind of step: a slip (a hard step with its carry forgotten),
a drill's shown error (an easy step written wrong), a right hard step and a right easy step. A model that
notices its slips puts far more weight on "Wait" after a slip than after a right hard step; one that does not
reflects at the same rate after both, and then reflecting more (steering up) catches few extra slips.
``python -m research.toy.probe --model-dir steering/models/demo`` measures a saved model.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, NamedTuple

import typer

from research.toy.arith import Trace, TraceStyle, is_hard, problems, trace

STEP_LINE = re.compile(r"(\d+)([+-])(\d+)=(\d+)\n\n")
KINDS = ("slip", "drill", "right_hard", "right_easy")


def step_lines(text: str) -> list[tuple[re.Match[str], str]]:
    """Each step line of a trace's `text` (its `STEP_LINE` match) and the step's kind."""
    out: list[tuple[re.Match[str], str]] = []
    for match in STEP_LINE.finditer(text):
        if match.start() > 0 and text[match.start() - 1] != "\n":
            continue  # a number inside a re-check line, not a step line
        a, op, b, written = int(match[1]), match[2], int(match[3]), int(match[4])
        right = a + b if op == "+" else a - b
        hard = is_hard(a, op, b)
        kind = ("right_hard" if hard else "right_easy") if written == right else ("slip" if hard else "drill")
        out.append((match, kind))
    return out


def step_ends(text: str) -> list[tuple[int, str]]:
    """(character offset in a trace's `text` of the ``\\n\\n`` ending each step line, the step's kind)."""
    return [(match.end() - 2, kind) for match, kind in step_lines(text)]


class ForcedRow(NamedTuple):
    """One trace read teacher-forced: its completion's token ids and character offsets, and the logits of the
    whole row (prompt first: the completion's token i sits at position `prompt_len + i`)."""

    trace: Trace
    prompt_len: int
    ids: list[int]
    offsets: list[tuple[int, int]]
    logits: Any


def teacher_forced(
    model: Any,
    tokenizer: Any,
    pairs: list[tuple[str, Trace]],
    chunk: int,
    bf16: bool = False,
    device: str = "cpu",
    suffix: str = "",
) -> Iterator[ForcedRow]:
    """Forward passes over chat-prompted traces (each completion is the trace's text + `suffix`), `chunk` rows at
    a time, in eval mode (the model's mode is restored afterwards); float logits on the CPU. Rows come in order of
    length, so each chunk pads little."""
    import torch

    from research.toy.train import autocast, pad_ids, user_prompt

    was_training = model.training
    model.eval()
    pairs = sorted(pairs, key=lambda pair: len(pair[0]) + len(pair[1].text))
    try:
        for start in range(0, len(pairs), chunk):
            part = pairs[start : start + chunk]
            prompts = tokenizer([user_prompt(p) for p, _ in part], add_special_tokens=False)["input_ids"]
            completions = tokenizer(
                [t.text + suffix for _, t in part], add_special_tokens=False, return_offsets_mapping=True
            )
            rows = [list(prompt) + list(ids) for prompt, ids in zip(prompts, completions["input_ids"], strict=True)]
            with torch.no_grad(), autocast(bf16, device):
                logits = model(input_ids=pad_ids(rows, tokenizer.pad_token_id).to(device)).logits.float().cpu()
            for r, (prompt, ids, offsets, (_, t)) in enumerate(
                zip(prompts, completions["input_ids"], completions["offset_mapping"], part, strict=True)
            ):
                yield ForcedRow(t, len(prompt), list(ids), list(offsets), logits[r])
    finally:
        model.train(was_training)


def reflection_propensity(
    model: Any, tokenizer: Any, pairs: list[tuple[str, Trace]], bf16: bool = False, device: str = "cpu"
) -> dict[str, Any]:
    """Mean teacher-forced P(next line starts with "Wait") after each kind of step line, and their counts."""
    import torch

    wait_id = tokenizer("Wait", add_special_tokens=False)["input_ids"][0]
    sums = dict.fromkeys(KINDS, 0.0)
    counts = dict.fromkeys(KINDS, 0)
    for row in teacher_forced(model, tokenizer, pairs, 32, bf16, device):
        ends = dict(step_ends(row.trace.text))
        probs = torch.softmax(row.logits, dim=-1)[..., wait_id]
        for i, (s, _) in enumerate(row.offsets):
            if s in ends:
                sums[ends[s]] += float(probs[row.prompt_len + i])
                counts[ends[s]] += 1
    means = {kind: round(sums[kind] / counts[kind], 4) if counts[kind] else None for kind in KINDS}
    return {"p_wait": means, "steps": counts}


def held_out_pairs(seed: int, count: int, style: TraceStyle | None = None) -> list[tuple[str, Trace]]:
    """Extract-split problems with traces sampled in the data's proportions (seeded)."""
    style = style or TraceStyle()
    rng = random.Random(seed)
    return [(p.text, trace(p, rng, style)) for p in problems(seed, count, "extract", style)]


def trained_style(model_dir: Path) -> TraceStyle:
    """The data style a saved model was trained on (its training log's start record), else the defaults."""
    log = model_dir / "training_log.jsonl"
    if log.exists():
        with log.open() as lines:
            start = json.loads(lines.readline() or "{}")
        if start.get("event") == "start" and "style" in start:
            return TraceStyle(**start["style"])
    return TraceStyle()


def main(
    model_dir: Annotated[Path, typer.Option(help="A saved demo model (weights and tokenizer).")],
    traces: Annotated[int, typer.Option(help="Held-out (extract-split) traces to read.")] = 2000,
    seed: Annotated[int, typer.Option(help="Seed of the problems and traces.")] = 0,
) -> None:
    """Print the model's teacher-forced reflection propensity by kind of step, as JSON."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(2)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    pairs = held_out_pairs(seed, traces, trained_style(model_dir))  # traces in the model's own training style
    print(json.dumps(reflection_propensity(model, tokenizer, pairs)))


if __name__ == "__main__":
    typer.run(main)
