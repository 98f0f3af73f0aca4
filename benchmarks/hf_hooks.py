"""steerserve against the Hugging Face hooks way of steering (what repeng / steering-vectors users do).

With a forward hook, one vector is active per forward pass, so requests that carry different vectors cannot
share a batch: they run one at a time. steerserve serves them in one continuous batch, each token reading its
own request's row. Two workloads, same model, prompts, lengths and greedy decoding on both sides:

  distinct   64 requests, each its own vector: HF `generate` batch 1 with a hook per request, vs steerserve
             with all 64 in flight at once
  shared     the same 64 requests, one vector for all: HF batched `generate` (left-padded batches of
             --batch) with one hook, vs steerserve with --batch requests in flight

Both sides add `strength * v` to the residual stream after block --layer (steerserve: op add, site residual).
HF runs first (its own process's threads, nothing else running), then the engine starts; each side is
measured --reps times. Throughput = generated tokens / wall time; the CI of a ratio is a bootstrap over the
repetitions of both sides (for HF batch 1, over its single requests). As a check that both run the same
steering, greedy tokens of the first --check requests are compared (fp32 on both sides).

    python benchmarks/hf_hooks.py --model smollm2-135m-instruct --out benchmarks/results/hf_hooks_smollm2.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.engine_overhead import model_path  # noqa: E402
from steering.config import EngineSteeringConfig  # noqa: E402
from steering.engine import EngineSettings, SteeringEngine  # noqa: E402
from steering.spec import ResolvedSpec, SteeringTerm  # noqa: E402
from steering.vectors import SteeringVector  # noqa: E402

TOPICS = (
    "the ocean", "mountains", "a violin", "bread", "the moon", "trains", "honey bees", "glaciers", "chess",
    "volcanoes", "a lighthouse", "coffee", "owls", "the desert", "rain", "bicycles",
)  # fmt: skip
ASKS = ("Tell me about {}.", "Write two sentences about {}.", "What is interesting about {}?", "Describe {}.")


def prompts(tokenizer: Any, count: int) -> list[list[int]]:
    texts = [ASKS[(i // len(TOPICS)) % len(ASKS)].format(TOPICS[i % len(TOPICS)]) for i in range(count)]
    return [
        list(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": t}], add_generation_prompt=True, tokenize=True, return_dict=True
            )["input_ids"]
        )
        for t in texts
    ]


def vectors(hidden: int, count: int, norm: float) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        v = rng.standard_normal(hidden)
        out.append((v / np.linalg.norm(v) * norm).astype(np.float32))
    return out


@contextmanager
def residual_hook(model: Any, layer: int, vector: torch.Tensor) -> Iterator[None]:
    """The hooks way: add the vector to block `layer`'s output stream for every token of the forward pass."""

    def hook(_module: Any, _args: Any, output: Any) -> Any:
        if isinstance(output, tuple):
            return (output[0] + vector, *output[1:])
        return output + vector

    handle = model.model.layers[layer].register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def hf_generate(model: Any, batch: list[list[int]], max_tokens: int, pad: int) -> tuple[list[list[int]], float]:
    width = max(len(p) for p in batch)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_tokens,
            min_new_tokens=max_tokens,
            do_sample=False,
            pad_token_id=pad,
        )
    seconds = time.perf_counter() - start
    return [row[width:].tolist() for row in out], seconds


def run_hf(args: argparse.Namespace, path: Path, ids: list[list[int]], vecs: list[np.ndarray]) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(os.cpu_count() or 1)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype="float32").eval()
    pad = AutoTokenizer.from_pretrained(str(path)).pad_token_id or 0
    tensors = [torch.from_numpy(v) for v in vecs]
    with residual_hook(model, args.layer, tensors[0]):
        hf_generate(model, ids[:2], 4, pad)  # warm-up
    per_request: list[tuple[int, float]] = []  # distinct: (tokens, seconds) of each batch-1 request
    tokens_of: dict[int, list[int]] = {}
    for _rep in range(args.hf_reps):
        for i, prompt in enumerate(ids):
            with residual_hook(model, args.layer, tensors[i]):
                (out,), seconds = hf_generate(model, [prompt], args.max_tokens, pad)
            per_request.append((len(out), seconds))
            tokens_of.setdefault(i, out)
        last = per_request[-len(ids) :]
        print(f"hf distinct rep: {sum(t for t, _ in last) / sum(s for _, s in last):.1f} tok/s", flush=True)
    shared: list[float] = []
    with residual_hook(model, args.layer, tensors[0]):
        for _rep in range(args.reps):
            tokens, seconds = 0, 0.0
            for b in range(0, len(ids), args.batch):
                outs, took = hf_generate(model, ids[b : b + args.batch], args.max_tokens, pad)
                tokens += sum(len(o) for o in outs)
                seconds += took
            shared.append(tokens / seconds)
            print(f"hf shared rep: {shared[-1]:.1f} tok/s", flush=True)
    return {"per_request": per_request, "shared": shared, "tokens": tokens_of}


