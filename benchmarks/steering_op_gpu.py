"""The steering op on a GPU, at torch level: CUDA-graph correctness and its cost beside a decoder layer's GEMMs.

vLLM cannot be installed on the lent GPU machines, so this checks what the engine relies on with torch alone:

1. **Correctness under CUDA graphs and torch.compile.** The op (`steering.worker.ops.steering_delta`, compiled with
   Inductor and dynamic shapes, as vLLM's GPU path does) is captured once in a CUDA graph; then the tables and
   per-token slots/gates are refilled *in place* with fresh random contents and the graph is replayed. Every
   replay must match an independent float64 reference, rows with slot 0 must come out bit-for-bit unchanged,
   and no recompilation may happen (table contents are data, not guards).
2. **Cost.** A stack of decoder-layer proxies (the layer's GEMMs: qkv, o, gate/up, down; SiLU-and-mul;
   residual adds; no attention kernel and no norms, so the denominator is small and the ratio an upper bound)
   captured in one CUDA graph, with and without the op at its sites, replays alternated round by round. The
   engine runs all K channels of every (layer, site) with tables on every step (traced code has no branch on
   batch contents), so "with op" is the always-on cost whether or not any request is steered.

    python benchmarks/steering_op_gpu.py --out benchmarks/results           # on a CUDA machine
    python benchmarks/steering_op_gpu.py --device cpu --check-only --out /tmp  # the checks, eager, on CPU
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch._dynamo

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from steering.worker import ops_triton  # noqa: E402
from steering.worker.ops import steered_sum  # noqa: E402

# (name, hidden, intermediate, qkv output width): R1-Distill-Qwen-1.5B (the seed paper's model), Llama-3-8B.
MODELS = {
    "qwen2-1.5b": (1536, 8960, 1536 + 2 * 2 * 128),
    "llama3-8b": (4096, 14336, 4096 + 2 * 8 * 128),
}
# (name, sites with an op, channels K per site, form). Engine default: 3 sites x K=4 (max_terms_per_site).
# "torch": steering.worker.ops.steering_delta compiled by Inductor;
# "fused": the Triton kernel (steering.worker.ops_triton).
ALL_SITES = ("attn", "mlp", "residual")
VARIANTS = {
    "plain": ((), 0, "torch"),
    "torch_mlp_k1": (("mlp",), 1, "torch"),
    "torch_mlp_k4": (("mlp",), 4, "torch"),
    "torch_3sites_k4": (ALL_SITES, 4, "torch"),
    "fused_mlp_k4": (("mlp",), 4, "fused"),
    "fused_3sites_k4": (ALL_SITES, 4, "fused"),
}
SLOTS = 33  # max_configs 32 + the no-op row
TERMS = 16  # max_terms


@dataclass
class Tables:
    """One (layer, site)'s tables plus the shared per-token slot and gate buffers, filled in place."""

    slot: torch.Tensor  # [max_tokens] int64
    gate: torch.Tensor  # [max_tokens, TERMS]
    directions: torch.Tensor  # [SLOTS, K, hidden]
    coefficients: torch.Tensor  # [SLOTS, K, 2] fp32
    term_index: torch.Tensor  # [SLOTS, K] int64

    @classmethod
    def empty(cls, max_tokens: int, k: int, hidden: int, dtype: torch.dtype, device: str) -> Tables:
        return cls(
            torch.zeros(max_tokens, dtype=torch.int64, device=device),
            torch.zeros(max_tokens, TERMS, dtype=dtype, device=device),
            torch.zeros(SLOTS, k, hidden, dtype=dtype, device=device),
            torch.zeros(SLOTS, k, 2, dtype=torch.float32, device=device),
            torch.zeros(SLOTS, k, dtype=torch.int64, device=device),
        )

    def refill(self, gen: torch.Generator, busy_slots: int = SLOTS - 1) -> None:
        """Fresh random contents, in place: rows 1.. get unit directions, (c, b) pairs and gate columns."""
        k, hidden = self.directions.shape[1], self.directions.shape[2]
        raw = torch.randn(SLOTS, k, hidden, generator=gen, dtype=torch.float64)
        raw = raw / raw.norm(dim=-1, keepdim=True)
        raw[0] = 0
        self.directions.copy_(raw)
        coef = torch.randn(SLOTS, k, 2, generator=gen, dtype=torch.float64) * torch.tensor([2.0, 0.5])
        coef[0] = 0
        self.coefficients.copy_(coef)
        self.term_index.copy_(torch.randint(0, TERMS, (SLOTS, k), generator=gen))
        n = self.slot.shape[0]
        slot = torch.randint(1, busy_slots + 1, (n,), generator=gen)
        slot[torch.rand(n, generator=gen) < 0.25] = 0  # a quarter of the rows unsteered
        self.slot.copy_(slot)
        self.gate.copy_((torch.rand(n, TERMS, generator=gen) > 0.3).to(torch.float64))


