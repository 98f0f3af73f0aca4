"""How `reasoning_budget`'s defaults (steering.budget: lead, scale) were picked: on the demo's extraction split,
never on the held-out eval split that `reasoning_budget.py` reports.

    python benchmarks/budget_tuning.py --items 1000 --out benchmarks/results/budget_tuning_demo.json

The unsteered arm's thinking lengths on the extraction split give B = their 50th and 75th percentiles. Each
(lead, scale) of the grid is served by its own `steerserve serve --budget-lead L --budget-scale S` (the path users
take) and sampled with `reasoning_budget: B` at both budgets, common seeds. The rule, fixed before the run: among
the settings that land within B by themselves on >= 96 % at both budgets (1 point above the issue's 95 %, for the
split-to-split noise), the one with the best mean accuracy over the two budgets.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.reasoning_budget import ROUNDS, demo_arguments, result_header, run_arm, summarize  # noqa: E402
from clients.ab.datasets import demo_items  # noqa: E402
from tests.fixtures.processes import demo_server  # noqa: E402

LEADS = (1.0, 1.5, 2.0)
SCALES = (4.0, 6.0, 8.0)
LANDING_GOAL = 0.96


def tune(args: argparse.Namespace) -> dict[str, Any]:
    items = demo_items(args.items, split="extract")
    draws = np.random.default_rng(0).integers(0, len(items), size=(ROUNDS, len(items)))
    started = time.monotonic()
    with demo_server() as url:
        baseline = asyncio.run(run_arm(url, items, {}, "steerserve-demo", args))
    thinking = np.array([r["thinking"] for r in baseline], dtype=float)
    budgets = [int(np.percentile(thinking, 50)), int(np.percentile(thinking, 75))]
    settings = []
    for lead, scale in itertools.product(LEADS, SCALES):
        flags = ("--budget-lead", str(lead), "--budget-scale", str(scale))
        with demo_server(args=flags) as url:
            by_budget = {
                str(b): summarize(
                    asyncio.run(run_arm(url, items, {"reasoning_budget": b}, "steerserve-demo", args)),
                    b,
                    int(np.ceil(1.5 * b)),
                    draws,
                )
                for b in budgets
            }
        landed = min(row["landed_within_budget"]["mean"] for row in by_budget.values())
        accuracy = float(np.mean([row["accuracy"]["mean"] for row in by_budget.values()]))
        settings.append({"lead": lead, "scale": scale, "min_landed": landed, "accuracy": accuracy, **by_budget})
        print(json.dumps({"lead": lead, "scale": scale, "min_landed": landed, "accuracy": accuracy}), flush=True)
    eligible = [s for s in settings if s["min_landed"] >= LANDING_GOAL]
    chosen = max(eligible, key=lambda s: s["accuracy"]) if eligible else None
    return {
        **result_header(len(items), args, started),
        "split": "extract",
        "budgets": budgets,
        "baseline": summarize(baseline, None, None, draws),
        "settings": settings,
        "chosen": None if chosen is None else {"lead": chosen["lead"], "scale": chosen["scale"]},
    }


def markdown(result: dict[str, Any]) -> str:
    def cell(row: dict[str, Any]) -> str:
        return f"{row['mean']:.3f} [{row['ci95'][0]:.3f}, {row['ci95'][1]:.3f}]"

    b50, b75 = (str(b) for b in result["budgets"])
    lines = [
        "# Picking `reasoning_budget`'s defaults on the demo's extraction split",
        "",
        f"Command: `{result['command']}`",
        f"{result['items']} extraction-split problems per setting and budget, common seeds, temperature "
        f"{result['temperature']}, max {result['max_tokens']} tokens; {result['seconds']} s. Budgets B = p50 {b50} "
        f"and p75 {b75} of the unsteered thinking lengths (accuracy {cell(result['baseline']['accuracy'])}).",
        f"Rule (fixed before the run): landed within B by itself on >= {LANDING_GOAL:.0%} at both budgets, then the "
        "best mean accuracy.",
        "",
        f"| lead | scale | landed B={b50} | landed B={b75} | accuracy B={b50} | accuracy B={b75} | tokens B={b50} |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in result["settings"]:
        lines.append(
            f"| {s['lead']} | {s['scale']} | {cell(s[b50]['landed_within_budget'])} | "
            f"{cell(s[b75]['landed_within_budget'])} | {cell(s[b50]['accuracy'])} | {cell(s[b75]['accuracy'])} | "
            f"{s[b50]['tokens']['mean']:.1f} |"
        )
    lines += ["", f"Chosen: {json.dumps(result['chosen'])}"]
    return "\n".join(lines) + "\n"


def main() -> None:
    args = demo_arguments(__doc__, "budget_tuning_demo").parse_args()
    result = tune(args)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