async def run_steerserve(
    args: argparse.Namespace, path: Path, ids: list[list[int]], vecs: list[np.ndarray]
) -> dict[str, Any]:
    from vllm import SamplingParams

    engine = SteeringEngine.create(
        EngineSettings(  # type: ignore[call-arg]
            model=str(path),
            dtype="float32",
            max_model_len=512,
            seed=0,
            enable_prefix_caching=False,
            log_stats=False,
            steering=EngineSteeringConfig(max_configs=max(64, len(ids))),
        )
    )
    table = {f"v{i}": SteeringVector(f"v{i}", {args.layer: v}) for i, v in enumerate(vecs)}

    def spec(i: int) -> ResolvedSpec:
        term = SteeringTerm(vector=f"v{i}", strength=1.0, layers=[args.layer], op="add", site="residual")
        return engine.resolve([term], lambda vid, _v: table[vid])

    distinct_specs = [spec(i) for i in range(len(ids))]
    shared_spec = spec(0)
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0.0, ignore_eos=True)

    async def batch(specs: list[ResolvedSpec], tag: str, limit: int) -> tuple[float, list[list[int]]]:
        gate = asyncio.Semaphore(limit)

        async def one(i: int) -> list[int]:
            async with gate:
                final = None
                async for out in engine.generate(ids[i], params, f"{tag}-{i}", specs[i], cache_salt=tag):
                    final = out
            assert final is not None
            return list(final.outputs[0].token_ids)

        start = time.perf_counter()
        outs = await asyncio.gather(*(one(i) for i in range(len(ids))))
        return sum(len(o) for o in outs) / (time.perf_counter() - start), list(outs)

    await batch(distinct_specs, "warm", len(ids))
    distinct, shared, tokens = [], [], []
    for rep in range(args.reps):
        rate, tokens = await batch(distinct_specs, f"distinct-{rep}", len(ids))
        distinct.append(rate)
        rate, _ = await batch([shared_spec] * len(ids), f"shared-{rep}", args.batch)
        shared.append(rate)
        print(f"steerserve rep {rep}: distinct {distinct[-1]:.1f}, shared {shared[-1]:.1f} tok/s", flush=True)
    errors = sum(s["errors"] for s in await engine.worker_stats())
    engine.shutdown()
    return {"distinct": distinct, "shared": shared, "tokens": dict(enumerate(tokens)), "worker_errors": errors}


def ratio_ci(num: list[float], den: list[float], seed: int = 0, rounds: int = 5000) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    a, b = np.asarray(num), np.asarray(den)
    ratios = np.median(rng.choice(a, (rounds, a.size)), axis=1) / np.median(rng.choice(b, (rounds, b.size)), axis=1)
    return float(np.quantile(ratios, 0.025)), float(np.quantile(ratios, 0.975))


def hf_batch1_rate(per_request: list[tuple[int, float]], seed: int = 0, rounds: int = 5000) -> list[float]:
    """Bootstrap replicates of HF's batch-1 throughput (total tokens / total time over resampled requests)."""
    rng = np.random.default_rng(seed)
    tokens = np.array([t for t, _ in per_request], dtype=float)
    seconds = np.array([s for _, s in per_request])
    picks = rng.integers(0, tokens.size, (rounds, tokens.size))
    return list(tokens[picks].sum(axis=1) / seconds[picks].sum(axis=1))