def reference_delta(x: torch.Tensor, t: Tables) -> torch.Tensor:
    """Independent float64 loop over tokens and channels: x <- x + g * (c + b * (r . x)) * r, in order."""
    x64 = x.detach().cpu().double()
    out = x64.clone()
    slot, gate = t.slot.cpu(), t.gate.cpu().double()
    dirs, coef, idx = t.directions.cpu().double(), t.coefficients.cpu().double(), t.term_index.cpu()
    for i in range(x64.shape[0]):
        s = int(slot[i])
        for k in range(dirs.shape[1]):
            g = gate[i, int(idx[s, k])]
            r = dirs[s, k]
            out[i] = out[i] + g * (coef[s, k, 0] + coef[s, k, 1] * (out[i] @ r)) * r
    return out - x64


def steered_torch(target: torch.Tensor, extra: torch.Tensor | None, t: Tables) -> torch.Tensor:
    return steered_sum(target, extra, t.slot, t.gate, t.directions, t.coefficients, t.term_index)


def steered_fused(target: torch.Tensor, extra: torch.Tensor | None, t: Tables) -> torch.Tensor:
    ops_triton.steer_in_place(target, extra, t.slot, t.gate, t.directions, t.coefficients, t.term_index)
    return target


FORMS: dict[str, Callable[[torch.Tensor, torch.Tensor | None, Tables], torch.Tensor]] = {
    "torch": steered_torch,
    "fused": steered_fused,
}


def check(
    device: str, form: str, dtype: torch.dtype, compiled: bool, graphed: bool, tokens: int, extra: bool, trials: int
) -> dict[str, object]:
    """Capture once, refill tables in place, replay; compare `target + delta(target [+ extra])` with the
    float64 reference each time. Rows with slot 0 must come back bit-for-bit equal to `target`."""
    gen = torch.Generator().manual_seed(1234)
    hidden, k = 256, 4
    t = Tables.empty(tokens + 16, k, hidden, dtype, device)  # longer buffers than the batch, like the engine's
    target = torch.empty(tokens, hidden, dtype=dtype, device=device)
    second = torch.empty_like(target) if extra else None
    out = torch.empty_like(target)
    op = FORMS[form]
    if compiled:
        op = torch.compile(op, dynamic=True, fullgraph=True)

    def fill() -> None:
        t.refill(gen)
        target.copy_(torch.randn(tokens, hidden, generator=gen) * 3)
        if second is not None:
            second.copy_(torch.randn(tokens, hidden, generator=gen))

    work = torch.empty_like(target)  # the fused form steers in place: `target` stays the reference's input

    def step() -> None:
        work.copy_(target)
        out.copy_(op(work, second, t))

    fill()
    step()  # compile and warm up outside the graph
    graph = None
    if graphed:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            step()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    worst, noop_exact = 0.0, True
    torch._dynamo.config.error_on_recompile = compiled  # new contents must not recompile
    try:
        for _ in range(trials):
            fill()
            out.fill_(float("nan"))  # poison: every row must be written by the replay
            if graph is not None:
                graph.replay()
            else:
                step()
            if device == "cuda":
                torch.cuda.synchronize()
            base = target.detach().cpu().double()
            x = base if second is None else base + second.detach().cpu().double()
            ref = reference_delta(x, t)
            expected = base + ref
            worst = max(worst, float((out.detach().cpu().double() - expected).norm() / expected.norm()))
            zero_rows = t.slot[:tokens].cpu() == 0
            noop_exact &= bool(torch.equal(out.cpu()[zero_rows], target.cpu()[zero_rows]))
    finally:
        torch._dynamo.config.error_on_recompile = False
    return {
        "form": form,
        "dtype": str(dtype).removeprefix("torch."),
        "compiled": compiled,
        "cuda_graph": graphed,
        "tokens": tokens,
        "extra_input": extra,
        "trials": trials,
        "max_rel_error": worst,
        "tolerance": tol,
        "slot0_rows_unchanged": noop_exact,
        "ok": worst < tol and noop_exact,
    }


