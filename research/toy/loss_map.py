"""Where the toy's loss sits: held-out loss per kind of token, against what the data allows.

Every trained token of held-out traces (sampled in the model's own training style, read from its training log)
is put in a class (the operands of a step line, its result, the decision after it, a re-check's verdict, …) and
the model's teacher-forced loss is summed per class, in nats per trace.
Three classes have a reference computed from the same traces:

- ``step_decision`` (the token after a step line's ``\\n\\n``: reflect, take the next step or close the
  thinking). *floor*: a model that knows whether the step it just wrote is wrong (the data's rate for each kind
  of step). *without noticing*: a model that only knows whether the step was hard. *one rate*: a model that
  reflects at one rate after every step.
- ``verdict`` ("So it is 85, not 75" or "Yes, it is 85" after a re-check has recomputed the step): the floor
  is 0, since both numbers are in the text; *without noticing* is guessing at the data's rate.
- ``step_result`` (the result digits of a step line): the floor is the trained slip rate's entropy.

A model whose loss on these classes sits at "without noticing" cannot tell its slips from its right steps, so
steering it up catches few extra slips. ``python -m research.toy.loss_map --model-dir DIR``.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Annotated, Any

import typer

from research.toy.arith import Trace
from research.toy.probe import held_out_pairs, step_lines, teacher_forced, trained_style

CLASSES = (
    "step_operands",
    "step_result",
    "delimiter",
    "step_decision",
    "recheck",
    "verdict",
    "again_decision",
    "again_check",
    "answer",
    "other",
)
RECHECK = re.compile(r"Wait, let me re-check: [^\n]*\n\n")
AGAIN = re.compile(r"Wait, let me check again: [^\n]*\n\n")
VERDICT = re.compile(r"\. (So|Yes)\b")
CONFIRMED = re.compile(r"Yes, it is \d+\.\n\n")
ANSWER = re.compile(r"Answer: (\d+)")


def char_classes(text: str) -> list[str]:
    """The class of every character of a trace's text (a token takes the class of its first non-space one)."""
    classes = ["other"] * len(text)

    def mark(start: int, end: int, name: str) -> None:
        classes[start:end] = [name] * (end - start)

    lines = step_lines(text)
    for line, _ in lines:
        mark(line.start(), line.start(4), "step_operands")
        mark(line.start(4), line.end(4), "step_result")
        mark(line.end() - 2, line.end(), "delimiter")
    for pattern, name in ((RECHECK, "recheck"), (AGAIN, "again_check")):
        for match in pattern.finditer(text):
            mark(match.start() + 1, match.end(), name)  # its "W" is the decision that started it
    for match in VERDICT.finditer(text):
        mark(match.start(1), match.end(1), "verdict")
    for line, _ in lines:
        if line.end() < len(text):
            classes[line.end()] = "step_decision"
    for match in CONFIRMED.finditer(text):
        if match.end() < len(text):
            classes[match.end()] = "again_decision"
    for match in ANSWER.finditer(text):
        mark(match.start(1), match.end(1), "answer")
    return classes


def token_class(classes: list[str], text: str, start: int, end: int) -> str:
    for i in range(start, min(end, len(text))):
        if not text[i].isspace():
            return classes[i]
    return classes[start] if start < len(text) else "other"


def entropy(p: float) -> float:
    return 0.0 if p <= 0.0 or p >= 1.0 else -(p * math.log(p) + (1 - p) * math.log(1 - p))


