"""Reflection-down gated by an "easy problem" probe vs ungated, on the toy demo model, through the real server.

    python benchmarks/conditional_steering.py --items 1000 --label-items 600

1. Labels, on the demo's extraction split (`--label-items` problems, never evaluated): the unsteered model's
   correctness on one sample (easy = solved).
2. The condition: an extraction job through the server (`POST /v1/steering/vectors/extract`), a text contrast of
   the rendered chat prompts, easy vs hard, mean-pooled (so the stored threshold is the probe's cut on the mean
   of r̂·x over a prompt: scope `prompt`), every layer stored; the gate reads the scan's recommended layer with the
   stored threshold and scope.
3. Arms on the held-out eval split (`--items`, common seeds): unsteered; `reflect-down` (the preset, ungated);
   `gated` (the preset's terms, each with `condition: {vector: easy-probe, layer: Lc}`). `random_gate` is the
   ungated preset applied to a random share of problems equal to the gate's firing rate (4.), in expectation
   (per problem, the rate's mixture of its two paired outcomes): what a gate that knows nothing would give.
4. Where the gate fires, measured in the engine: a witness term (the demo's embedding row of one token, x200, at
   the last layer: it forces that token) under the same condition, one greedy token per eval prompt through
   `/v1/completions` on the rendered chat prompt; the gate fired iff the witness token came out (checked
   ungated: it always does).

Per arm: accuracy and mean completion tokens with 95 % bootstrap CIs over problems, and the accuracy lost per
100 tokens saved relative to unsteered. The claim being tested: the gated term keeps more accuracy than the
ungated one per token saved, and more than a random gate at its own firing rate.

`--probe step` (results in conditional_steering_demo_step.*): a token-scoped "this step is right" probe instead.
Labels come from the unsteered model's own traces on the extraction split (raw completions of the rendered
prompts): every step line `a±b=c` followed by its delimiter `\n\n` is a row, its text the prompt and the trace up
to that delimiter, pooled at its last token (so the stored scope is `token`); right (c = a±b) vs slipped. The
reflect-down preset acts at the delimiters; gated by this probe it acts after steps the model's own state reads
as right, and leaves the re-check after a slip. No random-gate arm here (a per-token gate has no per-problem rate).
`--probe carry` (conditional_steering_demo_carry.*): the same step delimiters, labelled easy (no carry or borrow
in the ones digit) vs hard from the step's own operands, not from the model's outcome. The toy slips only on hard
steps, so a re-check after an easy step can only re-verify a right one: gated by this "this step is easy" probe,
reflect-down cuts the re-checks that cannot catch anything and leaves those that can.
`--gated-scale k` adds a gated arm at k x the preset's strength, to compare at a matched token saving.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import re
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.reasoning_budget import (  # noqa: E402
    ROUNDS,
    ci,
    demo_arguments,
    paired,
    result_header,
    run_arm,
    run_on_demo,
)
from clients.ab.datasets import Item, demo_items  # noqa: E402
from clients.ab.runner import sample_seed  # noqa: E402
from clients.client import AsyncSteerClient  # noqa: E402

BASE = "steerserve-demo"
PROBE = "easy-probe"
WITNESS = "gate-witness"
WITNESS_TOKEN = 7


@functools.cache
def demo_tokenizer() -> Any:
    from transformers import AutoTokenizer

    from steering.models import DEMO_DIR

    return AutoTokenizer.from_pretrained(DEMO_DIR)


def rendered(prompt: str) -> str:
    """The prompt as the chat route renders it (what a prompt-scoped condition averages over)."""
    text: str = demo_tokenizer().apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    return text


async def build_condition(
    url: str, positive: list[str], negative: list[str], pool: str, description: str, method: str
) -> dict[str, Any]:
    """An extraction job (positive vs negative texts, every layer), then the preset's terms gated by its vector at
    the scan's recommended layer with the stored threshold and scope."""
    async with AsyncSteerClient(url, timeout=600) as client:
        job = await client.extract(
            {
                "id": PROBE,
                "method": method,
                "positive": positive,
                "negative": negative,
                "text_pool": pool,
                "layers": [0, 1, 2, 3],
                "max_positions": 100_000,
                "description": description,
            }
        )
        done = await client.wait_job(job.id, timeout=1800)
        assert done.status == "succeeded", done.error
        preset = await client.get_preset("reflect-down")
    result = done.result or {}
    layer = int(result["recommended_layer"])
    scan = {int(s["layer"]): s for s in result["scan"]}
    terms = [
        {**term.model_dump(mode="json", exclude_none=True), "condition": {"vector": PROBE, "layer": layer}}
        for term in preset.steering
    ]
    return {
        "positive": len(positive),
        "negative": len(negative),
        "layer": layer,
        "threshold": result["condition"]["thresholds"][str(layer)],
        "scope": result["condition"]["scope"],
        "probe_accuracy_held_out": scan[layer]["probe_accuracy"],
        "method": method,
        "gate_accuracy": result["condition_accuracy"][str(layer)],
        "terms": terms,
    }


