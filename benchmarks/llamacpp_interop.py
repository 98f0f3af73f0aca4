"""GGUF control vectors against the real llama.cpp: which layer index means the same thing on both sides.

The same model on both sides: llama.cpp runs the GGUF that steerserve's SmolLM2 checkpoint was dequantized
from (Q4_1, so the two agree only as closely as Q4_1 matmuls allow: the unsteered row is that floor).
A random vector is written by steerserve's GGUF encoder as `direction.L` and applied in llama.cpp with its
own `llama_set_adapter_cvec` at scale S (the buffer is laid out as llama.cpp's `common_control_vector_load`
lays out a file: `direction.N` in row N-1); steerserve applies `add` at `residual` with strength S on layer
L-1, L and L+1. The row whose distributions and greedy text agree as closely as the unsteered pair is the
convention: `direction.N` = output of block N = steerserve layer N.

Not in CI: llama-cpp-python is an sdist (about 9 minutes to build on 2 cores). On these VMs llama.cpp's AMX
matmul segfaults, so the model is loaded with `use_extra_bufts=False` (the CLI's `--no-repack`).

    .venv/bin/pip install llama-cpp-python==0.3.36
    python benchmarks/llamacpp_interop.py --out benchmarks/results/llamacpp_interop.json
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from steering.config import EngineSteeringConfig  # noqa: E402
from steering.engine import EngineSettings, SteeringEngine  # noqa: E402
from steering.fetch import download_gguf, fetch  # noqa: E402
from steering.spec import SteeringTerm  # noqa: E402
from steering.vector_formats import encode  # noqa: E402
from steering.vectors import SteeringVector  # noqa: E402

MODEL = "smollm2-135m-instruct"
CHAT = ("What is the capital of France?", "Give me three tips for sleeping better.", "Why is the sky blue?")
RAW = ("The history of the bicycle begins", "Once upon a time, in a small village by the sea,")


def prompt_ids(tokenizer: Any) -> list[tuple[str, list[int]]]:
    out = []
    for text in CHAT:
        messages = [{"role": "user", "content": text}]
        rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
        ids = rendered["input_ids"]
        out.append((f"chat: {text}", list(ids)))
    for text in RAW:
        out.append((f"raw: {text}", list(tokenizer.encode(text, add_special_tokens=False))))
    return out


def gguf_rows(data: bytes, num_layers: int, hidden: int, scale: float) -> np.ndarray:
    """The [n_layers, hidden] buffer llama.cpp's common loader makes of a control-vector file (row N-1 holds
    `direction.N` times the scale)."""
    from gguf import GGUFReader

    with tempfile.NamedTemporaryFile(suffix=".gguf") as handle:
        handle.write(data)
        handle.flush()
        reader = GGUFReader(handle.name)
        rows = np.zeros((num_layers, hidden), dtype=np.float32)
        for tensor in reader.tensors:
            index = int(tensor.name.split(".")[1])
            rows[index - 1] += np.asarray(tensor.data, dtype=np.float32).reshape(-1) * scale
    return rows


class LlamaCpp:
    """llama.cpp through llama-cpp-python's low-level API: full next-token log-probs and greedy text."""

    def __init__(self, gguf_path: Path, threads: int) -> None:
        import llama_cpp.llama_cpp as low
        from llama_cpp import Llama

        default_params = low.llama_model_default_params

        def no_repack() -> Any:  # the high-level class has no switch for it: `--no-repack`
            params = default_params()
            params.use_extra_bufts = False
            return params

        low.llama_model_default_params = no_repack
        try:
            self.llm = Llama(model_path=str(gguf_path), n_ctx=512, n_threads=threads, logits_all=True, verbose=False)
        finally:
            low.llama_model_default_params = default_params

    def set_control(self, rows: np.ndarray | None) -> None:
        import llama_cpp

        ctx = self.llm._ctx.ctx
        if rows is None:
            code = llama_cpp.llama_set_adapter_cvec(ctx, None, 0, 0, 0, 0)
        else:
            flat = np.ascontiguousarray(rows, dtype=np.float32).reshape(-1)
            pointer = flat.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            code = llama_cpp.llama_set_adapter_cvec(ctx, pointer, flat.size, rows.shape[1], 1, rows.shape[0])
        if code != 0:
            raise RuntimeError(f"llama_set_adapter_cvec returned {code}")

    def run(self, ids: list[int], new_tokens: int) -> tuple[np.ndarray, list[int]]:
        self.llm.reset()
        self.llm.eval(ids)
        first = np.asarray(self.llm.scores[self.llm.n_tokens - 1], dtype=np.float64)
        logprobs = first - np.logaddexp.reduce(first)
        out: list[int] = []
        for _ in range(new_tokens):
            token = int(np.argmax(self.llm.scores[self.llm.n_tokens - 1]))
            out.append(token)
            self.llm.eval([token])
        return logprobs, out


