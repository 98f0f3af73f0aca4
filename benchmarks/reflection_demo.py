"""The measured reflection result on the toy demo model, through the real server.

Starts `steerserve serve` with no model argument (the bundled toy demo model; its reflection vector and the
reflect-up/down presets are installed on first start), then runs `steerserve ab run` over held-out demo
problems: strengths of the reflection vector (with its stored defaults, or the term fields of `--term`) and a
random direction of equal norm, common seeds per problem. Writes the A/B report under
`benchmarks/results/reflection_demo/` and the summary with the issue's targets checked to
`benchmarks/results/reflection_demo.{json,md}`.

    python benchmarks/reflection_demo.py --items 1000 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fixtures.processes import STEERSERVE, bench_env, demo_server  # noqa: E402


def meets_down(arm: dict[str, Any], base: dict[str, Any]) -> bool:
    """The issue's down rule: reflection <= 0.5x and mean tokens <= 0.8x baseline, accuracy >= baseline - 3 points."""
    return (
        arm["reflection_rate"] <= 0.5 * base["reflection_rate"]
        and arm["mean_tokens"] <= 0.8 * base["mean_tokens"]
        and arm["accuracy"] >= base["accuracy"] - 0.03
    )


def meets_up(arm: dict[str, Any], base: dict[str, Any]) -> bool:
    """The issue's up rule: reflection >= 1.5x baseline, accuracy >= baseline."""
    return arm["reflection_rate"] >= 1.5 * base["reflection_rate"] and arm["accuracy"] >= base["accuracy"]