async def prompt_condition(url: str, labelled: list[Item], args: argparse.Namespace) -> dict[str, Any]:
    """Easy (solved by the unsteered model) vs hard prompts, mean-pooled: a prompt-scoped probe."""
    rows = await run_arm(url, labelled, {}, BASE, args)
    easy = [rendered(i.prompt) for i, r in zip(labelled, rows, strict=True) if r["correct"]]
    hard = [rendered(i.prompt) for i, r in zip(labelled, rows, strict=True) if not r["correct"]]
    description = "demo: prompts the unsteered model solves (easy) vs fails (hard)"
    return await build_condition(url, easy, hard, "mean", description, args.method)


STEP = re.compile(r"(?m)^(\d+)([+-])(\d+)=(\d+)[^\n]*\n\n")


class StepRow(NamedTuple):
    """One step line of a trace: the prompt and trace up to its delimiter, and its labels."""

    text: str
    right: bool  # c = a ± b
    easy: bool  # no carry or borrow in the ones digit (the toy slips only on the other steps)


def step_rows(prompt: str, completion: str) -> list[StepRow]:
    from research.toy.arith import is_hard

    rows = []
    for m in STEP.finditer(completion):
        a, op, b, c = int(m[1]), m[2], int(m[3]), int(m[4])
        right = (a + b if op == "+" else a - b) == c
        rows.append(StepRow(prompt + completion[: m.end()], right, not is_hard(a, op, b)))
    return rows


async def step_condition(url: str, labelled: list[Item], args: argparse.Namespace) -> dict[str, Any]:
    """A token-scoped probe at each step's delimiter of the unsteered model's own traces: right vs slipped steps
    (`--probe step`), or easy vs hard steps (`--probe carry`)."""
    from openai import AsyncOpenAI

    gate = asyncio.Semaphore(args.concurrency)
    async with AsyncOpenAI(base_url=f"{url}/v1", api_key="none", timeout=600) as client:

        async def one(item: Item) -> list[StepRow]:
            prompt = rendered(item.prompt)
            async with gate:
                out = await client.completions.create(
                    model=BASE, prompt=prompt, max_tokens=args.max_tokens, temperature=args.temperature,
                    seed=sample_seed(item, 0, args.seed), extra_body={"skip_special_tokens": False},
                )  # fmt: skip
            return step_rows(prompt, out.choices[0].text)

        rows = [row for rows in await asyncio.gather(*(one(i) for i in labelled)) for row in rows]
    label = "easy" if args.probe == "carry" else "right"
    positive = [row.text for row in rows if getattr(row, label)]
    negative = [row.text for row in rows if not getattr(row, label)]
    contrast = "easy (no carry or borrow) vs hard" if args.probe == "carry" else "right vs slipped"
    description = f"demo: the model's own step lines, {contrast}, at the step's delimiter"
    return await build_condition(url, positive, negative, "last", description, args.method)


