"""Engine overhead of per-request steering, measured side by side in one run.

Two engines stay up for the whole run: one with the steerserve plugin (steering tables, op compiled in) and a
plain vLLM engine with plugins disabled (`VLLM_PLUGINS=""` in its processes, no steering config). Every
repetition runs each scenario once, in a rotating order, on the same prompts:

  none / none_again   no steering (A/A pair: the noise floor)
  one_config          all requests share one config on one layer (add, residual)
  distinct_configs    every request its own vector (one layer)
  all_layers          one config touching every layer
  project_op          the seed paper's operator: project on one layer's MLP output
  plain_vllm          the same workload on the plugin-free engine (what the always-on op costs)

Throughput = generated tokens / wall time of the batch. Ratios are paired per repetition against `none` of
the same repetition; we report medians with a bootstrap 95 % CI of the median.

    python benchmarks/engine_overhead.py --model 100m --reps 10 --out benchmarks/results/engine_overhead.json
    python benchmarks/engine_overhead.py --model smollm2-135m-instruct --reps 8   # a catalogued real model
    python benchmarks/engine_overhead.py --model /path/to/checkpoint             # any local checkpoint
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from steering.config import EngineSteeringConfig  # noqa: E402
from steering.engine import EngineSettings, SteeringEngine  # noqa: E402
from steering.spec import ResolvedSpec, SteeringTerm  # noqa: E402
from steering.vectors import SteeringVector  # noqa: E402
from tests.fixtures.tiny import TinyModelSpec, build_tiny_model  # noqa: E402

MODELS = {
    "tiny": TinyModelSpec(architecture="llama"),
    "100m": TinyModelSpec(
        architecture="llama",
        hidden_size=1024,
        num_layers=8,
        num_heads=16,
        num_kv_heads=16,
        intermediate_size=2816,
        vocab_size=512,
        initializer_range=0.02,
    ),
}
SCENARIOS = ("none", "none_again", "one_config", "distinct_configs", "all_layers", "project_op", "plain_vllm")
RATIO_KEYS = ("one_config", "distinct_configs", "all_layers", "project_op")


def bootstrap_median_ci(values: list[float], seed: int = 0, rounds: int = 5000) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    data = np.asarray(values)
    medians = np.median(rng.choice(data, size=(rounds, data.size), replace=True), axis=1)
    return float(np.quantile(medians, 0.025)), float(np.quantile(medians, 0.975))


def build_specs(engine: SteeringEngine, num_requests: int) -> dict[str, list[ResolvedSpec | None]]:
    shape = engine.shape
    rng = np.random.default_rng(0)
    mid = shape.num_layers // 2

    def vector(name: str, layers: list[int]) -> SteeringVector:
        return SteeringVector(name, {k: rng.standard_normal(shape.hidden_size).astype(np.float32) for k in layers})

    vectors = {"one": vector("one", [mid]), "all": vector("all", list(range(shape.num_layers)))}
    vectors.update({f"d{i}": vector(f"d{i}", [mid]) for i in range(num_requests)})

    def lookup(vector_id: str, _version: int | None) -> SteeringVector:
        return vectors[vector_id]

    def spec(**term: Any) -> ResolvedSpec:
        return engine.resolve([SteeringTerm(**term)], lookup)

    one = spec(vector="one", strength=0.05)
    return {
        "none": [None] * num_requests,
        "none_again": [None] * num_requests,
        "one_config": [one] * num_requests,
        "distinct_configs": [spec(vector=f"d{i}", strength=0.05) for i in range(num_requests)],
        "all_layers": [spec(vector="all", strength=0.05)] * num_requests,
        "project_op": [spec(vector="one", strength=0.5, op="project", site="mlp")] * num_requests,
    }


async def run_batch(
    engine: SteeringEngine, prompts: list[list[int]], specs: list[ResolvedSpec | None], max_tokens: int, tag: str
) -> tuple[int, float]:
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)

    async def one(i: int) -> int:
        final = None
        async for out in engine.generate(prompts[i], params, f"{tag}-{i}", specs[i], cache_salt=tag):
            final = out
        assert final is not None
        return len(final.outputs[0].token_ids)

    start = time.perf_counter()
    tokens = sum(await asyncio.gather(*(one(i) for i in range(len(prompts)))))
    return tokens, time.perf_counter() - start


def model_path(name: str) -> tuple[Path, str]:
    """A synthetic model (built offline), a catalogued real one (fetched once) or a local checkpoint; with its
    description for the report."""
    from steering.fetch import CATALOG, fetch
    from steering.settings import default_data_dir

    if name in MODELS:
        spec = MODELS[name]
        return build_tiny_model(spec), (
            f"{name}: {spec.architecture}, {spec.num_layers} layers, hidden {spec.hidden_size}, "
            f"~{param_count(spec) / 1e6:.1f}M params, float32"
        )
    path = fetch(name, default_data_dir()) if name in CATALOG else Path(name)
    config = json.loads((path / "config.json").read_text())
    return path, (
        f"{name}: {config['architectures'][0]}, {config['num_hidden_layers']} layers, hidden "
        f"{config['hidden_size']}, float32"
    )


async def main(args: argparse.Namespace) -> dict[str, Any]:
    path, description = model_path(args.model)
    common = dict(
        model=str(path),
        dtype="float32",
        enforce_eager=args.eager,
        max_model_len=512,
        seed=0,
        enable_prefix_caching=False,
        log_stats=False,
    )
    steered = SteeringEngine.create(EngineSettings(**common, steering=EngineSteeringConfig(max_configs=64)))  # type: ignore[arg-type]
    saved = os.environ.get("VLLM_PLUGINS")
    os.environ["VLLM_PLUGINS"] = ""  # the plain engine's processes load no plugin at all
    try:
        plain = SteeringEngine.create(EngineSettings(**common, steering=None))  # type: ignore[arg-type]
    finally:
        if saved is None:
            os.environ.pop("VLLM_PLUGINS", None)
        else:
            os.environ["VLLM_PLUGINS"] = saved
    rng = random.Random(0)
    prompts = [[rng.randrange(20, 500) for _ in range(args.prompt_len)] for _ in range(args.requests)]
    specs = build_specs(steered, args.requests)
    for name, engine, batch_specs in (
        ("warm", steered, specs["distinct_configs"]),
        ("warm-plain", plain, specs["none"]),
    ):
        await run_batch(engine, prompts, batch_specs, args.max_tokens, name)
    runs: list[dict[str, Any]] = []
    for rep in range(args.reps):
        order = list(SCENARIOS[rep % len(SCENARIOS) :] + SCENARIOS[: rep % len(SCENARIOS)])
        for scenario in order:
            engine = plain if scenario == "plain_vllm" else steered
            batch_specs = specs["none"] if scenario == "plain_vllm" else specs[scenario]
            await asyncio.sleep(args.pause)
            tokens, seconds = await run_batch(engine, prompts, batch_specs, args.max_tokens, f"{scenario}-{rep}")
            runs.append(
                {"rep": rep, "scenario": scenario, "tokens": tokens, "seconds": seconds, "tok_per_s": tokens / seconds}
            )
            print(f"rep {rep} {scenario:>17}: {tokens / seconds:8.1f} tok/s", flush=True)
    stats = await steered.worker_stats()
    steered.shutdown()
    plain.shutdown()
    return summarize(args, description, runs, stats)


def summarize(
    args: argparse.Namespace, description: str, runs: list[dict[str, Any]], stats: list[dict[str, Any]]
) -> dict[str, Any]:
    by = {(r["rep"], r["scenario"]): r["tok_per_s"] for r in runs}
    ratios: dict[str, float] = {}
    table: dict[str, dict[str, Any]] = {}
    for scenario in SCENARIOS:
        if scenario == "none":
            continue
        paired = [by[(rep, scenario)] / by[(rep, "none")] for rep in range(args.reps)]
        lo, hi = bootstrap_median_ci(paired)
        table[scenario] = {"median_ratio": statistics.median(paired), "ci95": [lo, hi]}
        if scenario in RATIO_KEYS:
            ratios[scenario] = statistics.median(paired)
    throughput = {s: statistics.median(by[(rep, s)] for rep in range(args.reps)) for s in SCENARIOS}
    return {
        "model": description,
        "ratios": ratios,
        "ratio_table": table,
        "median_tok_per_s": throughput,
        "workload": {
            "requests": args.requests,
            "prompt_len": args.prompt_len,
            "max_tokens": args.max_tokens,
            "reps": args.reps,
            "mode": "eager" if args.eager else "torch.compile",
        },
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
        "worker_errors": sum(s["errors"] for s in stats),
        "command": "python " + " ".join(sys.argv),
        "runs": runs,
    }


def param_count(spec: TinyModelSpec) -> int:
    h, i, layers, v = spec.hidden_size, spec.intermediate_size, spec.num_layers, spec.vocab_size
    kv = h * spec.num_kv_heads // spec.num_heads
    per_layer = h * h * 2 + h * kv * 2 + 3 * h * i + 2 * h
    return layers * per_layer + 2 * v * h + h


def markdown(results: list[dict[str, Any]]) -> str:
    lines = [
        "# Engine overhead of per-request steering",
        "",
        "Paired per repetition against `none` (no steering, plugin on); medians with bootstrap 95 % CI.",
        '`plain_vllm` = the same workload on a plugin-free engine (`VLLM_PLUGINS=""`), i.e. the cost of the',
        "always-on op. Targets: one_config >= 0.98, distinct_configs >= 0.97, all_layers >= 0.95, project_op >= 0.97.",
        "",
    ]
    for res in results:
        lines += [
            f"## {res['model']}",
            "",
            f"Workload: {res['workload']}; worker errors: {res['worker_errors']}",
            "",
            f"Command: `{res['command']}`",
            "",
            "| scenario | median tok/s | ratio vs none | 95 % CI |",
            "|---|---|---|---|",
        ]
        lines.append(f"| none | {res['median_tok_per_s']['none']:.1f} | 1 | – |")
        for scenario, row in res["ratio_table"].items():
            lo, hi = row["ci95"]
            lines.append(
                f"| {scenario} | {res['median_tok_per_s'][scenario]:.1f} | {row['median_ratio']:.3f} | "
                f"[{lo:.3f}, {hi:.3f}] |"
            )
        lines.append("")
    return "\n".join(lines)


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model",
        action="append",
        help=f"{' | '.join(sorted(MODELS))} (synthetic), a catalogued model (steering.fetch) or a checkpoint "
        "path; repeatable; default: tiny and 100m (the JSON's top level is the last one)",
    )
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--pause", type=float, default=0.3, help="seconds between batches (lets OpenMP threads idle)")
    parser.add_argument("--eager", action="store_true", help="enforce eager (default: vLLM's torch.compile)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/engine_overhead.json"))
    return parser.parse_args()


if __name__ == "__main__":
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    options = parse()
    results = []
    for model in options.model or ["tiny", "100m"]:
        options.model = model
        results.append(asyncio.run(main(options)))
    final = dict(results[-1])
    final["all_models"] = [{k: v for k, v in r.items() if k != "runs"} for r in results[:-1]]
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(final, indent=2) + "\n")
    options.out.with_suffix(".md").write_text(markdown(results) + "\n")
    print(markdown(results))