def check_targets(arms: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's targets, each with the numbers it was judged on."""
    refl = sorted((a for a in arms if a["vector"] == "reflection"), key=lambda a: a["strength"])
    base = next(a for a in refl if a["strength"] == 0)
    rates = [a["reflection_rate"] for a in refl]
    monotone = len(refl) >= 5 and all(x < y for x, y in zip(rates, rates[1:], strict=False))
    downs = [a for a in refl if a["strength"] < 0 and meets_down(a, base)]
    ups = [a for a in refl if a["strength"] > 0 and meets_up(a, base)]
    randoms = [a for a in arms if "cosine_with_vector" in a]  # every random control, plain or orthogonal
    random_ok = [
        abs(a["reflection_rate"] - base["reflection_rate"]) <= 0.03
        or a["reflection_delta_ci"][0] <= 0 <= a["reflection_delta_ci"][1]
        for a in randoms
    ]
    best_down = min(downs, key=lambda a: a["mean_tokens"]) if downs else None
    best_up = max(ups, key=lambda a: a["accuracy"]) if ups else None
    return {
        "reflection_rate_strictly_rises": {"met": monotone, "strengths": [a["strength"] for a in refl], "rates": rates},
        "best_down_arm": {
            "met": best_down is not None,
            "arm": best_down and best_down["name"],
            "rule": "reflection <= 0.5x baseline, mean tokens <= 0.8x baseline, accuracy >= baseline - 3 points",
        },
        "best_up_arm": {
            "met": best_up is not None,
            "arm": best_up and best_up["name"],
            "accuracy_gain": best_up and round(best_up["accuracy"] - base["accuracy"], 4),
            "accuracy_gain_ci": best_up and best_up["delta_accuracy_ci"],
            "rule": "reflection >= 1.5x baseline, accuracy >= baseline",
        },
        "random_controls_flat": {
            "met": bool(random_ok) and all(random_ok),
            "arms": [a["name"] for a in randoms],
            "outside": [a["name"] for a, ok in zip(randoms, random_ok, strict=True) if not ok],
            "rule": "|Δreflection| <= 3 points, or its paired 95 % CI includes 0",
        },
    }


def accuracy_by_reflection(results_jsonl: Path, arm: str) -> dict[str, Any]:
    """Within one arm: accuracy of the responses that reflected and of those that did not (the design point that
    reflection goes with right answers)."""
    rows = [json.loads(line) for line in results_jsonl.read_text().splitlines() if line.strip()]
    out: dict[str, Any] = {"arm": arm}
    for key, reflected in (("reflective", True), ("non_reflective", False)):
        group = [r for r in rows if r["arm"] == arm and r["reflected"] is reflected]
        out[key] = {"n": len(group), "accuracy": round(sum(r["correct"] for r in group) / max(1, len(group)), 4)}
    return out


def markdown(result: dict[str, Any]) -> str:
    base = next(a for a in result["arms"] if a["vector"] == "reflection" and a["strength"] == 0)
    lines = [
        "# Reflection steering on the toy demo model (measured)",
        "",
        "A **toy**: a 4-layer, 3.2 M-parameter Llama trained on CPU (`research/toy/train.py`; its time is in",
        "`steering/models/demo/README.md`) on synthetic chain arithmetic with reflection. It shows the workflow end to "
        "end; it says",
        "nothing about real reasoning models. Every number below came from the real server (`steerserve serve`,",
        "vLLM CPU, the toy in float32). Step-level reasons: [demo_behaviour.md](demo_behaviour.md).",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Arms: {len(result['arms'])}; {result['arms'][0]['n']} responses per arm ({result['items']} held-out problems "
        f"x {result['samples']} samples, common seeds), temperature {result['temperature']}, "
        f"max {result['max_tokens']} tokens. CIs: paired bootstrap over problems, 95 %.",
        "",
        "| arm | vector | strength | accuracy [95 % CI] | Δacc vs base [CI] | McNemar p | mean tokens | Δtokens % "
        "| reflection rate | Δreflection [CI] | truncated |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for a in result["arms"]:
        lines.append(
            f"| {a['name']} | {a['vector']} | {a['strength']:g} "
            f"| {a['accuracy']:.3f} [{a['accuracy_ci'][0]:.3f}, {a['accuracy_ci'][1]:.3f}] "
            f"| {a['delta_accuracy']:+.3f} [{a['delta_accuracy_ci'][0]:+.3f}, {a['delta_accuracy_ci'][1]:+.3f}] "
            f"| {a['mcnemar_p']:.3g} | {a['mean_tokens']:.1f} | {a['delta_tokens_pct']:+.1f} "
            f"| {a['reflection_rate']:.3f} | [{a['reflection_delta_ci'][0]:+.3f}, {a['reflection_delta_ci'][1]:+.3f}] "
            f"| {a['truncation_rate']:.3f} |"
        )
    lines += [
        "",
        f"Baseline: accuracy {base['accuracy']:.3f}, reflection rate {base['reflection_rate']:.3f}, "
        f"mean tokens {base['mean_tokens']:.1f}.",
        "",
        _by_reflection_line(result["baseline_by_reflection"]),
        "",
        "Random controls, each with its cosine with the reflection vector (the strength along the vector it implies): "
        + "; ".join(
            f"{a['name']} {a['cosine_with_vector']:+.4f} ({a['strength_along_vector']:+.4f})"
            for a in result["arms"]
            if "cosine_with_vector" in a
        )
        + ".",
        "",
        "## Targets",
        "",
    ]
    for name, target in result["targets"].items():
        lines.append(f"- **{name}**: {'met' if target['met'] else 'NOT met'} — `{json.dumps(target)}`")
    lines += [
        "",
        "![accuracy vs tokens](reflection_demo/accuracy_vs_tokens.png)",
        "",
        "![reflection vs strength](reflection_demo/reflection_vs_strength.png)",
        "",
    ]
    return "\n".join(lines)


def _by_reflection_line(split: dict[str, Any]) -> str:
    r, n = split["reflective"], split["non_reflective"]
    return (
        f"Within the baseline arm, responses that reflected were right {r['accuracy']:.3f} of the time (n = {r['n']}), "
        f"those that did not {n['accuracy']:.3f} (n = {n['n']})."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=1)
    parser.add_argument("--strengths", default="-2,-1,-0.5,0,0.5,1,2")
    parser.add_argument("--random-strengths", default="-2,2")
    parser.add_argument("--random-control", default="plain", help="plain | orthogonal | both (ab run --random-control)")
    parser.add_argument("--temperature", type=float, default=0.7, help="the toy's own default (its generation config)")
    parser.add_argument("--max-tokens", type=int, default=384)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--term", default=None, help="JSON term fields for every steered arm (ab run --term)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    with demo_server() as url:
        presets = [m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]]
        assert {"reflect-up", "reflect-down"} <= set(presets), presets
        report_dir = args.out / "reflection_demo"
        ab = [
            STEERSERVE,
            "ab",
            "run",
            "--vector",
            "reflection",
            f"--strengths={args.strengths}",
            f"--random-strengths={args.random_strengths}",
            "--random-control",
            args.random_control,
            "--dataset",
            "demo",
            "--limit",
            str(args.items),
            "--samples",
            str(args.samples),
            "--temperature",
            str(args.temperature),
            "--max-tokens",
            str(args.max_tokens),
            "--concurrency",
            str(args.concurrency),
            "--base-url",
            url,
            "--out",
            str(report_dir),
            "--json",
        ]
        if args.term:
            ab += ["--term", args.term]
        started = time.monotonic()
        done = subprocess.run(ab, env=bench_env(), capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(done.stderr[-4000:])
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        vector = httpx.get(f"{url}/v1/steering/vectors/reflection").json()
    arms = summary["arms"]
    result = {
        "command": "python benchmarks/reflection_demo.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "ab_command": " ".join(shlex.quote(a) for a in ab[1:]).replace(url, "http://127.0.0.1:PORT"),
        "model": "steerserve-demo (toy)",
        "vector": {
            "id": "reflection",
            "layers": vector["layers"],
            "defaults": vector["defaults"],
            "provenance_counts": vector["provenance"].get("counts"),
        },
        "items": args.items,
        "samples": args.samples,
        "temperature": args.temperature,
        "max_tokens": args.max_tokens,
        "seconds": round(time.monotonic() - started, 1),
        "arms": arms,
        "targets": check_targets(arms),
        "baseline_by_reflection": accuracy_by_reflection(report_dir / "results.jsonl", "reflection@0"),
    }
    (args.out / "reflection_demo.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "reflection_demo.md").write_text(markdown(result))
    print(json.dumps(result["targets"], indent=2))


if __name__ == "__main__":
    main()