async def gate_fires(url: str, items: list[Item], condition: dict[str, Any] | None) -> list[bool]:
    """Per item: did the witness token come out (the witness term under `condition`, or ungated)?"""
    from openai import AsyncOpenAI

    term: dict[str, Any] = {"vector": WITNESS, "strength": 1.0, "layers": [3]}
    if condition is not None:
        term["condition"] = condition
    witness = demo_tokenizer().decode([WITNESS_TOKEN])
    gate = asyncio.Semaphore(64)
    async with AsyncOpenAI(base_url=f"{url}/v1", api_key="none", timeout=600) as client:

        async def one(item: Item) -> bool:
            async with gate:
                out = await client.completions.create(
                    model=BASE, prompt=rendered(item.prompt), max_tokens=1, temperature=0.0,
                    extra_body={"steering": [term]},
                )  # fmt: skip
            return out.choices[0].text == witness

        return list(await asyncio.gather(*(one(i) for i in items)))


async def push_witness(url: str) -> None:
    from safetensors.numpy import load_file

    from steering.models import DEMO_DIR

    row = load_file(str(DEMO_DIR / "model.safetensors"))["model.embed_tokens.weight"][WITNESS_TOKEN]
    async with AsyncSteerClient(url) as client:
        await client.push_vector(WITNESS, {3: row * 200.0}, description="forces one token (gate witness)")


def arm_summary(rows: list[dict[str, Any]], base: list[dict[str, Any]], draws: np.ndarray) -> dict[str, Any]:
    correct = np.array([r["correct"] for r in rows], dtype=float)
    tokens = np.array([r["tokens"] for r in rows], dtype=float)
    lost = np.array([b["correct"] for b in base], dtype=float) - correct
    saved = np.array([b["tokens"] for b in base], dtype=float) - tokens
    per_100 = 100 * lost[draws].mean(axis=1) / np.maximum(saved[draws].mean(axis=1), 1e-9)
    return {
        "accuracy": ci(correct, draws),
        "tokens": ci(tokens, draws),
        "accuracy_lost_per_100_tokens_saved": {
            "mean": float(100 * lost.mean() / max(saved.mean(), 1e-9)),
            "ci95": [float(np.quantile(per_100, 0.025)), float(np.quantile(per_100, 0.975))],
        },
    }


PROBE_TITLES = {
    "prompt": "an easy-problem probe (prompt scope)",
    "step": "a right-step probe (token scope)",
    "carry": "an easy-step probe (token scope; easy = no carry or borrow)",
}
PROBE_ROWS = {
    "prompt": "easy / {} hard prompts",
    "step": "right / {} slipped step delimiters",
    "carry": "easy / {} hard step delimiters",
}


