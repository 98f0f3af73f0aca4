"""Speculative decoding with steering: n-gram (prompt lookup) speculation, unsteered and steered, vs no speculation.

Two engines of the same model live side by side, one with vLLM's n-gram speculation and one without; each
repetition runs four arms in rotating order (no speculation / speculation x unsteered / steered), the same
requests every time: the model copies a passage of its own earlier answers (`--traces`), the kind of output
prompt lookup drafts well, for exactly `--max-tokens` tokens (EOS ignored, so every arm does the same work).
Greedy, so every arm's text is fixed: with and without speculation the tokens must
be identical, steered and unsteered alike. Reported per arm: generated tok/s (median, bootstrap 95 % CI), the
acceptance rate (accepted / drafted tokens, vLLM's own counters) and mean accepted tokens per draft; ratios are
paired per repetition.

    python benchmarks/speculative.py --model smollm2-135m-instruct --out benchmarks/results/speculative_smollm2.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.engine_overhead import bootstrap_median_ci, model_path  # noqa: E402
from steering.config import EngineSteeringConfig  # noqa: E402
from steering.engine import EngineSettings, SteeringEngine  # noqa: E402
from steering.spec import ResolvedSpec, SteeringTerm  # noqa: E402
from steering.vectors import SteeringVector  # noqa: E402

ARMS = ("plain_unsteered", "plain_steered", "ngram_unsteered", "ngram_steered")


def spec_counts() -> tuple[float, float, float]:
    """(drafts, draft tokens, accepted tokens) so far, from vLLM's spec-decode counters in this process."""
    from vllm.v1.metrics.reader import Counter, get_metrics_snapshot

    names = ("vllm:spec_decode_num_drafts", "vllm:spec_decode_num_draft_tokens", "vllm:spec_decode_num_accepted_tokens")
    totals = dict.fromkeys(names, 0.0)
    for metric in get_metrics_snapshot():
        if isinstance(metric, Counter) and metric.name in totals:
            totals[metric.name] += metric.value
    return totals[names[0]], totals[names[1]], totals[names[2]]


def copy_prompts(engine: SteeringEngine, traces: Path, count: int, words: int) -> list[list[int]]:
    prompts: list[list[int]] = []
    for line in traces.read_text().splitlines():
        if len(prompts) == count:
            break
        passage = " ".join(json.loads(line)["completion"].split()[:words])
        if len(passage.split()) < words // 2:
            continue
        message = f"Copy the following text exactly, word for word.\n\n{passage}"
        ids = engine.tokenizer.apply_chat_template(
            [{"role": "user", "content": message}], add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"]
        prompts.append([int(t) for t in ids])
    return prompts


async def run_batch(
    engine: SteeringEngine, prompts: list[list[int]], spec: ResolvedSpec | None, max_tokens: int, tag: str
) -> tuple[list[list[int]], float]:
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)

    async def one(i: int) -> list[int]:
        final = None
        async for out in engine.generate(prompts[i], params, f"{tag}-{i}", spec, cache_salt=tag):
            final = out
        assert final is not None
        return list(final.outputs[0].token_ids)

    start = time.perf_counter()
    outputs = list(await asyncio.gather(*(one(i) for i in range(len(prompts)))))
    return outputs, time.perf_counter() - start


async def main(args: argparse.Namespace) -> dict[str, Any]:
    path, description = model_path(args.model)
    common: dict[str, Any] = dict(
        model=str(path), dtype="float32", max_model_len=1024, seed=0, steering=EngineSteeringConfig(max_configs=8)
    )
    plain = SteeringEngine.create(EngineSettings(**common, log_stats=False))
    speculative = {"method": "ngram", "num_speculative_tokens": args.k, "prompt_lookup_min": 2, "prompt_lookup_max": 4}
    ngram = SteeringEngine.create(EngineSettings(**common, extra=(("speculative_config", speculative),)))
    shape = plain.shape
    rng = np.random.default_rng(0)
    layer = shape.num_layers // 2
    vector = SteeringVector("v", {layer: rng.standard_normal(shape.hidden_size).astype(np.float32)})
    term = SteeringTerm(vector="v", strength=args.strength, layers=[layer])
    specs = {
        name: engine.resolve([term], lambda _i, _v: vector) for name, engine in (("plain", plain), ("ngram", ngram))
    }
    prompts = copy_prompts(plain, args.traces, args.requests, args.words)
    for name, engine in (("plain", plain), ("ngram", ngram)):
        await run_batch(engine, prompts, specs[name], args.max_tokens, f"warm-{name}")
    runs: list[dict[str, Any]] = []
    texts: dict[str, list[list[int]]] = {}
    for rep in range(args.reps):
        for arm in ARMS[rep % 4 :] + ARMS[: rep % 4]:
            engine_name, steering = arm.split("_")
            engine = ngram if engine_name == "ngram" else plain
            before = spec_counts()
            spec = specs[engine_name] if steering == "steered" else None
            outputs, seconds = await run_batch(engine, prompts, spec, args.max_tokens, f"{arm}-{rep}")
            after = spec_counts()
            drafts, drafted, accepted = (a - b for a, b in zip(after, before, strict=True))
            tokens = sum(len(o) for o in outputs)
            texts.setdefault(arm, outputs)
            assert texts[arm] == outputs, f"{arm}: greedy output changed between repetitions"
            runs.append(
                {"rep": rep, "arm": arm, "tokens": tokens, "seconds": seconds, "tok_per_s": tokens / seconds}
                | ({"drafts": drafts, "drafted": drafted, "accepted": accepted} if engine_name == "ngram" else {})
            )
            print(f"rep {rep} {arm:>16}: {tokens / seconds:7.1f} tok/s", flush=True)
    plain.shutdown()
    ngram.shutdown()
    return summarize(args, description, runs, texts)