async def steerserve_side(
    engine: SteeringEngine, prompts: list[tuple[str, list[int]]], spec: Any, new_tokens: int, tag: str
) -> list[tuple[dict[int, float], list[int]]]:
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=new_tokens, temperature=0.0, logprobs=20, ignore_eos=True)
    results = []
    for i, (_, ids) in enumerate(prompts):
        final = None
        async for out in engine.generate(ids, params, f"{tag}-{i}", spec, cache_salt=tag):
            final = out
        assert final is not None
        first = final.outputs[0].logprobs[0]
        results.append(({int(t): float(lp.logprob) for t, lp in first.items()}, list(final.outputs[0].token_ids)))
    return results


def compare(
    ours: list[tuple[dict[int, float], list[int]]], theirs: list[tuple[np.ndarray, list[int]]]
) -> dict[str, float]:
    """Mean |log p difference| over steerserve's top-20 next tokens, top-1 agreement, greedy agreement."""
    diffs, top1, prefix, identical = [], 0, [], 0
    for (top, greedy), (full, their_greedy) in zip(ours, theirs, strict=True):
        diffs.append(float(np.mean([abs(lp - full[t]) for t, lp in top.items()])))
        top1 += int(max(top, key=lambda t: top[t]) == int(np.argmax(full)))
        same = next((i for i, (a, b) in enumerate(zip(greedy, their_greedy, strict=True)) if a != b), len(greedy))
        prefix.append(same / len(greedy))
        identical += int(greedy == their_greedy)
    n = len(ours)
    return {
        "mean_abs_logprob_diff": float(np.mean(diffs)),
        "top1_agree": top1 / n,
        "greedy_prefix_fraction": float(np.mean(prefix)),
        "greedy_identical": identical / n,
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    from transformers import AutoTokenizer

    from steering.settings import default_data_dir

    checkpoint = fetch(MODEL, default_data_dir())
    gguf_path = download_gguf(MODEL, Path(tempfile.mkdtemp(prefix="interop-")))
    config = json.loads((checkpoint / "config.json").read_text())
    num_layers, hidden = int(config["num_hidden_layers"]), int(config["hidden_size"])
    prompts = prompt_ids(AutoTokenizer.from_pretrained(str(checkpoint)))
    rng = np.random.default_rng(args.seed)
    raw = rng.standard_normal(hidden)
    vector = (raw / np.linalg.norm(raw) * args.norm).astype(np.float32)
    L = args.layer
    data = encode({L: vector}, "gguf", num_layers=num_layers, metadata={"id": "interop"}, model_hint="llama")

    cpp = LlamaCpp(gguf_path, args.threads)
    cpp.set_control(None)
    cpp_plain = [cpp.run(ids, args.new_tokens) for _, ids in prompts]
    cpp.set_control(gguf_rows(data, num_layers, hidden, args.scale))
    cpp_steered = [cpp.run(ids, args.new_tokens) for _, ids in prompts]
    del cpp

    engine = SteeringEngine.create(
        EngineSettings(  # type: ignore[call-arg]
            model=str(checkpoint),
            dtype="float32",
            max_model_len=512,
            seed=0,
            enable_prefix_caching=False,
            enforce_eager=True,
            log_stats=False,
            steering=EngineSteeringConfig(max_configs=4, sites=("residual",)),
        )
    )
    stored = {f"at{k}": SteeringVector(f"at{k}", {k: vector}) for k in (L - 1, L, L + 1)}

    def spec(layer: int) -> Any:
        term = SteeringTerm(vector=f"at{layer}", strength=args.scale, layers=[layer], op="add", site="residual")
        return engine.resolve([term], lambda vid, _v: stored[vid])

    rows: list[dict[str, Any]] = []
    ours_plain = await steerserve_side(engine, prompts, None, args.new_tokens, "plain")
    rows.append({"llama_cpp": "no control vector", "steerserve": "unsteered", **compare(ours_plain, cpp_plain)})
    texts: dict[str, list[str]] = {}
    tokenizer = engine.tokenizer
    for layer in (L - 1, L, L + 1):
        ours = await steerserve_side(engine, prompts, spec(layer), args.new_tokens, f"at{layer}")
        rows.append(
            {
                "llama_cpp": f"direction.{L} x {args.scale:g}",
                "steerserve": f"add at residual, layer {layer}",
                **compare(ours, cpp_steered),
            }
        )
        texts[f"steerserve layer {layer}"] = [tokenizer.decode(greedy) for _, greedy in ours[:2]]
    rows.append(
        {"llama_cpp": f"direction.{L} x {args.scale:g}", "steerserve": "unsteered", **compare(ours_plain, cpp_steered)}
    )
    texts["llama.cpp unsteered"] = [tokenizer.decode(greedy) for _, greedy in cpp_plain[:2]]
    texts[f"llama.cpp direction.{L}"] = [tokenizer.decode(greedy) for _, greedy in cpp_steered[:2]]
    engine.shutdown()
    import llama_cpp

    return {
        "model": f"{MODEL}: steerserve fp32 checkpoint vs llama.cpp on the source GGUF ({gguf_path.name})",
        "llama_cpp_python": llama_cpp.__version__,
        "layer": L,
        "scale": args.scale,
        "vector_norm": args.norm,
        "prompts": [name for name, _ in prompts],
        "new_tokens": args.new_tokens,
        "rows": rows,
        "greedy_texts": texts,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
        "command": "python " + " ".join(sys.argv),
    }


def markdown(res: dict[str, Any]) -> str:
    lines = [
        "# GGUF control vectors: steerserve vs llama.cpp",
        "",
        f"{res['model']}; llama-cpp-python {res['llama_cpp_python']}. A random vector (norm {res['vector_norm']:g}) "
        f"exported by steerserve as `direction.{res['layer']}`, scale {res['scale']:g} in llama.cpp; steerserve "
        f"`add`/`residual` with the same strength on the layers below. {len(res['prompts'])} prompts "
        f"(chat and raw), {res['new_tokens']} greedy tokens.",
        "",
        f"Command: `{res['command']}`",
        "",
        "| llama.cpp | steerserve | mean abs log p diff (top-20) | top-1 agree | greedy prefix | greedy identical |",
        "|---|---|---|---|---|---|",
    ]
    for row in res["rows"]:
        lines.append(
            f"| {row['llama_cpp']} | {row['steerserve']} | {row['mean_abs_logprob_diff']:.3f} | "
            f"{row['top1_agree']:.2f} | {row['greedy_prefix_fraction']:.2f} | {row['greedy_identical']:.2f} |"
        )
    lines += ["", "Greedy continuations of the first two prompts:", ""]
    for name, outs in res["greedy_texts"].items():
        for text in outs:
            lines.append(f"- {name}: {json.dumps(text)}")
    lines.append("")
    return "\n".join(lines)


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layer", type=int, default=20)
    parser.add_argument("--scale", type=float, default=4.0)
    parser.add_argument("--norm", type=float, default=4.0, help="norm of the random vector")
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/llamacpp_interop.json"))
    return parser.parse_args()


if __name__ == "__main__":
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    options = parse()
    result = asyncio.run(main(options))
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(result, indent=2) + "\n")
    options.out.with_suffix(".md").write_text(markdown(result) + "\n")
    print(markdown(result))