def markdown(result: dict[str, Any]) -> str:
    def cell(row: dict[str, Any], digits: int = 3) -> str:
        return f"{row['mean']:.{digits}f} [{row['ci95'][0]:.{digits}f}, {row['ci95'][1]:.{digits}f}]"

    cond = result["condition"]
    probe = result.get("probe", "prompt")
    rows = PROBE_ROWS[probe]
    lines = [
        f"# Reflection-down gated by {PROBE_TITLES[probe]} vs ungated, on the toy demo model",
        "",
        f"Command: `{result['command']}`",
        f"{result['items']} held-out problems per arm"
        + (f" x {samples} seeded samples each (per-problem means)" if (samples := result.get("samples", 1)) > 1 else "")
        + f", common seeds, temperature {result['temperature']}, max {result['max_tokens']} tokens; "
        f"{result['seconds']} s. 95 % CIs: bootstrap over problems.",
        f"Condition: extracted from {cond['positive']} {rows.format(cond['negative'])} (extraction split); "
        f"layer {cond['layer']} (held-out probe balanced accuracy {cond['probe_accuracy_held_out']:.3f}), "
        f"threshold {cond['threshold']:.4f}, scope {cond['scope']}."
        + (
            ""
            if "gate_accuracy" not in cond
            else f" The gate: the {cond['method']} direction cut at the threshold, balanced accuracy "
            f"{cond['gate_accuracy']:.3f} on the extraction rows."
        )
        + (
            ""
            if result["fired"] is None
            else f" The gate fired on {result['fired']:.3f} of the eval prompts (in-engine witness; ungated, the "
            f"witness came out on {result['witness_forced_ungated']:.3f})."
        ),
        "",
        "| arm | accuracy | mean tokens | accuracy lost per 100 tokens saved |",
        "|---|---|---|---|",
    ]
    for arm, row in result["arms"].items():
        lost = row["accuracy_lost_per_100_tokens_saved"]
        lines.append(
            f"| {arm} | {cell(row['accuracy'])} | {cell(row['tokens'], 1)} | "
            + ("-" if arm == "unsteered" else cell(lost))
            + " |"
        )
    diff = result["gated_minus_ungated"]
    lines += [
        "",
        f"Paired, gated - reflect-down: accuracy {cell(diff['correct'])}, tokens {cell(diff['tokens'], 1)}",
        "",
    ]
    matched = result.get("matched")
    if matched:
        scale = result.get("gated_scale", 1.0)
        gated_at = "" if scale == 1.0 else f" (strength x{scale:g})"
        at = result["gated_minus_ungated_at_matched_saving"]
        by_scale = ", ".join(f"x{k}: {v:.1f}" for k, v in matched["ungated_tokens_by_scale"].items())
        lines += [
            f"Matched saving: on the extraction split the gated term{gated_at} averaged {matched['gated_tokens']:.1f} "
            "tokens; "
            f"the ungated preset at each strength scale {by_scale}; the closest, x{matched['scale']:g}, was run on "
            "the held-out problems (chosen by tokens only).",
            "",
            f"Paired, gated{gated_at} - ungated at the matched saving: accuracy {cell(at['correct'])}, tokens "
            f"{cell(at['tokens'], 1)}",
            "",
        ]
    return "\n".join(lines) + "\n"


def scaled(terms: list[dict[str, Any]], scale: float) -> list[dict[str, Any]]:
    """The terms at `scale` x their strength."""
    return [{**t, "strength": scale * t["strength"]} for t in terms]


def ungated_terms(gated_terms: list[dict[str, Any]], scale: float) -> list[dict[str, Any]]:
    """The preset's terms without their condition, at `scale` x their strength."""
    return scaled([{k: v for k, v in t.items() if k != "condition"} for t in gated_terms], scale)


async def match_saving(
    url: str, labelled: list[Item], gated_terms: list[dict[str, Any]], args: argparse.Namespace
) -> dict[str, Any]:
    """On the extraction split (never evaluated), by mean tokens only: the strength scale of the ungated preset
    whose token count is closest to the gated terms' at `--gated-scale`. Accuracy plays no part in the choice."""
    gated = await run_arm(url, labelled, {"steering": scaled(gated_terms, args.gated_scale)}, BASE, args)
    target = float(np.mean([r["tokens"] for r in gated]))
    tokens = {}
    for scale in args.match_scales:
        rows = await run_arm(url, labelled, {"steering": ungated_terms(gated_terms, scale)}, BASE, args)
        tokens[scale] = float(np.mean([r["tokens"] for r in rows]))
    scale = min(tokens, key=lambda k: abs(tokens[k] - target))
    return {"scale": scale, "gated_tokens": target, "ungated_tokens_by_scale": {str(k): v for k, v in tokens.items()}}