def references(pairs: list[tuple[str, Trace]]) -> dict[str, dict[str, float]]:
    """Nats per trace that the data allows on three classes, with and without knowing a step is wrong."""
    decisions: Counter[tuple[str, bool]] = Counter()  # (kind of step, reflected after it)
    verdicts: Counter[str] = Counter()
    results: Counter[bool] = Counter()  # hard step with trained digits: slipped?
    for _, t in pairs:
        untrained = set(t.untrained)
        for line, kind in step_lines(t.text):
            decisions[(kind, t.text.startswith("Wait", line.end()))] += 1
            if kind in ("slip", "right_hard") and line.span(4) not in untrained:
                results[kind == "slip"] += 1
        verdicts.update(match[1] for match in VERDICT.finditer(t.text))

    def total(groups: list[list[str]]) -> float:
        nats = 0.0
        for kinds in groups:
            yes = sum(decisions[(k, True)] for k in kinds)
            n = yes + sum(decisions[(k, False)] for k in kinds)
            nats += n * entropy(yes / n) if n else 0.0
        return nats / len(pairs)

    n_verdicts = sum(verdicts.values())
    n_results = sum(results.values())
    return {
        "step_decision": {
            "floor": total([["slip"], ["drill"], ["right_hard"], ["right_easy"]]),
            "without_noticing": total([["slip", "right_hard"], ["drill", "right_easy"]]),
            "one_rate": total([["slip", "right_hard", "drill", "right_easy"]]),
        },
        "verdict": {
            "floor": 0.0,
            "without_noticing": n_verdicts * entropy(verdicts["So"] / n_verdicts) / len(pairs) if n_verdicts else 0.0,
        },
        "step_result": {"floor": n_results * entropy(results[True] / n_results) / len(pairs) if n_results else 0.0},
    }


def loss_map(
    model: Any, tokenizer: Any, pairs: list[tuple[str, Trace]], bf16: bool = False, device: str = "cpu"
) -> dict[str, Any]:
    """Teacher-forced loss of each class of trained token, in nats per trace, with `references`."""
    import torch

    from research.toy.train import trained_mask

    nats: defaultdict[str, float] = defaultdict(float)
    tokens: Counter[str] = Counter()
    for row in teacher_forced(model, tokenizer, pairs, 64, bf16, device, suffix=tokenizer.eos_token):
        text = row.trace.text
        classes = char_classes(text)
        log_probs = torch.log_softmax(row.logits, dim=-1)
        for i, trained in enumerate(trained_mask(row.offsets, row.trace.untrained)):  # as in training
            if trained:
                name = token_class(classes, text, *row.offsets[i])
                nats[name] -= float(log_probs[row.prompt_len + i - 1, row.ids[i]])
                tokens[name] += 1
    n = len(pairs)
    return {
        "traces": n,
        "loss_per_token": round(sum(nats.values()) / max(1, sum(tokens.values())), 5),
        "classes": {
            c: {"tokens_per_trace": round(tokens[c] / n, 2), "nats_per_trace": round(nats[c] / n, 3)}
            for c in CLASSES
            if tokens[c]
        },
        "references": {c: {k: round(v, 3) for k, v in r.items()} for c, r in references(pairs).items()},
    }


def markdown(result: dict[str, Any]) -> str:
    """The loss map as a table: one row per class, with the references where there are some."""
    lines = [
        f"{result['traces']} held-out traces; loss {result['loss_per_token']} nats per trained token.",
        "",
        "| class | tokens per trace | model: nats per trace | data floor | without noticing | one rate |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in result["classes"].items():
        ref = result["references"].get(name, {})
        cells = [str(ref[k]) if k in ref else "–" for k in ("floor", "without_noticing", "one_rate")]
        lines.append(f"| {name} | {row['tokens_per_trace']} | {row['nats_per_trace']} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def main(
    model_dir: Annotated[Path, typer.Option(help="A saved demo model (weights and tokenizer).")],
    traces: Annotated[int, typer.Option(help="Held-out (extract-split) traces to read.")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of the problems and traces.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a markdown table.")] = False,
) -> None:
    """Print where the model's held-out loss sits, per class of token."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(2)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    result = loss_map(model, tokenizer, held_out_pairs(seed, traces, trained_style(model_dir)))
    print(json.dumps(result) if as_json else markdown(result), end="")


if __name__ == "__main__":
    typer.run(main)