def summarize(args: argparse.Namespace, description: str, hf: dict[str, Any], ours: dict[str, Any]) -> dict[str, Any]:
    hf_rate = sum(t for t, _ in hf["per_request"]) / sum(s for _, s in hf["per_request"])
    hf_boot = hf_batch1_rate(hf["per_request"])
    ours_boot = np.median(
        np.random.default_rng(1).choice(np.asarray(ours["distinct"]), (len(hf_boot), len(ours["distinct"]))), axis=1
    )
    distinct_ratio = statistics.median(ours["distinct"]) / hf_rate
    distinct_ci = np.quantile(ours_boot / np.asarray(hf_boot), [0.025, 0.975]).tolist()
    shared_ratio = statistics.median(ours["shared"]) / statistics.median(hf["shared"])
    checked = range(min(args.check, len(ours["tokens"])))
    same = sum(hf["tokens"][i] == ours["tokens"][i] for i in checked)
    return {
        "model": description,
        "workload": {
            "requests": args.requests,
            "max_tokens": args.max_tokens,
            "layer": args.layer,
            "vector_norm": args.norm,
            "shared_batch": args.batch,
            "reps": args.reps,
            "hf_reps": args.hf_reps,
            "hf_threads": os.cpu_count(),
        },
        "tok_per_s": {
            "hf_batch1_distinct": hf_rate,
            "steerserve_distinct": statistics.median(ours["distinct"]),
            "hf_batched_shared": statistics.median(hf["shared"]),
            "steerserve_shared": statistics.median(ours["shared"]),
        },
        "ratios": {
            "distinct": {"median": distinct_ratio, "ci95": distinct_ci, "target": 10.0},
            "shared": {"median": shared_ratio, "ci95": list(ratio_ci(ours["shared"], hf["shared"])), "target": 1.0},
        },
        "greedy_check": {"requests": len(checked), "identical": same},
        "worker_errors": ours["worker_errors"],
        "runs": {
            "hf_shared": hf["shared"],
            "steerserve_distinct": ours["distinct"],
            "steerserve_shared": ours["shared"],
        },
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
        "command": "python " + " ".join(sys.argv),
    }


def markdown(res: dict[str, Any]) -> str:
    w, rate, ratios = res["workload"], res["tok_per_s"], res["ratios"]
    rows = [
        ("distinct", "hf_batch1_distinct", "steerserve_distinct", "HF batch 1, a hook per request"),
        ("shared", "hf_batched_shared", "steerserve_shared", f"HF batched generate ({w['shared_batch']})"),
    ]
    lines = [
        "# steerserve vs the Hugging Face hooks way",
        "",
        f"{res['model']}; {w['requests']} requests x {w['max_tokens']} greedy tokens; add to the residual after "
        f"block {w['layer']} (vector norm {w['vector_norm']}); HF on {w['hf_threads']} threads.",
        "",
        f"Command: `{res['command']}`",
        "",
        "| workload | HF way | HF tok/s | steerserve tok/s | ratio | 95 % CI | target |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, hf_key, ours_key, how in rows:
        lo, hi = ratios[key]["ci95"]
        lines.append(
            f"| {key} | {how} | {rate[hf_key]:.1f} | {rate[ours_key]:.1f} | {ratios[key]['median']:.2f} | "
            f"[{lo:.2f}, {hi:.2f}] | >= {ratios[key]['target']:g} |"
        )
    check = res["greedy_check"]
    lines += [
        "",
        f"Same steering on both sides: greedy tokens identical for {check['identical']} of the first "
        f"{check['requests']} distinct-vector requests (fp32). Worker errors: {res['worker_errors']}.",
        "",
    ]
    return "\n".join(lines)


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct", help="catalogued name or checkpoint path")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--norm", type=float, default=4.0, help="norm of each random vector (strength 1)")
    parser.add_argument("--batch", type=int, default=16, help="batch size of the shared-vector workload")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--hf-reps", type=int, default=1, help="passes over the batch-1 requests")
    parser.add_argument("--check", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/hf_hooks.json"))
    return parser.parse_args()


if __name__ == "__main__":
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    options = parse()
    path, description = model_path(options.model)
    from transformers import AutoTokenizer

    token_ids = prompts(AutoTokenizer.from_pretrained(str(path)), options.requests)
    hidden = json.loads((path / "config.json").read_text())["hidden_size"]
    vecs = vectors(hidden, options.requests, options.norm)
    hf_side = run_hf(options, path, token_ids, vecs)
    ours_side = asyncio.run(run_steerserve(options, path, token_ids, vecs))
    result = summarize(options, description, hf_side, ours_side)
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(result, indent=2) + "\n")
    options.out.with_suffix(".md").write_text(markdown(result) + "\n")
    print(markdown(result))