async def per_problem(
    url: str, items: list[Item], extra: dict[str, Any], model: str, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """`--samples` seeded samples of each problem, folded to one row per problem (mean correctness and tokens), so
    that the bootstrap over problems keeps a problem's samples together."""
    samples = [await run_arm(url, items, extra, model, args, sample=k) for k in range(args.samples)]
    return [
        {"item": rows[0]["item"], **{key: float(np.mean([r[key] for r in rows])) for key in ("correct", "tokens")}}
        for rows in zip(*samples, strict=True)
    ]


async def measure(url: str, args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    labelled = demo_items(args.label_items, split="extract")
    condition = await (prompt_condition if args.probe == "prompt" else step_condition)(url, labelled, args)
    matched = await match_saving(url, labelled, condition["terms"], args) if args.match_scales else None
    items = demo_items(args.items)
    draws = np.random.default_rng(0).integers(0, len(items), size=(ROUNDS, len(items)))
    unsteered = await per_problem(url, items, {}, BASE, args)
    ungated = await per_problem(url, items, {}, "reflect-down", args)
    gated = await per_problem(url, items, {"steering": condition["terms"]}, BASE, args)
    arms = {
        "unsteered": arm_summary(unsteered, unsteered, draws),
        "reflect-down (ungated)": arm_summary(ungated, unsteered, draws),
        "gated": arm_summary(gated, unsteered, draws),
    }
    rows = {"unsteered": unsteered, "ungated": ungated, "gated": gated}
    if args.gated_scale != 1.0:
        stronger = scaled(condition["terms"], args.gated_scale)
        rows["gated_scaled"] = await per_problem(url, items, {"steering": stronger}, BASE, args)
        arms[f"gated, strength x{args.gated_scale:g}"] = arm_summary(rows["gated_scaled"], unsteered, draws)
    diffs = {}
    if matched is not None:
        scale = matched["scale"]
        weaker = ungated_terms(condition["terms"], scale)
        rows["matched"] = await per_problem(url, items, {"steering": weaker}, BASE, args)
        arms[f"reflect-down (ungated), strength x{scale:g}: matched saving"] = arm_summary(
            rows["matched"], unsteered, draws
        )
        against = rows.get("gated_scaled", gated)  # the arm the saving was matched to
        diffs["gated_minus_ungated_at_matched_saving"] = {
            key: paired(against, rows["matched"], key, draws) for key in ("correct", "tokens")
        }
    fired = forced = None
    if args.probe == "prompt":
        await push_witness(url)
        forced = float(np.mean(await gate_fires(url, items, None)))
        fired = float(np.mean(await gate_fires(url, items, condition["terms"][0]["condition"])))
        # the ungated preset on a random share `fired` of the problems, in expectation: per problem the mixture
        random_gate = [
            {k: fired * float(f[k]) + (1 - fired) * float(u[k]) for k in ("correct", "tokens")}
            for f, u in zip(ungated, unsteered, strict=True)
        ]
        arms["random_gate (same rate)"] = arm_summary(random_gate, unsteered, draws)
    diff = {key: paired(gated, ungated, key, draws) for key in ("correct", "tokens")}
    return {
        **result_header(len(items), args, started),
        "samples": args.samples,
        "condition": condition,
        "matched": matched,
        **diffs,
        "probe": args.probe,
        "gated_scale": args.gated_scale,
        "fired": fired,
        "witness_forced_ungated": forced,
        "arms": arms,
        "gated_minus_ungated": diff,
        "rows": rows,
    }


def main() -> None:
    parser = demo_arguments(__doc__, "conditional_steering_demo")
    parser.add_argument("--label-items", type=int, default=600)
    parser.add_argument("--probe", choices=("prompt", "step", "carry"), default="prompt", help="see above")
    parser.add_argument(
        "--gated-scale",
        type=float,
        default=1.0,
        help="also a gated arm at this multiple of the preset's strength (the arm --match-scales is matched to)",
    )
    parser.add_argument(
        "--method",
        choices=("diffmean", "probe"),
        default="diffmean",
        help="the condition vector's extraction method (probe: a logistic probe's direction)",
    )
    parser.add_argument(
        "--samples", type=int, default=1, help="seeded samples per held-out problem (folded to per-problem means)"
    )
    parser.add_argument(
        "--match-scales",
        type=lambda text: [float(x) for x in text.split(",") if x],
        default=[],
        help="comma-separated strength scales of the ungated preset; the one whose mean tokens on the extraction "
        "split is closest to the gated term's becomes an extra held-out arm (a comparison at a matched saving)",
    )
    args = parser.parse_args()
    if args.probe != "prompt" and args.out == parser.get_default("out"):
        args.out = args.out.with_name(f"conditional_steering_demo_{args.probe}.json")
    run_on_demo(args, measure, markdown)


if __name__ == "__main__":
    main()
