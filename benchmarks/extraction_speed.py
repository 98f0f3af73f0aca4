"""Extraction speed: the seed method's difference of means over the same traces, steerserve vs Hugging Face.

The seed code runs each trace through the model alone with `output_hidden_states=True` and averages the hidden
states at reflective positions (the token before a reflection keyword) and at non-reflective step delimiters.
steerserve does the same inside its engine: `steering.extract.pipeline.run_extraction` (what the server's
extraction job and `steerserve vectors extract --traces` run) captures only the wanted rows of every trace, 8
traces in flight in the continuous batch.

Both sides use the same token ids (chat template + completion), the same positions (`trace_positions`, every
position kept, the engine's per-request capture capacity applied to both) and every layer. Reported: the
cosine between the two difference-of-means vectors per layer (target >= 0.999 everywhere) and the wall time
of gathering the rows (steerserve: until its layer scan starts; the scan's probes are extra work the seed
method does not do; HF: the forward passes and gathers). Target: steerserve >= 3x faster. HF runs first with
the machine to itself, then the engine starts (load and compile time not counted). Both get the same cores
(`--threads`, default all): HF as torch threads, the engine's worker as its OpenMP binding
(`VLLM_CPU_OMP_THREADS_BIND`, which otherwise keeps one core back for the API process).

    python benchmarks/extraction_speed.py --model smollm2-135m-instruct \
        --traces benchmarks/results/smollm2_reflection/traces.jsonl \
        --out benchmarks/results/extraction_speed_smollm2.json
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
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.engine_overhead import model_path  # noqa: E402
from steering.config import EngineSteeringConfig  # noqa: E402
from steering.engine import EngineSettings, SteeringEngine  # noqa: E402
from steering.extract.pipeline import token_texts  # noqa: E402
from steering.extract.positions import trace_positions  # noqa: E402
from steering.extract.request import ExtractionRequest, TraceIn  # noqa: E402

MAX_MODEL_LEN = 1024
CAPTURE_TOKENS = 1024


def trace_ids(tokenizer: Any, trace: TraceIn) -> tuple[list[int], int]:
    """What the pipeline feeds the engine: the prompt through the chat template, then the completion."""
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": trace.prompt}], add_generation_prompt=True, tokenize=True, return_dict=True
    )["input_ids"]
    completion = tokenizer.encode(trace.completion, add_special_tokens=False)
    return [int(t) for t in prompt] + [int(t) for t in completion], len(prompt)


def run_hf(path: Path, traces: list[TraceIn], horizon: int, capacity: int, threads: int) -> dict[str, Any]:
    """The seed code's way: one trace per forward pass, all hidden states, rows gathered on the host."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype="float32").eval()
    layers = model.config.num_hidden_layers
    last: dict[str, torch.Tensor] = {}
    handle = model.model.layers[-1].register_forward_hook(
        lambda _m, _a, out: last.__setitem__("h", out[0] if isinstance(out, tuple) else out)
    )  # HF's last hidden_states entry has the final norm applied: take the last block's own output
    positive: list[list[np.ndarray]] = [[] for _ in range(layers)]
    negative: list[list[np.ndarray]] = [[] for _ in range(layers)]
    tokens = 0
    started = time.perf_counter()
    with torch.inference_mode():
        for trace in traces:
            ids, start = trace_ids(tokenizer, trace)
            text, offsets = token_texts(tokenizer, ids)
            found = trace_positions(text, offsets, start=start, horizon=horizon)
            wanted = sorted(set(found.reflective + found.non_reflective))[:capacity]
            if not wanted or len(ids) >= MAX_MODEL_LEN:
                continue
            out = model(torch.tensor([ids]), output_hidden_states=True)
            tokens += len(ids)
            kept = set(wanted)
            pos = [p for p in found.reflective if p in kept]
            neg = [p for p in found.non_reflective if p in kept]
            for layer in range(layers):
                states = last["h"][0] if layer == layers - 1 else out.hidden_states[layer + 1][0]
                positive[layer].extend(states[pos].numpy())
                negative[layer].extend(states[neg].numpy())
    seconds = time.perf_counter() - started
    handle.remove()
    means = [
        np.mean(np.stack(positive[layer]), axis=0, dtype=np.float64)
        - np.mean(np.stack(negative[layer]), axis=0, dtype=np.float64)
        for layer in range(layers)
    ]
    return {
        "seconds": seconds,
        "tokens": tokens,
        "threads": torch.get_num_threads(),
        "reflective": len(positive[0]),
        "non_reflective": len(negative[0]),
        "directions": means,
    }


