"""How much does a random direction of the reflection vector's norm move the toy's reflection rate, and why?

The A/B's control (`steerserve ab run`) is one random direction. In a model of hidden size 256 a random direction
overlaps the vector by chance (cosine ~ 1/16), and the toy's reflection rate is steep in the vector's strength,
so the overlap alone can move it by points. This script measures many random directions at once, plain and with
their component along the vector removed (`clients.ab.runner.random_direction`, the A/B's own generator: seed 0
is the A/B's control), plus small strengths of the vector itself for its slope, and fits the plain directions'
effect against the strength along the vector their overlap implies.

It uses Hugging Face `generate` with the design screen's forward hook (`add` on layer L's MLP output where the
input token is `\\n\\n`, the A/B's term), on the A/B's held-out problems with common sampling seeds per arm: a
GPU-speed diagnostic of the shipped toy, not the product path (`reflection_demo.py` has that).

    python research/random_control_spread.py --seeds 8 --strength 0.5 --out benchmarks/results   # CUDA
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from clients.ab.report import boot_ci, bootstrap_draws  # noqa: E402

DEMO = ROOT / "steering" / "models" / "demo"


def arm_effects(reflected: dict[str, np.ndarray], base: str, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Per arm: reflection rate, and its difference from `base` with a paired-bootstrap 95 % CI over problems."""
    draws = bootstrap_draws(len(reflected[base]), seed)
    out = {}
    for name, flags in reflected.items():
        diff = flags.astype(float) - reflected[base].astype(float)
        out[name] = {
            "reflection_rate": round(float(flags.mean()), 4),
            "delta": round(float(diff.mean()), 4),
            "delta_ci": boot_ci(diff, draws),
        }
    return out