def summarize(
    args: argparse.Namespace, description: str, runs: list[dict[str, Any]], texts: dict[str, list[list[int]]]
) -> dict[str, Any]:
    by_arm = {arm: [r for r in runs if r["arm"] == arm] for arm in ARMS}
    arms: dict[str, Any] = {}
    for arm, rows in by_arm.items():
        rates = [r["tok_per_s"] for r in rows]
        entry: dict[str, Any] = {"tok_per_s": float(np.median(rates)), "ci": bootstrap_median_ci(rates)}
        if "drafted" in rows[0]:
            drafted, accepted, drafts = (sum(r[k] for r in rows) for k in ("drafted", "accepted", "drafts"))
            entry.update(acceptance_rate=accepted / drafted if drafted else 0.0, accepted_per_draft=accepted / drafts)
        arms[arm] = entry

    def ratio(num: str, den: str) -> dict[str, Any]:
        values = [n["tok_per_s"] / d["tok_per_s"] for n, d in zip(by_arm[num], by_arm[den], strict=True)]
        return {"median": float(np.median(values)), "ci": bootstrap_median_ci(values)}

    return {
        "model": description,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "workload": {k: getattr(args, k) for k in ("requests", "words", "max_tokens", "reps", "k", "strength")},
        "arms": arms,
        "ratios": {
            "ngram/plain, unsteered": ratio("ngram_unsteered", "plain_unsteered"),
            "ngram/plain, steered": ratio("ngram_steered", "plain_steered"),
            "steered/unsteered, plain": ratio("plain_steered", "plain_unsteered"),
            "steered/unsteered, ngram": ratio("ngram_steered", "ngram_unsteered"),
        },
        "identical_with_and_without_speculation": {
            "unsteered": texts["ngram_unsteered"] == texts["plain_unsteered"],
            "steered": texts["ngram_steered"] == texts["plain_steered"],
        },
        "steered_requests_changed": sum(
            a != b for a, b in zip(texts["plain_steered"], texts["plain_unsteered"], strict=True)
        ),
        "runs": runs,
        "command": "python " + " ".join(["benchmarks/speculative.py", *sys.argv[1:]]),
    }


def markdown(res: dict[str, Any]) -> str:
    w = res["workload"]
    lines = [
        "# Speculative decoding (n-gram) with steering",
        "",
        f"{res['model']}. Machine: {res['machine']}.",
        f"{w['requests']} concurrent greedy requests copying a {w['words']}-word passage, {w['max_tokens']} "
        f"tokens each (EOS ignored); {w['reps']} repetitions, arms in rotating order; n-gram k = {w['k']}; "
        f"steered = add at the middle layer, strength {w['strength']} (changed {res['steered_requests_changed']} of "
        f"{w['requests']} outputs).",
        "",
        f"Command: `{res['command']}`",
        "",
        "| arm | tok/s (median) | 95 % CI | acceptance rate | accepted per draft |",
        "|---|---|---|---|---|",
    ]
    for arm, e in res["arms"].items():
        rate = f"{e['acceptance_rate']:.3f}" if "acceptance_rate" in e else "–"
        per = f"{e['accepted_per_draft']:.2f}" if "accepted_per_draft" in e else "–"
        lines.append(f"| {arm} | {e['tok_per_s']:.1f} | [{e['ci'][0]:.1f}, {e['ci'][1]:.1f}] | {rate} | {per} |")
    lines += ["", "| ratio (paired per repetition) | median | 95 % CI |", "|---|---|---|"]
    for name, r in res["ratios"].items():
        lines.append(f"| {name} | {r['median']:.3f} | [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}] |")
    same = res["identical_with_and_without_speculation"]
    lines += [
        "",
        f"Greedy tokens identical with and without speculation: unsteered {same['unsteered']}, steered "
        f"{same['steered']}.",
    ]
    return "\n".join(lines) + "\n"


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--traces", type=Path, default=Path("benchmarks/results/smollm2_reflection/traces.jsonl"))
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--words", type=int, default=60)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--k", type=int, default=3, help="draft tokens per step")
    parser.add_argument("--strength", type=float, default=4.0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/speculative_smollm2.json"))
    return parser.parse_args()


if __name__ == "__main__":
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    arguments = parse()
    result = asyncio.run(main(arguments))
    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    arguments.out.write_text(json.dumps(result, indent=1) + "\n")
    arguments.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    same = result["identical_with_and_without_speculation"]
    sys.exit(0 if all(same.values()) else 1)
