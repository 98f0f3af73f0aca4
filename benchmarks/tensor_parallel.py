"""Tensor parallelism: vLLM's CPU backend with tensor_parallel_size=2 against TP=1 on a tiny model (Llama by
default; `--arch qwen3_moe` or `mixtral` for an MoE, whose experts TP shards and whose output it all-reduces).

Both engines (one after the other, each in its own process tree) decode the same prompts greedily, unsteered and
with three steering configs (add on the residual stream, the paper's project op on the MLP output, a clamp);
the generated token ids must be identical. With TP each rank holds the full hidden state after the row-parallel
all-reduce, so every rank applies the same op to the same stream. vLLM's CPU backend binds one NUMA node per
rank by default; on a one-node machine the script names the cores (VLLM_CPU_OMP_THREADS_BIND="0|1").

    python benchmarks/tensor_parallel.py --out benchmarks/results
    python benchmarks/tensor_parallel.py --arch qwen3_moe --out benchmarks/results
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CONFIGS: dict[str, list[dict[str, Any]]] = {
    "unsteered": [],
    "add_residual": [{"vector": "v", "strength": 4.0, "layers": [1]}],
    "project_mlp": [{"vector": "v", "strength": -1.0, "op": "project", "site": "mlp", "layers": [2]}],
    "clamp_all_layers": [{"vector": "v", "strength": 3.0, "op": "clamp"}],
}


async def decode_all(model: Path, tp: int, prompts: list[list[int]], max_tokens: int) -> dict[str, Any]:
    from vllm import SamplingParams

    from steering.config import EngineSteeringConfig
    from steering.engine import EngineSettings, SteeringEngine
    from steering.spec import SteeringTerm
    from steering.vectors import SteeringVector

    engine = SteeringEngine.create(
        EngineSettings(
            model=str(model),
            dtype="float32",
            enforce_eager=True,
            max_model_len=512,
            tensor_parallel_size=tp,
            steering=EngineSteeringConfig(max_configs=8),
        )
    )
    try:
        hidden, layers = engine.shape.hidden_size, engine.shape.num_layers
        rng = np.random.default_rng(0)
        vector = SteeringVector("v", {k: rng.standard_normal(hidden).astype(np.float32) for k in range(layers)})

        def lookup(vector_id: str, version: int | None) -> SteeringVector:
            return vector

        outputs: dict[str, list[list[int]]] = {}
        started = time.perf_counter()
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
        for name, terms in CONFIGS.items():
            spec = engine.resolve([SteeringTerm(**t) for t in terms], lookup) if terms else None

            async def one(i: int, prompt: list[int], spec: Any = spec, name: str = name) -> list[int]:
                final = None
                async for out in engine.generate(prompt, params, f"tp{tp}-{name}-{i}", spec):
                    final = out
                assert final is not None
                return list(final.outputs[0].token_ids)

            outputs[name] = list(await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts))))
        return {"tokens": outputs, "seconds": time.perf_counter() - started}
    finally:
        engine.shutdown(timeout=0)  # the results are in: nothing to drain


def run_one(model: Path, tp: int, prompts: list[list[int]], max_tokens: int) -> dict[str, Any]:
    try:
        return asyncio.run(decode_all(model, tp, prompts, max_tokens))
    except Exception as exc:  # report why TP could not run here instead of a bare traceback
        return {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-4000:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--arch", default="llama", help="tiny model architecture (tests.fixtures.tiny)")
    parser.add_argument("--out", type=Path, default=None, help="write tensor_parallel[_ARCH].json here")
    parser.add_argument("--tp", type=int, default=None, help=argparse.SUPPRESS)  # child process: one engine
    parser.add_argument("--model", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    rng = np.random.default_rng(1)
    prompts = [rng.integers(3, 500, size=int(rng.integers(4, 20))).tolist() for _ in range(args.prompts)]
    if args.tp is not None:  # one engine per process: the TP=2 workers must not share a process with TP=1's
        print(json.dumps(run_one(args.model, args.tp, prompts, args.max_tokens)))
        return
    import subprocess

    from tests.fixtures.tiny import TinyModelSpec, build_tiny_model

    spec = TinyModelSpec(architecture=args.arch)
    model = build_tiny_model(spec)
    runs: dict[int, dict[str, Any]] = {}
    for tp in (1, 2):
        cmd = [sys.executable, __file__, "--tp", str(tp), "--model", str(model)]
        cmd += ["--prompts", str(args.prompts), "--max-tokens", str(args.max_tokens)]
        env = dict(os.environ)
        if tp > 1 and "VLLM_CPU_OMP_THREADS_BIND" not in env:
            # vLLM CPU auto-binds one NUMA node per rank; a 1-node machine needs the cores named: rank r on core r
            env["VLLM_CPU_OMP_THREADS_BIND"] = "|".join(str(r % (os.cpu_count() or 1)) for r in range(tp))
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, check=False, env=env)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        runs[tp] = json.loads(lines[-1]) if lines else {"error": f"exit {done.returncode}", "log": done.stderr[-4000:]}
    result: dict[str, Any] = {
        "model": f"tiny {args.arch} ({spec.num_layers} layers, hidden {spec.hidden_size}, {spec.num_heads} heads, "
        f"{spec.num_kv_heads} KV heads), fp32, eager"
    }
    if all("tokens" in runs[tp] for tp in (1, 2)):
        same = {name: runs[1]["tokens"][name] == runs[2]["tokens"][name] for name in CONFIGS}
        differs = {
            name: runs[1]["tokens"][name] != runs[1]["tokens"]["unsteered"] for name in CONFIGS if name != "unsteered"
        }
        result.update(
            identical=same,
            steering_changes_tokens=differs,
            seconds={f"tp{tp}": round(runs[tp]["seconds"], 2) for tp in (1, 2)},
            passed=all(same.values()) and all(differs.values()),
        )
    else:
        result.update(errors={f"tp{tp}": runs[tp].get("error") for tp in (1, 2)}, passed=False)
        result["logs"] = {f"tp{tp}": runs[tp].get("traceback") or runs[tp].get("log") for tp in (1, 2)}
    result["command"] = "python " + " ".join(["benchmarks/tensor_parallel.py", *sys.argv[1:]])
    print(json.dumps(result, indent=1))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        name = "tensor_parallel.json" if args.arch == "llama" else f"tensor_parallel_{args.arch}.json"
        (args.out / name).write_text(json.dumps(result, indent=1) + "\n")
    sys.exit(0 if result["passed"] else 1)


if __name__ == "__main__":
    main()