def fit(xs: list[float], ys: list[float]) -> dict[str, float]:
    """Least-squares line y = a + b x and the correlation."""
    x, y = np.asarray(xs), np.asarray(ys)
    slope, intercept = np.polyfit(x, y, 1)
    return {
        "slope": round(float(slope), 3),
        "intercept": round(float(intercept), 4),
        "r": round(float(np.corrcoef(x, y)[0, 1]), 3),
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Random controls on the toy: chance overlap with the reflection vector",
        "",
        *([result["note"], ""] if result.get("note") else []),  # e.g. which toy, when the bundled one has changed
        f"Command: `{result['command']}` ({result['device']}, {result['seconds']} s). Hugging Face `generate` with a "
        "forward hook, not the server; "
        f"{result['items']} A/B problems per arm, temperature {result['temperature']}, common seeds.",
        "",
        "| arm | cosine with vector | strength along vector | reflection rate | Δ vs baseline [95 % CI] |",
        "|---|---|---|---|---|",
    ]
    for name, arm in result["arms"].items():
        # round first, then add 0.0: a cosine of -1e-8 (an orthogonal direction) prints +0.0000, not -0.0000
        cos = "" if arm.get("cosine") is None else f"{round(arm['cosine'], 4) + 0.0:+.4f}"
        along = f"{round(arm['along'], 4) + 0.0:+.4f}"
        lines.append(
            f"| {name} | {cos} | {along} | {arm['reflection_rate']:.3f} "
            f"| {arm['delta']:+.3f} [{arm['delta_ci'][0]:+.3f}, {arm['delta_ci'][1]:+.3f}] |"
        )
    s = result["summary"]
    lines += [
        "",
        f"- The vector's own slope near 0 (arms at ±{result['small_strength']}): {s['vector_slope']:+.2f} reflection "
        "per unit strength.",
        f"- Plain random arms, Δ against the strength along the vector their overlap implies: slope "
        f"{s['plain_fit']['slope']:+.2f}, r = {s['plain_fit']['r']:+.2f}.",
        f"- Arms outside ±3 points: plain {s['plain_outside_3pt']} of {s['plain_arms']}, orthogonal "
        f"{s['orthogonal_outside_3pt']} of {s['orthogonal_arms']}.",
        f"- Mean |Δ|: plain {s['plain_mean_abs_delta']:.3f}, orthogonal {s['orthogonal_mean_abs_delta']:.3f}.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=8, help="random directions (seeds 0..N-1)")
    parser.add_argument("--strength", type=float, default=0.5, help="the random arms' |strength|")
    parser.add_argument("--small-strength", type=float, default=0.05, help="the vector's own arms, for its slope")
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    import torch
    import transformers
    from safetensors.numpy import load_file

    from clients.ab.datasets import demo_items
    from clients.ab.runner import random_direction
    from research.demo_design_screen import generate
    from research.toy.train import user_prompt
    from steering.reflection import count_markers

    started = time.time()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = transformers.LlamaForCausalLM.from_pretrained(str(DEMO), dtype=torch.float32).to(device).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(DEMO))
    tensors = load_file(str(DEMO / "steerserve" / "reflection.safetensors"))
    (name, vector), *more = tensors.items()
    assert not more, "one-layer vector expected"
    layer = int(name.split(".")[1])
    prompts = [user_prompt(item.prompt) for item in demo_items(args.items)]

    def reflected(direction: Any, strength: float) -> np.ndarray:
        steer = None if strength == 0 else (layer, np.asarray(direction, dtype=np.float32), strength)
        flags: list[bool] = []
        for start in range(0, len(prompts), 500):
            outs = generate(model, tok, prompts[start : start + 500], args.temperature, steer, seed=start)
            flags += [count_markers(text) > 0 for text, _, _ in outs]
        return np.asarray(flags)

    s, small = args.strength, args.small_strength
    flags = {"baseline": reflected(vector, 0.0)}
    meta: dict[str, dict[str, Any]] = {"baseline": {"along": 0.0}}
    for strength in (-s, -small, small, s):
        flags[f"reflection@{strength:g}"] = reflected(vector, strength)
        meta[f"reflection@{strength:g}"] = {"along": strength}
    for seed in range(args.seeds):
        for kind, orthogonal in (("random", False), ("random-orth", True)):
            direction, cosine = random_direction(tensors, seed, orthogonal)
            for strength in (-s, s):
                arm = f"{kind}{seed}@{strength:g}"
                flags[arm] = reflected(direction[name], strength)
                meta[arm] = {"cosine": round(cosine, 6), "along": round(strength * cosine, 6) + 0.0}
    effects = arm_effects(flags, "baseline")
    arms = {arm: {**meta[arm], **effects[arm]} for arm in flags}
    plain = [a for k, a in arms.items() if k.startswith("random") and not k.startswith("random-orth")]
    orth = [a for k, a in arms.items() if k.startswith("random-orth")]
    summary = {
        "vector_slope": round(
            (arms[f"reflection@{small:g}"]["delta"] - arms[f"reflection@{-small:g}"]["delta"]) / (2 * small), 3
        ),
        "plain_fit": fit([a["along"] for a in plain], [a["delta"] for a in plain]),
        "plain_arms": len(plain),
        "orthogonal_arms": len(orth),
        "plain_outside_3pt": sum(abs(a["delta"]) > 0.03 for a in plain),
        "orthogonal_outside_3pt": sum(abs(a["delta"]) > 0.03 for a in orth),
        "plain_mean_abs_delta": round(float(np.mean([abs(a["delta"]) for a in plain])), 4),
        "orthogonal_mean_abs_delta": round(float(np.mean([abs(a["delta"]) for a in orth])), 4),
    }
    result = {
        "command": "python research/random_control_spread.py " + " ".join(sys.argv[1:]),
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "seconds": round(time.time() - started),
        "items": args.items,
        "temperature": args.temperature,
        "layer": layer,
        "small_strength": small,
        "arms": arms,
        "summary": summary,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "random_control_spread.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "random_control_spread.md").write_text(markdown(result))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