class LayerStack:
    """`layers` decoder-layer proxies (GEMMs + SiLU-and-mul + residual adds) with the op at `sites`."""

    def __init__(
        self, model: str, layers: int, variant: tuple[tuple[str, ...], int, str], max_tokens: int, device: str
    ) -> None:
        sites, k, form = variant
        hidden, inter, qkv = MODELS[model]
        dtype = torch.bfloat16
        scale = hidden**-0.5

        def weight(out_f: int, in_f: int) -> torch.Tensor:
            return (torch.randn(out_f, in_f, device=device, dtype=dtype) * scale).contiguous()

        self.weights = [
            (weight(qkv, hidden), weight(hidden, hidden), weight(2 * inter, hidden), weight(hidden, inter))
            for _ in range(layers)
        ]
        self.sites, self.inter, self.hidden = sites, inter, hidden
        gen = torch.Generator().manual_seed(7)
        self.tables: list[dict[str, Tables]] = []
        for _ in range(layers):
            per_site = {}
            for site in sites:
                t = Tables.empty(max_tokens, k, hidden, dtype, device)
                t.refill(gen)
                per_site[site] = t
            self.tables.append(per_site)
        self.op = torch.compile(FORMS[form], dynamic=True, fullgraph=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for (w_qkv, w_o, w_gate_up, w_down), tables in zip(self.weights, self.tables, strict=True):
            attn = torch.nn.functional.linear(torch.nn.functional.linear(x, w_qkv)[:, : self.hidden], w_o)
            if "attn" in tables:
                attn = self.op(attn, None, tables["attn"])
            h = x + attn
            gate_up = torch.nn.functional.linear(h, w_gate_up)
            mlp = torch.nn.functional.linear(
                torch.nn.functional.silu(gate_up[:, : self.inter]) * gate_up[:, self.inter :], w_down
            )
            if "mlp" in tables:
                mlp = self.op(mlp, None, tables["mlp"])
            if "residual" in tables:
                mlp = self.op(mlp, h, tables["residual"])
            x = h + mlp
        return x


def capture(stack: LayerStack, x: torch.Tensor) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            stack.forward(x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = stack.forward(x)
    return graph, out


def time_replays(graph: torch.cuda.CUDAGraph, replays: int) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) * 1000.0 / replays  # microseconds per replay


def cost(model: str, token_counts: list[int], layers: int, rounds: int, replays: int) -> list[dict[str, object]]:
    """Per token count: per-replay time of each variant, alternated round by round; ratios paired per round."""
    max_tokens = max(token_counts)
    stacks = {name: LayerStack(model, layers, variant, max_tokens, "cuda") for name, variant in VARIANTS.items()}
    rows: list[dict[str, object]] = []
    for tokens in token_counts:
        x = torch.randn(tokens, MODELS[model][0], device="cuda", dtype=torch.bfloat16)
        graphs = {name: capture(stack, x)[0] for name, stack in stacks.items()}
        for graph in graphs.values():
            time_replays(graph, max(3, replays // 4))  # warm
        times: dict[str, list[float]] = {name: [] for name in graphs}
        for r in range(rounds):
            order = list(graphs) if r % 2 == 0 else list(reversed(graphs))
            for name in order:
                times[name].append(time_replays(graphs[name], replays))
        plain = times["plain"]
        for name, series in times.items():
            ratios = sorted(p / s for p, s in zip(plain, series, strict=True))
            rows.append(
                {
                    "model": model,
                    "tokens": tokens,
                    "variant": name,
                    "us_per_layer": statistics.median(series) / layers,
                    "plain_over_variant": statistics.median(ratios),
                    "ratio_q10_q90": [ratios[len(ratios) // 10], ratios[(len(ratios) * 9) // 10]],
                }
            )
        del graphs
        torch.cuda.synchronize()
    del stacks
    torch.cuda.empty_cache()
    return rows


def markdown(result: dict[str, object]) -> str:
    lines = [
        "# Steering op on a GPU (torch level)",
        "",
        f"Command: `{result['command']}`  ",
        f"Device: {result['device']}; torch {result['torch']}; {result['seconds']:.0f} s.",
        "",
        "## Correctness: CUDA-graph replay with tables refilled in place, against a float64 reference",
        "",
        "| form | dtype | torch.compile | CUDA graph | tokens | + extra input | trials | max rel. error | tolerance |"
        " slot-0 rows exact | ok |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in result["checks"]:  # type: ignore[attr-defined]
        lines.append(
            f"| {c['form']} | {c['dtype']} | {c['compiled']} | {c['cuda_graph']} | {c['tokens']} | "
            f"{c['extra_input']} | {c['trials']} | "
            f"{c['max_rel_error']:.2e} | {c['tolerance']:.0e} | {c['slot0_rows_unchanged']} | {c['ok']} |"
        )
    if result.get("cost"):
        lines += [
            "",
            "## Cost: layer-proxy GEMM stack in one CUDA graph, bf16, op compiled (Inductor, dynamic shapes)",
            "",
            "µs per layer (median of rounds); `plain/variant` is the paired throughput ratio (1.0 = free), with the",
            "10th–90th percentile of rounds. The proxy has no attention kernel and no norms: ratios are upper bounds.",
            "",
            "| model | tokens | variant | µs/layer | plain/variant | q10–q90 |",
            "|---|---|---|---|---|---|",
        ]
        for row in result["cost"]:  # type: ignore[attr-defined]
            lo, hi = row["ratio_q10_q90"]
            lines.append(
                f"| {row['model']} | {row['tokens']} | {row['variant']} | {row['us_per_layer']:.1f} | "
                f"{row['plain_over_variant']:.3f} | {lo:.3f}–{hi:.3f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--check-only", action="store_true", help="correctness checks only, no timing")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--tokens", default="1,8,32,128,512,2048", help="batch token counts to time")
    parser.add_argument("--layers", type=int, default=4, help="layer proxies per CUDA graph")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--replays", type=int, default=20)
    parser.add_argument("--out", type=Path, required=True, help="folder for steering_op_gpu.{json,md}")
    args = parser.parse_args()
    started = time.time()
    torch._dynamo.config.cache_size_limit = 64  # one entry per dtype / channel count / specialised size
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        parser.error("no CUDA device; use --device cpu --check-only")
    checks = []
    forms = ["torch", "fused"] if cuda and ops_triton.available() else ["torch"]
    for form in forms:
        for dtype in (torch.float32, torch.bfloat16):
            for compiled, graphed in [(False, cuda), (cuda, cuda)] if cuda else [(False, False)]:
                for tokens, extra in [(1, False), (37, True), (512, False)] if cuda else [(1, False), (37, True)]:
                    checks.append(check(args.device, form, dtype, compiled, graphed, tokens, extra, trials=5))
                    print(json.dumps(checks[-1]), flush=True)
    result: dict[str, object] = {
        "command": "python " + " ".join(["benchmarks/steering_op_gpu.py", *sys.argv[1:]]),
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "torch": torch.__version__,
        "checks": checks,
        "cost": [],
    }
    if cuda and not args.check_only:
        token_counts = [int(n) for n in args.tokens.split(",")]
        for model in args.models.split(","):
            rows = cost(model, token_counts, args.layers, args.rounds, args.replays)
            for row in rows:
                print(json.dumps(row), flush=True)
            result["cost"] += rows  # type: ignore[operator]
    result["seconds"] = time.time() - started
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "steering_op_gpu.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "steering_op_gpu.md").write_text(markdown(result))
    print(markdown(result))
    if not all(c["ok"] for c in checks):
        sys.exit(1)


if __name__ == "__main__":
    main()