async def run_steerserve(path: Path, traces: list[TraceIn], horizon: int) -> dict[str, Any]:
    from steering.extract.pipeline import run_extraction

    engine = SteeringEngine.create(
        EngineSettings(  # type: ignore[call-arg]
            model=str(path),
            dtype="float32",
            max_model_len=MAX_MODEL_LEN,
            seed=0,
            log_stats=False,
            steering=EngineSteeringConfig(capture_tokens=CAPTURE_TOKENS),
        )
    )
    try:
        request = ExtractionRequest(id="bench", traces=traces, horizon=horizon, max_positions=100_000)
        stages: dict[str, float] = {}

        async def progress(stage: str, _fraction: float) -> None:
            stages.setdefault(stage, time.perf_counter())

        started = time.perf_counter()
        outcome = await run_extraction(engine, request, progress)
        finished = time.perf_counter()
        return {
            "seconds": stages.get("scanning layers", finished) - started,
            "seconds_with_scan": finished - started,
            "cores": os.environ["VLLM_CPU_OMP_THREADS_BIND"],
            "capacity": engine.activations.budget.capacity,
            "reflective": outcome.counts["reflective_used"],
            "non_reflective": outcome.counts["non_reflective_used"],
            "directions": [outcome.directions[layer].astype(np.float64) for layer in sorted(outcome.directions)],
        }
    finally:
        engine.shutdown()


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def markdown(res: dict[str, Any]) -> str:
    hf, ours = res["hf"], res["steerserve"]
    cosines = res["cosine_per_layer"]
    lines = [
        "# Extraction speed: difference of means over the same traces",
        "",
        f"{res['model']}; {res['traces']} traces ({res['tokens']} tokens through HF), every layer, fp32.",
        f"Machine: {res['machine']}.",
        "",
        f"Command: `{res['command']}`",
        "",
        "| side | rows reflective / non-reflective | seconds | tokens/s |",
        "|---|---|---|---|",
        f"| HF `output_hidden_states`, one trace at a time ({hf['threads']} torch threads) | "
        f"{hf['reflective']} / {hf['non_reflective']} | {hf['seconds']:.1f} | {res['tokens'] / hf['seconds']:.0f} |",
        f"| steerserve capture (`run_extraction`, until its layer scan; worker on cores {ours['cores']}) | "
        f"{ours['reflective']} / "
        f"{ours['non_reflective']} | {ours['seconds']:.1f} | {res['tokens'] / ours['seconds']:.0f} |",
        "",
        f"**Speed-up: {res['speedup']:.2f}x** (target >= 3x; with steerserve's layer scan counted: "
        f"{res['speedup_with_scan']:.2f}x).",
        f"**Cosine of the two vectors: min {min(cosines):.6f} over {len(cosines)} layers** (target >= 0.999); "
        f"median {float(np.median(cosines)):.6f}.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--traces", type=Path, default=Path("benchmarks/results/smollm2_reflection/traces.jsonl"))
    parser.add_argument("--horizon", type=int, default=50)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="cores for each side")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/extraction_speed.json"))
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0" if args.threads == 1 else f"0-{args.threads - 1}")
    path, description = model_path(args.model)
    traces = [TraceIn.model_validate_json(line) for line in args.traces.read_text().splitlines() if line.strip()]
    hf = run_hf(path, traces, args.horizon, CAPTURE_TOKENS, args.threads)
    ours = asyncio.run(run_steerserve(path, traces, args.horizon))
    assert (hf["reflective"], hf["non_reflective"]) == (ours["reflective"], ours["non_reflective"]), (hf, ours)
    cosines = [cosine(a, b) for a, b in zip(hf.pop("directions"), ours.pop("directions"), strict=True)]
    result = {
        "model": description,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "traces": len(traces),
        "tokens": hf["tokens"],
        "hf": hf,
        "steerserve": ours,
        "speedup": hf["seconds"] / ours["seconds"],
        "speedup_with_scan": hf["seconds"] / ours["seconds_with_scan"],
        "cosine_per_layer": cosines,
        "command": "python " + " ".join(sys.argv),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
