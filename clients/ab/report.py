"""The A/B report: per arm accuracy with a paired-bootstrap 95 % CI, Δaccuracy vs baseline with McNemar's exact
p, mean/median tokens, Δtokens %, reflection rate (with a paired CI of its difference), truncation; plus
`results.jsonl`, `summary.json`, `report.md` and two PNG plots."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import binomtest

from clients.ab.runner import RANDOM_CONTROLS, ArmSpec

BOOTSTRAP = 2000


def _matrix(rows: list[dict[str, Any]], arms: list[ArmSpec], field: str) -> tuple[list[str], np.ndarray]:
    """[item, arm] means of `field` over samples (items in a fixed order)."""
    items = sorted({r["item"] for r in rows})
    index = {item: i for i, item in enumerate(items)}
    arm_index = {a.name: j for j, a in enumerate(arms)}
    total = np.zeros((len(items), len(arms)))
    count = np.zeros((len(items), len(arms)))
    for r in rows:
        i, j = index[r["item"]], arm_index[r["arm"]]
        total[i, j] += float(r[field])
        count[i, j] += 1
    return items, total / np.maximum(count, 1)


def bootstrap_draws(items: int, seed: int) -> np.ndarray:
    """Resampled item indices, `BOOTSTRAP` x `items`; shared by every arm, so differences are paired."""
    return np.random.default_rng(seed).integers(0, items, size=(BOOTSTRAP, items))


def boot_ci(values: np.ndarray, draws: np.ndarray) -> list[float]:
    """95 % percentile-bootstrap CI of the mean of per-item `values` over `draws`."""
    means = values[draws].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return [round(float(lo), 4), round(float(hi), 4)]


def summarize(arms: list[ArmSpec], rows: list[dict[str, Any]], seed: int = 0) -> dict[str, Any]:
    baseline = next(a for a in arms if a.strength == 0)
    b = arms.index(baseline)
    _, correct = _matrix(rows, arms, "correct")
    _, reflected = _matrix(rows, arms, "reflected")
    draws = bootstrap_draws(correct.shape[0], seed)
    by_arm: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_arm[r["arm"]].append(r)
    base_rows = {(r["item"], r["sample"]): r for r in by_arm[baseline.name]}
    base_tokens = float(np.mean([r["completion_tokens"] for r in by_arm[baseline.name]]))
    out = []
    for j, arm in enumerate(arms):
        own = by_arm[arm.name]
        tokens = np.array([r["completion_tokens"] for r in own], dtype=float)
        wins = sum(1 for r in own if r["correct"] and not base_rows[(r["item"], r["sample"])]["correct"])
        losses = sum(1 for r in own if not r["correct"] and base_rows[(r["item"], r["sample"])]["correct"])
        p = binomtest(wins, wins + losses, 0.5).pvalue if wins + losses else 1.0
        out.append(
            {
                "name": arm.name,
                "vector": arm.vector,
                "strength": arm.strength,
                "n": len(own),
                "items": int(correct.shape[0]),
                "accuracy": round(float(np.mean([r["correct"] for r in own])), 4),
                "accuracy_ci": boot_ci(correct[:, j], draws),
                "delta_accuracy": round(float(correct[:, j].mean() - correct[:, b].mean()), 4),
                "delta_accuracy_ci": boot_ci(correct[:, j] - correct[:, b], draws),
                "mcnemar_p": round(float(p), 6),
                "mean_tokens": round(float(tokens.mean()), 2),
                "median_tokens": float(np.median(tokens)),
                "delta_tokens_pct": round(100 * (float(tokens.mean()) - base_tokens) / base_tokens, 2),
                "reflection_rate": round(float(np.mean([r["reflected"] for r in own])), 4),
                "reflection_delta_ci": boot_ci(reflected[:, j] - reflected[:, b], draws),
                "markers_per_1k_tokens": round(1000 * sum(r["markers"] for r in own) / max(1.0, tokens.sum()), 3),
                "truncation_rate": round(float(np.mean([r["finish_reason"] == "length" for r in own])), 4),
                "mean_latency_s": round(float(np.mean([r["latency_s"] for r in own])), 4),
            }
        )
        if arm.cosine is not None:  # a random control: its chance overlap with the vector, as a strength along it
            out[-1]["cosine_with_vector"] = arm.cosine
            out[-1]["strength_along_vector"] = round(arm.strength * arm.cosine, 6) + 0.0  # no "-0.0"
    return {"baseline": baseline.name, "arms": out}


def write_report(
    out_dir: Path, arms: list[ArmSpec], rows: list[dict[str, Any]], config: dict[str, Any], command: str
) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "results.jsonl").open("w") as f:
        for r in sorted(rows, key=lambda r: (r["item"], r["sample"], r["arm"])):
            f.write(json.dumps(r) + "\n")
    summary = summarize(arms, rows, int(config.get("seed", 0)))
    summary["config"] = config
    summary["command"] = command
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(summary, out_dir)
    (out_dir / "report.md").write_text(markdown(summary))
    return summary


def markdown(summary: dict[str, Any]) -> str:
    lines = [
        "# A/B report",
        "",
        f"Command: `{summary['command']}`",
        "",
        f"Baseline arm: `{summary['baseline']}`. CIs: paired bootstrap over items ({BOOTSTRAP} draws), 95 %. "
        "McNemar: exact test on discordant (item, sample) pairs vs the baseline.",
        "",
        "| arm | n | accuracy [95 % CI] | Δacc [CI] | McNemar p | mean tok | median tok | Δtok % "
        "| reflection | Δrefl [CI] | trunc |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for a in summary["arms"]:
        lines.append(
            f"| {a['name']} | {a['n']} | {a['accuracy']:.3f} [{a['accuracy_ci'][0]:.3f}, {a['accuracy_ci'][1]:.3f}] "
            f"| {a['delta_accuracy']:+.3f} [{a['delta_accuracy_ci'][0]:+.3f}, {a['delta_accuracy_ci'][1]:+.3f}] "
            f"| {a['mcnemar_p']:.3g} | {a['mean_tokens']:.1f} | {a['median_tokens']:.0f} "
            f"| {a['delta_tokens_pct']:+.1f} "
            f"| {a['reflection_rate']:.3f} | [{a['reflection_delta_ci'][0]:+.3f}, {a['reflection_delta_ci'][1]:+.3f}] "
            f"| {a['truncation_rate']:.3f} |"
        )
    controls = [a for a in summary["arms"] if "cosine_with_vector" in a]
    if controls:
        lines += ["", "Random controls (equal norm): cosine with the vector, and the strength along it:", ""]
        lines += [
            f"- {a['name']}: cosine {a['cosine_with_vector']:+.4f}, "
            f"i.e. {a['strength_along_vector']:+.4f} of the vector"
            for a in controls
        ]
    lines += [
        "",
        "![accuracy vs tokens](accuracy_vs_tokens.png)",
        "",
        "![reflection vs strength](reflection_vs_strength.png)",
        "",
    ]
    return "\n".join(lines)


def plot(summary: dict[str, Any], out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = summary["arms"]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for a in arms:
        color = "tab:gray" if "cosine_with_vector" in a else "tab:blue"
        lo, hi = a["accuracy_ci"]
        ax.errorbar(
            a["mean_tokens"], a["accuracy"], yerr=[[a["accuracy"] - lo], [hi - a["accuracy"]]], fmt="o", color=color
        )
        ax.annotate(a["name"], (a["mean_tokens"], a["accuracy"]), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("mean completion tokens")
    ax.set_ylabel("accuracy")
    ax.set_title("Accuracy vs reasoning cost per arm (95 % CI)")
    fig.tight_layout()
    fig.savefig(out_dir / "accuracy_vs_tokens.png", dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    baseline = [a for a in arms if a["strength"] == 0]
    controls = {label for _, label in RANDOM_CONTROLS.values()}
    for vector in dict.fromkeys(a["vector"] for a in arms):
        chosen = [a for a in arms if a["vector"] == vector] + (baseline if vector in controls else [])
        chosen.sort(key=lambda a: a["strength"])
        label, style = (f"{vector} direction (control)", "s--") if vector in controls else (vector, "o-")
        ax.plot([a["strength"] for a in chosen], [a["reflection_rate"] for a in chosen], style, label=label)
    ax.set_xlabel("strength")
    ax.set_ylabel("reflection rate (responses with ≥ 1 keyword)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "reflection_vs_strength.png", dpi=120)
    plt.close(fig)
