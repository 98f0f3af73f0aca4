"""A thinking budget B on the toy demo model, three ways, through the real server with common seeds.

    python benchmarks/reasoning_budget.py --items 1000 --out benchmarks/results/reasoning_budget_demo.json

The baseline (unsteered) arm's thinking lengths give two budgets, B = their 50th and 75th percentiles. For each B:
- `hard_cut`: vLLM's `thinking_token_budget = B` (the thinking section is cut at B, wherever it is);
- `fixed_down`: the `reflect-down` preset for the whole request (no budget);
- `schedule`: `reasoning_budget: B` (steering.budget, server defaults: 1.5x reflect-down's strength from the
  start, rising to 6x it at B; vLLM's cut at 1.5 B behind it). The defaults were picked on the extraction split
  (`benchmarks/budget_tuning.py`); this run is on the held-out eval split.
Per arm: accuracy, mean completion and thinking tokens, and the share whose thinking ended *by itself* within B
tokens (a cut does not count as landing), each with a 95 % bootstrap CI over problems. The comparison the budget
is for: `schedule` vs `hard_cut` accuracy (paired difference, CI) and mean tokens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from clients.ab.datasets import Item, demo_items  # noqa: E402
from clients.ab.grading import is_correct  # noqa: E402
from clients.ab.runner import sample_seed  # noqa: E402
from tests.fixtures.processes import demo_server  # noqa: E402

ROUNDS = 4000


async def run_arm(
    url: str, items: list[Item], extra: dict[str, Any], model: str, args: argparse.Namespace, sample: int = 0
) -> list[dict[str, Any]]:
    """One chat request per item (seeded by item, `sample` and `--seed`: the same draws in every arm)."""
    from openai import AsyncOpenAI

    gate = asyncio.Semaphore(args.concurrency)
    async with AsyncOpenAI(base_url=f"{url}/v1", api_key="none", timeout=600, max_retries=3) as client:

        async def one(item: Item) -> dict[str, Any]:
            async with gate:
                answer = await client.chat.completions.create(
                    model=model,
                    messages=[{"role": "user", "content": item.prompt}],
                    max_tokens=args.max_tokens,
                    temperature=args.temperature,
                    seed=sample_seed(item, sample, args.seed),
                    extra_body=extra or None,
                )
            choice, usage = answer.choices[0], answer.usage
            assert usage is not None and usage.completion_tokens_details is not None
            said = choice.message.model_extra or {}
            return {
                "item": item.id,
                "correct": is_correct(choice.message.content or "", item.answer),
                "tokens": usage.completion_tokens,
                "thinking": int(usage.completion_tokens_details.reasoning_tokens or 0),
                "closed": bool(choice.message.content),  # an answer followed the thinking section
                "reasoning_chars": len(said.get("reasoning") or said.get("reasoning_content") or ""),
                "finish": choice.finish_reason,
            }

        return list(await asyncio.gather(*(one(item) for item in items)))


def ci(values: np.ndarray, draws: np.ndarray) -> dict[str, Any]:
    means = values[draws].mean(axis=1)
    return {"mean": float(values.mean()), "ci95": [float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))]}


def summarize(rows: list[dict[str, Any]], budget: int | None, cut_at: int | None, draws: np.ndarray) -> dict[str, Any]:
    correct = np.array([r["correct"] for r in rows], dtype=float)
    tokens = np.array([r["tokens"] for r in rows], dtype=float)
    thinking = np.array([r["thinking"] for r in rows], dtype=float)
    out = {"accuracy": ci(correct, draws), "tokens": ci(tokens, draws), "thinking": ci(thinking, draws)}
    if budget is not None:
        cut = thinking >= cut_at if cut_at is not None else np.zeros_like(thinking, dtype=bool)
        landed = (thinking <= budget) & ~cut  # ended by itself within B (a cut does not count)
        out["landed_within_budget"] = ci(landed.astype(float), draws)
        out["cut"] = float(cut.mean())
    return out


def paired(a: list[dict[str, Any]], b: list[dict[str, Any]], key: str, draws: np.ndarray) -> dict[str, Any]:
    diff = np.array([float(x[key]) - float(y[key]) for x, y in zip(a, b, strict=True)])
    return ci(diff, draws)


def markdown(result: dict[str, Any]) -> str:
    def cell(row: dict[str, Any], digits: int = 3) -> str:
        return f"{row['mean']:.{digits}f} [{row['ci95'][0]:.{digits}f}, {row['ci95'][1]:.{digits}f}]"

    lines = [
        "# A thinking budget on the toy demo model: hard cut vs fixed reflect-down vs the budget schedule",
        "",
        f"Command: `{result['command']}`",
        f"{result['items']} held-out problems per arm, common seeds, temperature {result['temperature']}, "
        f"max {result['max_tokens']} tokens; {result['seconds']} s. 95 % CIs: bootstrap over problems.",
        f"Baseline (unsteered): accuracy {cell(result['baseline']['accuracy'])}, thinking tokens "
        f"{cell(result['baseline']['thinking'], 1)}; budgets B = p50 {result['budgets'][0]} and p75 "
        f"{result['budgets'][1]} of its thinking lengths.",
        "",
        "| B | arm | accuracy | mean tokens | mean thinking | landed within B (by itself) | cut |",
        "|---|---|---|---|---|---|---|",
    ]
    for budget, arms in result["by_budget"].items():
        for arm, row in arms["arms"].items():
            lines.append(
                f"| {budget} | {arm} | {cell(row['accuracy'])} | {cell(row['tokens'], 1)} | "
                f"{cell(row['thinking'], 1)} | {cell(row['landed_within_budget'])} | {row['cut']:.3f} |"
            )
    lines += ["", "Paired differences, schedule - hard_cut:", ""]
    for budget, arms in result["by_budget"].items():
        lines.append(
            f"- B = {budget}: accuracy {cell(arms['schedule_minus_hard_cut']['accuracy'])}, "
            f"tokens {cell(arms['schedule_minus_hard_cut']['tokens'], 1)}"
        )
    lines += ["", "Goals (issue: the schedule lands within B on >= 95 % and beats the hard cut's accuracy):", ""]
    for budget, arms in result["by_budget"].items():
        lines.append(f"- B = {budget}: {json.dumps(arms['goals'])}")
    return "\n".join(lines) + "\n"


async def measure(url: str, args: argparse.Namespace) -> dict[str, Any]:
    items = demo_items(args.items)
    draws = np.random.default_rng(0).integers(0, len(items), size=(ROUNDS, len(items)))
    started = time.monotonic()
    baseline = await run_arm(url, items, {}, "steerserve-demo", args)
    thinking = np.array([r["thinking"] for r in baseline], dtype=float)
    budgets = [int(np.percentile(thinking, 50)), int(np.percentile(thinking, 75))]
    fixed = await run_arm(url, items, {}, "reflect-down", args)
    by_budget: dict[str, Any] = {}
    for budget in budgets:
        cut = await run_arm(url, items, {"thinking_token_budget": budget}, "steerserve-demo", args)
        scheduled = await run_arm(url, items, {"reasoning_budget": budget}, "steerserve-demo", args)
        arms = {
            "unsteered": summarize(baseline, budget, None, draws),
            "hard_cut": summarize(cut, budget, budget, draws),
            "fixed_down": summarize(fixed, budget, None, draws),
            "schedule": summarize(scheduled, budget, int(np.ceil(1.5 * budget)), draws),
        }
        difference = {k: paired(scheduled, cut, k, draws) for k in ("correct", "tokens")}
        by_budget[str(budget)] = {
            "arms": arms,
            "schedule_minus_hard_cut": {"accuracy": difference["correct"], "tokens": difference["tokens"]},
            "goals": {
                "schedule_lands_within_B_95pct": arms["schedule"]["landed_within_budget"]["mean"] >= 0.95,
                "schedule_beats_hard_cut_accuracy_ci": difference["correct"]["ci95"][0] > 0,
            },
            "rows": {"hard_cut": cut, "schedule": scheduled},
        }
    return {
        **result_header(len(items), args, started),
        "budgets": budgets,
        "baseline": summarize(baseline, None, None, draws),
        "by_budget": by_budget,
        "rows": {"unsteered": baseline, "fixed_down": fixed},
    }


def demo_arguments(doc: str | None, result_name: str) -> argparse.ArgumentParser:
    """The options of a benchmark that samples the demo model through the server (items, sampling, output)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--temperature", type=float, default=0.7, help="the toy's own default")
    parser.add_argument("--max-tokens", type=int, default=384)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / f"{result_name}.json")
    return parser


def result_header(items: int, args: argparse.Namespace, started: float) -> dict[str, Any]:
    """What every demo benchmark's result starts with: its command, size, sampling and duration."""
    return {
        "command": f"python benchmarks/{Path(sys.argv[0]).name} " + " ".join(sys.argv[1:]),
        "items": items,
        "temperature": args.temperature,
        "max_tokens": args.max_tokens,
        "seconds": round(time.monotonic() - started, 1),
    }


def run_on_demo(
    args: argparse.Namespace,
    measure: Callable[[str, argparse.Namespace], Awaitable[dict[str, Any]]],
    markdown: Callable[[dict[str, Any]], str],
) -> None:
    """Measure against a fresh demo server; write the JSON and its markdown beside it."""
    with demo_server() as url:
        result = asyncio.run(measure(url, args))
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


def main() -> None:
    run_on_demo(demo_arguments(__doc__, "reasoning_budget_demo").parse_args(), measure, markdown)


if __name__ == "__main__":
    main()
