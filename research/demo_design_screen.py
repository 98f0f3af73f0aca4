"""Screen data designs for the toy demo model on a GPU before paying for a CPU training run.

Each design (a `TraceStyle`, plus layers, seed and the sampling temperature) is trained with the committed
script (`research.toy.train.train(device="cuda")`, its own process, all designs at once), then measured
on "extract"-split problems with Hugging Face `generate`: accuracy, reflection rate, tokens and the step-level
counts of `benchmarks/demo_behaviour.Tally`; a difference-of-means vector is taken from the model's own traces
(the pipeline's positions, `steering.extract.positions`) at the MLP output of the chosen layers, and added at
step delimiters with a forward hook (the product's `add` op gated to `\\n\\n`) over a sweep of strengths.

This is a *screen*, not the product path: the shipped model is trained on CPU and measured through the real
server (`benchmarks/reflection_demo.py`). The hook reproduced the server's numbers on the previous toy.

    python research/demo_design_screen.py --round 2 --out benchmarks/results   # on a machine with CUDA
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OLD = {"carry_slips": False, "p_error": 0.03, "p_catch": 0.85, "p_recheck": 0.15, "p_again": 0.5}  # toy v1
HARD = {"carry_slips": True, "p_error": 0.25, "p_drill_easy": 0.25, "p_catch": 0.95, "p_recheck": 0.2, "p_again": 0.5}
V5 = {**HARD, "p_recheck": 0.25, "p_again": 0.9}
HARD_RECHECKS = {"p_error": 0.125, "p_recheck": 0.1, "p_recheck_hard": 0.4, "p_drill_easy": 0.1}  # + the defaults
# The recipe every design starts from: the previous bundled toy's (SDPA, 64 traces per step), not train()'s
# defaults, which became the half-batch eager recipe of round 5 when that was shipped.
SCREEN_RECIPE: dict[str, Any] = {"attention": "sdpa", "batch_size": 64}
# How rounds 3 to 5 train and measure: 2,000 steps (round 5 sets its own), to fit 45 min on a slow CPU day.
CHEAP = {
    "steps": 2000,
    "items": 1000,
    "temperatures": [0.7],
    "strengths": [-0.75, -0.5, -0.25, 0.25, 0.5],
    "layers_from_top": [1],
    "min_tails": [10],
}
ROUNDS: dict[int, dict[str, Any]] = {
    1: {
        "steps": 3600,
        "items": 500,
        "temperatures": [0.7, 1.0],
        "strengths": [-1.0, -0.5, 0.25, 0.5, 1.0],
        "layers_from_top": [2, 1],
        "min_tails": [10, 2],
        "designs": {
            "v0_control": {"style": OLD, "temperature": 1.0},
            "v1_carry": {"style": HARD, "temperature": 0.7},
            "v2_carry_hardcheck": {"style": {**HARD, "p_recheck": 0.12, "p_recheck_hard": 0.4}, "temperature": 0.7},
            "v3_uniform_more_slips": {
                "style": {**OLD, "p_error": 0.12, "p_catch": 0.9, "p_recheck": 0.25},
                "temperature": 0.7,
            },
            "v4_carry_hardcheck_6l": {
                "style": {**HARD, "p_recheck": 0.12, "p_recheck_hard": 0.4},
                "temperature": 0.7,
                "layers": 6,
            },
            "v5_carry_again": {"style": V5, "temperature": 0.7},
        },
    },
    2: {
        "steps": 2800,
        "items": 1000,
        "temperatures": [0.6, 0.7],
        "strengths": [-1.0, -0.75, -0.5, -0.25, 0.25, 0.5, 1.0, 1.5],
        "layers_from_top": [1],
        "min_tails": [10],
        "designs": {
            "s1_v5": {"style": V5, "temperature": 0.7},
            "s2_v5_seed1": {"style": V5, "temperature": 0.7, "seed": 1},
            "s3_v5_fewer_slips": {"style": {**V5, "p_error": 0.15, "p_drill_easy": 0.15}, "temperature": 0.7},
            "s4_hardcheck_again": {"style": {**V5, "p_recheck": 0.12, "p_recheck_hard": 0.4}, "temperature": 0.7},
            "s5_v5_catch99": {"style": {**V5, "p_catch": 0.99, "p_recheck": 0.2}, "temperature": 0.7},
        },
    },
    # Round 3 (not yet run): does a recipe cheap enough for 45 min on a slow CPU day (eager attention, 2,000
    # steps) notice its slips on every seed? The bundled design against forgotten-carry drills on hard steps
    # (untrained, so the learned slip rate stays 0.25). One CPU run of the drill design, seed 0, did not notice
    # its slips at any checkpoint (`demo_hard_drills_cpu.md`); the probe column says which seeds and designs do.
    3: {
        **CHEAP,
        "designs": {
            f"{name}_seed{seed}": {"style": style, "temperature": 0.7, "seed": seed, "attention": "eager"}
            for name, style in (("t1_bundled", {}), ("t2_hard_drills", {"p_error": 0.1875, "p_drill_hard": 0.25}))
            for seed in (0, 1, 2)
        },
    },
    # Round 4: two ways to make a cheap recipe (eager, 48 traces x 2,000 steps: ~35 min on a slow
    # CPU day) reflect where it errs. The previous toy (SDPA 64 x 2,800) learns no comparison of numbers: its loss on
    # a re-check's verdict ("So it is 85, not 75" / "Yes") is at the level of guessing (`demo_loss_map.md`).
    # u1 weights the reflect-or-go-on token 5x in the loss (one CPU run at 2,400 steps did not notice its slips
    # by step 1,500: `demo_decision_weight_cpu.md`); u2 re-checks hard steps more often than easy ones, so that
    # reflection goes with the steps that can slip without the model having to tell a slip from a right result
    # (its CPU run, seed 0, 38 min, barely learned which steps are hard: `demo_hard_rechecks_cpu.md`).
    # Run on an H100: no seed of either noticed its slips (probe: slip within 0.01 of right hard steps, or below),
    # and both lost accuracy (u1 0.04 to 0.69, u2 0.60 to 0.64).
    4: {
        **CHEAP,
        "designs": {
            f"{name}_seed{seed}": {
                "style": style,
                "temperature": 0.7,
                "seed": seed,
                "attention": "eager",
                "batch_size": 48,
                "decision_weight": weight,
            }
            for name, style, weight in (("u1_dw5", {}, 5.0), ("u2_hard_rechecks", HARD_RECHECKS, 1.0))
            for seed in (0, 1, 2)
        },
    },
    # Round 5: the bundled data with half the batch (32 traces per step), which halves each step's compute but
    # keeps the updates. On CPU, SDPA 32 x 2,800 took 37.5 min and eager 32 x 3,600 took 46.3 min on a slow day,
    # and seed 0 of neither noticed its slips (`demo_half_batch_cpu.md`). Run on an H100: no seed noticed its
    # slips either (probe gap <= 0.02), yet every eager seed steered both ways, because a re-check that happens
    # catches a slip whether or not the model noticed it: -0.5 cut reflection to 0.40-0.62x and tokens by 22-34 %
    # for 2.0-2.9 points, +0.5 raised reflection 1.47-1.62x and accuracy by 1.1-5.0 points. The SDPA seeds were
    # less accurate (0.50-0.74) and one barely steered.
    5: {
        **CHEAP,
        "designs": {
            f"{name}_seed{seed}": {
                "style": {},
                "temperature": 0.7,
                "seed": seed,
                "attention": attention,
                "batch_size": 32,
                "steps": steps,
            }
            for name, attention, steps in (("h1_sdpa_b32", "sdpa", 2800), ("h2_eager_b32", "eager", 3600))
            for seed in (0, 1, 2)
        },
    },
}


def generate(
    model: Any, tok: Any, prompts: list[str], temperature: float, steer: tuple[int, Any, float] | None, seed: int
) -> list[tuple[str, int, list[int]]]:
    """Sampled completions (text, tokens incl. end-of-sequence, ids), optionally with `strength * vector` added
    to layer `layer`'s MLP output wherever the input token is a step delimiter."""
    import torch

    torch.manual_seed(seed)
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    delimiter = tok.convert_tokens_to_ids(tok.tokenize("\n\n"))[0]
    handles = []
    if steer is not None:
        layer, vector, strength = steer
        ids: dict[str, Any] = {}
        shift = strength * torch.as_tensor(vector, device=model.device, dtype=torch.float32)

        def keep_ids(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
            ids["now"] = kwargs.get("input_ids")

        def add(module: Any, args: Any, output: Any) -> Any:
            gate = (ids["now"] == delimiter).to(output.dtype).unsqueeze(-1)
            return output + gate * shift.to(output.dtype)

        handles.append(model.model.register_forward_pre_hook(keep_ids, with_kwargs=True))
        handles.append(model.model.layers[layer].mlp.register_forward_hook(add))
    try:
        with torch.no_grad():
            out = model.generate(
                **enc,
                do_sample=True,
                temperature=temperature,
                top_k=0,
                top_p=1.0,
                max_new_tokens=384,
                pad_token_id=tok.eos_token_id,
                eos_token_id=tok.eos_token_id,
            )
    finally:
        for handle in handles:
            handle.remove()
    results = []
    for row in out[:, enc["input_ids"].shape[1] :].tolist():
        row = row[: row.index(tok.eos_token_id) + 1] if tok.eos_token_id in row else row
        text_ids = [i for i in row if i != tok.eos_token_id]
        results.append((tok.decode(text_ids), len(row), text_ids))
    return results


def measure(
    model: Any, tok: Any, problems: list[Any], temperature: float, steer: tuple[int, Any, float] | None = None
) -> tuple[dict[str, Any], list[tuple[str, int, list[int]]]]:
    from research.demo_behaviour import Tally
    from research.toy.train import user_prompt

    tally = Tally()
    outs: list[tuple[str, int, list[int]]] = []
    for start in range(0, len(problems), 500):
        part = problems[start : start + 500]
        outs += generate(model, tok, [user_prompt(p.text) for p in part], temperature, steer, seed=start)
    split = {True: [0, 0], False: [0, 0]}
    for problem, (text, tokens, _) in zip(problems, outs, strict=True):
        before = tally.counts["correct"]
        tally.add_trace(problem, text, tokens)
        group = split["Wait" in text]
        group[0] += tally.counts["correct"] - before
        group[1] += 1
    summary: dict[str, Any] = {k: round(v, 4) if isinstance(v, float) else v for k, v in tally.summary().items()}
    summary["accuracy_reflective"] = round(split[True][0] / max(1, split[True][1]), 4)
    summary["accuracy_non_reflective"] = round(split[False][0] / max(1, split[False][1]), 4)
    return summary, outs


def diffmean(
    model: Any, tok: Any, problems: list[Any], outs: list[Any], layers: list[int], min_tails: list[int]
) -> dict[tuple[int, int], tuple[list[float], int, int]]:
    """Difference of means of MLP outputs, reflective minus non-reflective positions, per (layer, min_tail)."""
    import torch

    from research.toy.train import user_prompt
    from steering.extract.positions import trace_positions

    captured: dict[int, Any] = {}
    handles = [
        model.model.layers[layer].mlp.register_forward_hook(
            lambda m, a, o, layer=layer: captured.__setitem__(layer, o.float())
        )
        for layer in layers
    ]
    hidden = model.config.hidden_size
    sums = {
        (layer, tail, c): torch.zeros(hidden, device=model.device)
        for layer in layers
        for tail in min_tails
        for c in (0, 1)
    }
    counts = dict.fromkeys(sums, 0)
    try:
        for problem, (_, _, generated) in zip(problems, outs, strict=True):
            prompt = tok(user_prompt(problem.text), add_special_tokens=False)["input_ids"]
            ids = prompt + generated
            pieces = [tok.decode([i]) for i in ids]
            offsets, at = [], 0
            for piece in pieces:
                offsets.append((at, at + len(piece)))
                at += len(piece)
            with torch.no_grad():
                model(input_ids=torch.tensor([ids], device=model.device))
            for tail in min_tails:
                found = trace_positions("".join(pieces), offsets, start=len(prompt), min_tail=tail)
                for c, positions in ((1, found.reflective), (0, found.non_reflective)):
                    for layer in layers if positions else []:
                        sums[(layer, tail, c)] += captured[layer][0, positions].sum(0)
                        counts[(layer, tail, c)] += len(positions)
    finally:
        for handle in handles:
            handle.remove()
    out = {}
    for layer in layers:
        for tail in min_tails:
            r, n = counts[(layer, tail, 1)], counts[(layer, tail, 0)]
            vector = sums[(layer, tail, 1)] / max(1, r) - sums[(layer, tail, 0)] / max(1, n)
            out[(layer, tail)] = (vector.tolist(), r, n)
    return out


def run_design(name: str, design: dict[str, Any], plan: dict[str, Any], work: str, out_dir: str) -> None:
    import torch
    import transformers

    from research.toy.arith import TraceStyle, problems
    from research.toy.train import train

    model_dir = Path(work) / name
    log = (Path(work) / f"{name}.log").open("w")
    sys.stdout = sys.stderr = log
    started = time.time()
    torch.set_num_threads(2)
    layers = design.get("layers", 4)
    # what a design sets of its own over the recipe the screen was run against (the previous toy's)
    recipe = {
        **SCREEN_RECIPE,
        **{k: design[k] for k in ("seed", "attention", "batch_size", "decision_weight") if k in design},
    }
    summary = train(
        model_dir,
        steps=design.get("steps", plan["steps"]),
        style=TraceStyle(**design["style"]),
        device="cuda",
        layers=layers,
        log_every=100,
        **recipe,
    )
    result: dict[str, Any] = {"name": name, "design": design, "train": summary, "train_s": round(time.time() - started)}
    log_records = map(json.loads, (model_dir / "training_log.jsonl").read_text().splitlines())
    probes = [r["p_wait"] for r in log_records if "p_wait" in r]
    result["p_wait"] = probes[-1] if probes else None  # the trained model's teacher-forced slip-noticing probe

    def dump() -> None:
        result["total_s"] = round(time.time() - started)
        (Path(out_dir) / f"{name}.json").write_text(json.dumps(result, indent=1))

    model = transformers.LlamaForCausalLM.from_pretrained(str(model_dir)).to("cuda").eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    held = problems(7, plan["items"], "extract")
    for temperature in sorted({*plan["temperatures"], design["temperature"]}):
        result[f"base@{temperature}"], _ = measure(model, tok, held, temperature)
        dump()
    source = problems(0, max(50, plan["items"] // 2), "extract")  # traces for the vector: other problems
    _, traces = measure(model, tok, source, design["temperature"])
    chosen = [layers - k for k in plan["layers_from_top"]]
    for (layer, tail), (vector, reflective, non_reflective) in diffmean(
        model, tok, source, traces, chosen, plan["min_tails"]
    ).items():
        key = f"L{layer}_mt{tail}"
        norm = round(sum(x * x for x in vector) ** 0.5, 3)
        result[key] = {"positions": [reflective, non_reflective], "norm": norm, "sweep": {}}
        for strength in plan["strengths"]:
            result[key]["sweep"][str(strength)], _ = measure(
                model, tok, held, design["temperature"], (layer, vector, strength)
            )
            dump()


def best_arms(base: dict[str, Any], sweep: dict[str, dict[str, Any]]) -> dict[str, str | None]:
    """The issue's down and up rules (`reflection_demo.meets_down/up`) applied to one sweep (the screen's
    numbers, not the shipped result)."""
    from benchmarks.reflection_demo import meets_down, meets_up

    down = [s for s, a in sweep.items() if float(s) < 0 and meets_down(a, base)]
    up = [s for s, a in sweep.items() if float(s) > 0 and meets_up(a, base)]
    return {"down": ", ".join(down) or None, "up": ", ".join(up) or None}


def probe_cell(p_wait: dict[str, float | None] | None) -> str:
    if not p_wait or p_wait.get("slip") is None or p_wait.get("right_hard") is None:
        return "–"
    return f"{p_wait['slip']:.2f} / {p_wait['right_hard']:.2f}"


def markdown(rounds: dict[str, Any]) -> str:
    lines = [
        "# Toy demo data designs, screened on a GPU",
        "",
        "Each design trained with `research.toy.train` on CUDA (bf16 autocast; not bit-identical to CPU",
        "training), measured with Hugging Face `generate` on extract-split problems; the vector is a difference of",
        "means from the model's own traces at the last layer's MLP output, added at `\\n\\n` (the `add` op). A",
        "screen, not the shipped result: `reflection_demo.md` has that, through the real server.",
        "",
        "The probe column is `research.toy.probe` at the end of training (teacher-forced P(Wait) after a",
        "slip / after a right hard step, on held-out traces; rounds before 3 predate it).",
        "",
        "| round | design | T | accuracy | reflection | tokens | P(reflect \\| slip) | P(reflect \\| right step) "
        "| acc. reflective / not | strengths meeting down / up rules | probe: slip / right hard |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for number, entry in rounds.items():
        for name, r in entry["designs"].items():
            t = r["design"]["temperature"]
            base = r[f"base@{t}"]
            layer = r["design"].get("layers", 4) - 1
            sweep = r.get(f"L{layer}_mt10", {}).get("sweep", {})
            best = best_arms(base, sweep)
            lines.append(
                f"| {number} | {name} | {t} | {base['accuracy']:.3f} | {base['reflection_rate']:.3f} "
                f"| {base['mean_tokens']:.1f} | {base['p_reflect_after_wrong']:.2f} "
                f"| {base['p_reflect_after_right']:.2f} "
                f"| {base['accuracy_reflective']:.3f} / {base['accuracy_non_reflective']:.3f} "
                f"| {best['down'] or '–'} / {best['up'] or '–'} | {probe_cell(r.get('p_wait'))} |"
            )
    lines += ["", "Commands:", ""] + [
        f"- round {n}: `{e['command']}`" + (f" — {e['note']}" if e.get("note") else "") for n, e in rounds.items()
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--round", type=int, choices=sorted(ROUNDS), required=True)
    parser.add_argument("--designs", default=None, help="comma-separated subset of the round's designs")
    parser.add_argument("--work", type=Path, default=Path("/tmp/demo_design_screen"), help="models and logs")
    parser.add_argument("--deadline-s", type=float, default=1e9, help="stop designs still running after this")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    plan = ROUNDS[args.round]
    names = args.designs.split(",") if args.designs else list(plan["designs"])
    raw = args.work / f"round{args.round}"
    raw.mkdir(parents=True, exist_ok=True)
    context = mp.get_context("spawn")
    procs = [
        context.Process(target=run_design, args=(n, plan["designs"][n], plan, str(args.work), str(raw))) for n in names
    ]
    deadline = time.time() + args.deadline_s
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(max(1.0, deadline - time.time()))
        if proc.is_alive():
            proc.terminate()
    finished = {n: json.loads((raw / f"{n}.json").read_text()) for n in names if (raw / f"{n}.json").exists()}
    if len(finished) < len(names):
        print(f"no result (stopped before its first measurement): {sorted(set(names) - set(finished))}")
    merge(args.out, args.round, " ".join(sys.argv[1:]), finished)


def merge(out: Path, number: int, argv: str, designs: dict[str, Any], note: str = "") -> None:
    """Add one round's results to `demo_design_screen.json` and rewrite the table."""
    path = out / "demo_design_screen.json"
    rounds = json.loads(path.read_text()) if path.exists() else {}
    rounds[str(number)] = {"command": f"python research/demo_design_screen.py {argv}", "designs": designs}
    if note:
        rounds[str(number)]["note"] = note
    path.write_text(json.dumps(dict(sorted(rounds.items())), indent=1) + "\n")
    (out / "demo_design_screen.md").write_text(markdown(dict(sorted(rounds.items()))))


if __name__ == "__main__":
    main()
