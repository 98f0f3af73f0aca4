"""Step-level behaviour of the toy demo model under reflection steering, through the real server.

The A/B report says *what* steering does to accuracy, tokens and the reflection rate; this script says *why*:
it parses every sampled trace of the demo's chain arithmetic into steps and re-checks and counts, per
strength, how often a step is wrong, how often the model reflects after a right and after a wrong step, how
often a re-check fixes a wrong step, and how often it "corrects" a right one into a wrong one.

    python research/demo_behaviour.py --items 1000 --strengths=-1.5,-1,0,0.2,0.5 \
        --term '{"positions": {"tokens": ["\\n\\n"]}}' --out benchmarks/results
    python research/demo_behaviour.py --base-url http://127.0.0.1:8000 ...   # against a running server

Without `--base-url` it starts `steerserve serve` (the bundled toy demo model, its vector and presets).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shlex
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from research.toy.arith import THINK_CLOSE, THINK_OPEN, Problem, problems  # noqa: E402
from tests.fixtures.processes import demo_server  # noqa: E402

# A step line, with or without the pointer to what comes next (", next -19" / ", done") that the data writes.
STEP = re.compile(r"^(-?\d+)([+-])(\d+)=(-?\d+)(?:, (?:next [+-]\d+|done))?$")
RECHECK = re.compile(r"^Wait, let me re-check: .*?= (-?\d+)\. (?:Yes, it is (-?\d+)|So it is (-?\d+), not (-?\d+))\.$")
AGAIN = re.compile(r"^Wait, let me check again: ")


@dataclass
class Tally:
    """Counts over the parsed traces of one arm."""

    counts: Counter[str] = field(default_factory=Counter)

    def add_trace(self, problem: Problem, text: str, completion_tokens: int = 0) -> None:
        c = self.counts
        c["responses"] += 1
        c["completion_tokens"] += completion_tokens
        body, _, tail = text.partition(THINK_CLOSE)
        answer = re.search(r"Answer: (\d+)", tail)
        c["correct"] += int(answer is not None and int(answer.group(1)) == problem.answer)
        lines = [x.strip() for x in body.replace(THINK_OPEN, "").split("\n\n") if x.strip()]
        c["reflective"] += int(any(x.startswith("Wait") for x in lines))
        value = problem.start  # what the trace holds so far: the last step's result, or a re-check's verdict
        operations = [(m[2], int(m[3])) for m in map(STEP.match, lines) if m is not None]
        c["lost_place"] += int(operations != list(problem.steps))  # a step skipped, repeated or misread
        steps_seen = 0
        for i, line in enumerate(lines):
            step = STEP.match(line)
            if step is None:
                c["other_lines"] += int(not line.startswith("Wait"))
                continue
            a, op, b, written = int(step[1]), step[2], int(step[3]), int(step[4])
            c["carry_errors"] += int(a != value)  # the step did not start from the value so far
            right = a + b if op == "+" else a - b
            kind = "right" if written == right else "wrong"
            c[f"steps_{kind}"] += 1
            value = written
            nxt = lines[i + 1] if i + 1 < len(lines) else ""
            reflects = nxt.startswith("Wait")
            steps_seen += 1
            if steps_seen == len(problem.steps):  # the chain's last step: next comes the answer, or a re-check
                c["last_steps"] += 1
                c["reflect_after_last"] += int(reflects)
            check = RECHECK.match(nxt)
            if not reflects:
                continue
            c[f"reflect_after_{kind}"] += 1
            if check is None:
                c["recheck_unparsed"] += 1
                continue
            verdict = int(check[2] or check[3])
            value = verdict
            if kind == "wrong":
                c["fixed"] += int(verdict == right)
            else:
                c["broken"] += int(verdict != right)
            if i + 2 < len(lines) and AGAIN.match(lines[i + 2]):
                c[f"again_after_{kind}"] += 1
        c["answer_copy_errors"] += int(answer is not None and int(answer.group(1)) != value)

    def summary(self) -> dict[str, float | int]:
        c = self.counts
        right, wrong = c["steps_right"], c["steps_wrong"]
        return {
            "responses": c["responses"],
            "accuracy": _ratio(c["correct"], c["responses"]),
            "reflection_rate": _ratio(c["reflective"], c["responses"]),
            "mean_tokens": _ratio(c["completion_tokens"], c["responses"]),
            "steps_per_response": _ratio(right + wrong, c["responses"]),
            "wrong_steps": wrong,
            "rechecks_of_wrong": c["reflect_after_wrong"],
            "rechecks_of_right": c["reflect_after_right"],
            "step_error_rate": _ratio(wrong, right + wrong),
            "carry_error_rate": _ratio(c["carry_errors"], right + wrong),
            "answer_copy_errors": c["answer_copy_errors"],
            "lost_place_rate": _ratio(c["lost_place"], c["responses"]),
            "p_reflect_after_right": _ratio(c["reflect_after_right"], right),
            "p_reflect_after_wrong": _ratio(c["reflect_after_wrong"], wrong),
            "p_reflect_after_last_step": _ratio(c["reflect_after_last"], c["last_steps"]),
            "p_reflect_after_other_steps": _ratio(
                c["reflect_after_right"] + c["reflect_after_wrong"] - c["reflect_after_last"],
                right + wrong - c["last_steps"],
            ),
            "p_fix_given_recheck_of_wrong": _ratio(c["fixed"], c["reflect_after_wrong"]),
            "p_break_given_recheck_of_right": _ratio(c["broken"], c["reflect_after_right"]),
            "p_again_after_right_recheck": _ratio(c["again_after_right"], c["reflect_after_right"]),
            "unparsed_lines": c["other_lines"] + c["recheck_unparsed"],
        }


def _ratio(a: int, b: int) -> float:
    return round(a / b, 4) if b else float("nan")


async def run_arm(
    client: httpx.AsyncClient, items: list[Problem], strength: float, term: dict[str, Any], args: argparse.Namespace
) -> Tally:
    tally = Tally()
    gate = asyncio.Semaphore(args.concurrency)

    async def one(index: int, problem: Problem) -> None:
        body: dict[str, Any] = {
            "model": "steerserve-demo",
            "messages": [{"role": "user", "content": problem.text}],
            "max_tokens": args.max_tokens,
            "temperature": args.temperature,
            "seed": args.seed + index,
        }
        if strength != 0:
            body["steering"] = [{"vector": "reflection", "strength": strength, **term}]
        async with gate:
            response = await client.post("/v1/chat/completions", json=body)
        response.raise_for_status()
        payload = response.json()
        message = payload["choices"][0]["message"]
        reasoning = message.get("reasoning") or message.get("reasoning_content") or ""
        text = f"{THINK_OPEN}{reasoning}{THINK_CLOSE}{message['content']}"
        tally.add_trace(problem, text, payload["usage"]["completion_tokens"])

    await asyncio.gather(*(one(i, p) for i, p in enumerate(items)))
    return tally


async def measure(base_url: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    items = problems(args.seed, args.items, args.split)
    term = json.loads(args.term) if args.term else {}
    rows = []
    async with httpx.AsyncClient(base_url=base_url, timeout=600) as client:
        for strength in (float(s) for s in args.strengths.split(",")):
            tally = await run_arm(client, items, strength, term, args)
            rows.append({"strength": strength, **tally.summary()})
            print(json.dumps(rows[-1]), flush=True)
    return rows


COLUMNS = (
    ("strength", "strength"),
    ("accuracy", "accuracy"),
    ("reflection_rate", "reflection rate"),
    ("mean_tokens", "mean completion tokens"),
    ("step_error_rate", "step error rate"),
    ("carry_error_rate", "carry error rate"),
    ("lost_place_rate", "responses that skip, repeat or misread an operation"),
    ("p_reflect_after_right", "P(reflect \\| right step)"),
    ("p_reflect_after_wrong", "P(reflect \\| wrong step)"),
    ("p_reflect_after_last_step", "P(reflect \\| the chain's last step)"),
    ("p_reflect_after_other_steps", "P(reflect \\| any earlier step)"),
    ("p_fix_given_recheck_of_wrong", "P(fixed \\| re-check of a wrong step)"),
    ("p_break_given_recheck_of_right", "P(broken \\| re-check of a right step)"),
    ("wrong_steps", "wrong steps"),
    ("rechecks_of_wrong", "re-checks of wrong steps"),
    ("rechecks_of_right", "re-checks of right steps"),
)


def write_results(rows: list[dict[str, Any]], args: argparse.Namespace, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    command = "python research/demo_behaviour.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    result = {"command": command, "split": args.split, "items": args.items, "temperature": args.temperature}
    (out / "demo_behaviour.json").write_text(json.dumps({**result, "rows": rows}, indent=2) + "\n")
    lines = [
        "# Step-level behaviour of the toy demo model (measured)",
        "",
        f"Command: `{command}`",
        "",
        f"{args.items} problems of the {args.split!r} split per strength, temperature {args.temperature}, "
        "through the real server. Every trace is parsed into steps and re-checks.",
        "",
        "| " + " | ".join(title for _, title in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    lines += ["| " + " | ".join(f"{row[key]:g}" for key, _ in COLUMNS) + " |" for row in rows]
    (out / "demo_behaviour.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", default=None, help="a running server (default: start the bundled demo)")
    parser.add_argument("--items", type=int, default=400)
    parser.add_argument("--split", default="extract", choices=["train", "extract", "eval"])
    parser.add_argument("--strengths", default="-1,0,0.5")
    parser.add_argument("--term", default=None, help="JSON term fields for steered arms (op, layers, positions)")
    parser.add_argument("--temperature", type=float, default=0.7, help="the toy's own default (its generation config)")
    parser.add_argument("--max-tokens", type=int, default=384)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=None, help="write demo_behaviour.{json,md} here")
    args = parser.parse_args()
    if args.base_url:
        rows = asyncio.run(measure(args.base_url, args))
    else:
        with demo_server() as url:
            rows = asyncio.run(measure(url, args))
    if args.out is not None:
        write_results(rows, args, args.out)


if __name__ == "__main__":
    main()
