"""HTTP overhead of steerserve vs vLLM's own OpenAI server, side by side in one run.

Both are vLLM's own OpenAI server on the same model (`--model`: the tiny Llama by default, or any checkpoint or
catalogued name such as smollm2-135m-instruct) with the same engine flags (eager): `steerserve serve`
(both steerserve plugins on) and `python -m vllm.entrypoints.openai.api_server` with plugins disabled
(`VLLM_PLUGINS=""`). Only one server is
alive at a time (two idle-but-alive engines on a 2-core machine disturbed each other's timings by up to 2x in
a first, co-resident version of this script). The run goes in blocks A B B A ... (A = vLLM, B = steerserve);
each block starts its server, warms it up and runs `--reps` repetitions of the same streaming completion
workload (32 concurrent clients). Inside a steerserve block, unsteered and steered (every request steered by
one uploaded vector) alternate. steerserve/vLLM ratios pair repetition i of a B block with repetition i of the
neighbouring A block; steered/unsteered ratios are paired within each repetition. We report medians with a
bootstrap 95 % CI, and time-to-first-token p50/p99. Throughput on this 2-core machine is shared with the load
generator itself, so each repetition also records the CPU time the API server process (not its engine core
child) spent per 1,000 generated tokens: the HTTP side's own cost, which is where steerserve adds its work.
Once a server is up, its API process, its engine core process and this load generator are pinned to the cores
vLLM's CPU backend reserves for them (all but the ones it bound the engine worker to; `--no-isolate` leaves
them free), so that neither arm's HTTP side or load preempts the worker; this is how a CPU deployment is
meant to run, and it takes the scheduler's placement out of the comparison.

    python benchmarks/server_overhead.py --reps 5 --cycles 2 --out benchmarks/results/server_overhead.json
    python benchmarks/server_overhead.py --model smollm2-135m-instruct --reps 3 --cycles 4 \
        --out benchmarks/results/server_overhead_smollm2.json
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.engine_overhead import bootstrap_median_ci, model_path  # noqa: E402
from tests.fixtures.processes import free_port  # noqa: E402
from tests.fixtures.tiny import TinyModelSpec, build_tiny_model  # noqa: E402

ARMS = ("vllm", "steerserve", "steerserve_steered")
CORES = frozenset(os.sched_getaffinity(0))  # this machine's cores as this script found them (before any pinning)


def start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    handle = log.open("wb")
    return subprocess.Popen(
        cmd,
        env=env,
        stdout=handle,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=lambda: os.sched_setaffinity(0, CORES),  # vLLM picks the worker's cores from what it may use
    )


async def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 600) -> None:
    deadline = time.time() + timeout
    async with httpx.AsyncClient() as client:
        while time.time() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server at {url} exited with {proc.returncode}")
            try:
                if (await client.get(f"{url}/health")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(1)
    raise TimeoutError(url)


async def one_request(
    client: httpx.AsyncClient, url: str, model: str, prompt: str, max_tokens: int, steering: list[dict[str, Any]] | None
) -> tuple[float, int]:
    body: dict[str, Any] = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if steering is not None:
        body["steering"] = steering
    start = time.perf_counter()
    ttft = None
    tokens = 0
    async with client.stream("POST", f"{url}/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("choices") and ttft is None:
                ttft = time.perf_counter() - start
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return ttft or 0.0, tokens


def isolate_engine_worker(server_pid: int) -> list[int] | None:
    """Keep the API server, its engine core process and this load generator (every thread of each) off the cores
    vLLM bound the engine worker's threads to: vLLM's CPU backend reserves the other cores for exactly these
    processes, but does not pin them, so either arm's HTTP side or load could preempt the worker. Returns the
    cores they now run on (None: vLLM bound nothing, or everything)."""
    import psutil

    server = psutil.Process(server_pid)
    processes = [server, *server.children(recursive=True)]
    workers = [p for p in processes if "worker" in p.name().lower()]
    bound: set[int] = set()
    for worker in workers:
        for thread in worker.threads():
            mask = os.sched_getaffinity(thread.id)
            if mask != CORES:
                bound |= mask
    rest = CORES - bound
    if not bound or not rest:
        return None
    for process in [*processes, psutil.Process()]:
        if process in workers:
            continue
        for thread in process.threads():
            os.sched_setaffinity(thread.id, rest)
    return sorted(rest)


def api_cpu_seconds(pid: int) -> float:
    """User + system CPU time of the API server process alone (its engine core is a child process)."""
    import psutil

    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


async def run_arm(
    url: str,
    model: str,
    prompts: list[str],
    clients: int,
    max_tokens: int,
    steering: list[dict[str, Any]] | None,
    server_pid: int,
) -> dict[str, Any]:
    queue = list(prompts)
    ttfts: list[float] = []
    total = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal total
        while queue:
            prompt = queue.pop()
            ttft, tokens = await one_request(client, url, model, prompt, max_tokens, steering)
            ttfts.append(ttft)
            total += tokens

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        cpu_before = api_cpu_seconds(server_pid)
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(clients)))
        seconds = time.perf_counter() - start
        cpu = api_cpu_seconds(server_pid) - cpu_before
    return {
        "tok_per_s": total / seconds,
        "api_cpu_ms_per_1k_tokens": 1e6 * cpu / max(1, total),
        "seconds": seconds,
        "tokens": total,
        "ttft_p50": float(np.percentile(ttfts, 50)),
        "ttft_p99": float(np.percentile(ttfts, 99)),
    }


async def run_block(
    kind: str, block: int, args: argparse.Namespace, model: str, root: Path, logs: Path, prompts: list[str]
) -> list[dict[str, Any]]:
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "PYTHONUNBUFFERED": "1"}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    common = ["--port", str(port), "--enforce-eager", "--max-model-len", "512", "--served-model-name", "tiny"]
    if kind == "vllm":
        proc = start(
            [
                sys.executable,
                "-m",
                "vllm.entrypoints.openai.api_server",
                "--model",
                model,
                *common,
                "--uvicorn-log-level",
                "warning",
            ],
            {**env, "VLLM_PLUGINS": ""},
            logs / f"vllm-{block}.log",
        )
        arms: tuple[str, ...] = ("vllm",)
    else:
        proc = start(
            [
                sys.executable,
                "-m",
                "clients.cli",
                "serve",
                "--model",
                model,
                *common,
                "--data-dir",
                str(logs / f"data-{block}"),
                "--uvicorn-log-level",
                "warning",
            ],
            {**env, "PYTHONPATH": str(root)},
            logs / f"steerserve-{block}.log",
        )
        arms = ("steerserve", "steerserve_steered")
    steering = [{"vector": "bench", "strength": 1.0}]
    runs: list[dict[str, Any]] = []
    try:
        await wait_healthy(url, proc)
        cores = isolate_engine_worker(proc.pid) if args.isolate else None
        print(f"block {block} {kind}: API server, engine core and load generator on cores {cores or 'any'}", flush=True)
        if kind != "vllm":
            config = json.loads((Path(model) / "config.json").read_text())
            hidden, layer = int(config["hidden_size"]), int(config["num_hidden_layers"]) // 2
            direction = (np.random.default_rng(0).standard_normal(hidden) * 0.5).astype("<f4")
            async with httpx.AsyncClient() as client:
                response = await client.post(
                    f"{url}/v1/steering/vectors",
                    json={"id": "bench", "layers": {str(layer): base64.b64encode(direction.tobytes()).decode()}},
                )
                response.raise_for_status()
        for arm in arms:  # warm-up
            warm = steering if "steered" in arm else None
            await run_arm(url, "tiny", prompts[: args.clients], args.clients, 8, warm, proc.pid)
        for rep in range(args.reps):
            order = arms if rep % 2 == 0 else arms[::-1]
            for arm in order:
                await asyncio.sleep(args.pause)
                chosen = steering if "steered" in arm else None
                result = await run_arm(url, "tiny", prompts, args.clients, args.max_tokens, chosen, proc.pid)
                runs.append({"block": block, "rep": rep, "arm": arm, "api_cores": cores, **result})
                print(
                    f"block {block} rep {rep} {arm:>20}: {result['tok_per_s']:8.1f} tok/s  ttft p50 "
                    f"{result['ttft_p50'] * 1000:.0f} ms p99 {result['ttft_p99'] * 1000:.0f} ms  API CPU "
                    f"{result['api_cpu_ms_per_1k_tokens']:.0f} ms/1k tok",
                    flush=True,
                )
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
    return runs


async def main(args: argparse.Namespace) -> dict[str, Any]:
    if args.model == "tiny":
        model = str(build_tiny_model(TinyModelSpec()))
        args.model_description = "tiny llama (4 layers, hidden 128), vLLM CPU default dtype (bf16), eager"
    else:
        path, description = model_path(args.model)
        model = str(path)
        args.model_description = f"{description.replace(', float32', '')}, vLLM CPU default dtype (bf16), eager"
    root = Path(__file__).resolve().parents[1]
    logs = Path(args.logs)
    logs.mkdir(parents=True, exist_ok=True)
    words = ["Q:", "12", "+", "30", "wait", "let", "me", "re-check", "answer", "step"]
    pick = random.Random(0)
    prompts = [" ".join(pick.choice(words) for _ in range(args.prompt_words)) for _ in range(args.requests)]
    pattern = ["vllm", "steerserve", "steerserve", "vllm"]
    runs: list[dict[str, Any]] = []
    for block in range(2 * args.cycles):
        runs += await run_block(pattern[block % 4], block, args, model, root, logs, prompts)
    return summarize(args, runs)


def summarize(args: argparse.Namespace, runs: list[dict[str, Any]]) -> dict[str, Any]:
    by = {(r["block"], r["rep"], r["arm"]): r for r in runs}
    blocks = sorted({r["block"] for r in runs})
    vs_vllm: list[float] = []
    steered_vs_vllm: list[float] = []
    steered: list[float] = []
    cpu_vs_vllm: list[float] = []
    cpu_steered: list[float] = []
    for block in blocks:
        if (block, 0, "steerserve") not in by:
            continue
        partner = block - 1 if (block - 1, 0, "vllm") in by else block + 1  # the neighbouring vLLM block
        for rep in range(args.reps):
            ours = by[(block, rep, "steerserve")]["tok_per_s"]
            theirs = by[(partner, rep, "vllm")]["tok_per_s"]
            vs_vllm.append(ours / theirs)
            steered_vs_vllm.append(by[(block, rep, "steerserve_steered")]["tok_per_s"] / theirs)
            steered.append(by[(block, rep, "steerserve_steered")]["tok_per_s"] / ours)
            cpu = "api_cpu_ms_per_1k_tokens"
            cpu_vs_vllm.append(by[(block, rep, "steerserve")][cpu] / by[(partner, rep, "vllm")][cpu])
            cpu_steered.append(by[(block, rep, "steerserve_steered")][cpu] / by[(block, rep, "steerserve")][cpu])

    def ratio(values: list[float]) -> dict[str, Any]:
        lo, hi = bootstrap_median_ci(values)
        return {"median": statistics.median(values), "ci95": [lo, hi], "n": len(values)}

    arms = {}
    for arm in ARMS:
        rows = [r for r in runs if r["arm"] == arm]
        arms[arm] = {
            "median_tok_per_s": statistics.median(r["tok_per_s"] for r in rows),
            "ttft_p50_ms": ratio([1000 * r["ttft_p50"] for r in rows]),  # median over repetitions, with its CI
            "ttft_p99_ms": ratio([1000 * r["ttft_p99"] for r in rows]),
            "api_cpu_ms_per_1k_tokens": statistics.median(r["api_cpu_ms_per_1k_tokens"] for r in rows),
        }
    return {
        "model": f"{args.model_description}, 1 engine thread",
        "workload": {
            "requests": args.requests,
            "clients": args.clients,
            "max_tokens": args.max_tokens,
            "reps_per_block": args.reps,
            "blocks": len(blocks),
            "stream": True,
            "isolated": args.isolate,
        },
        "ratios": {
            "steerserve_vs_vllm": ratio(vs_vllm),
            "steered_vs_vllm": ratio(steered_vs_vllm),
            "steered_vs_unsteered": ratio(steered),
            "api_cpu_steerserve_vs_vllm": ratio(cpu_vs_vllm),
            "api_cpu_steered_vs_unsteered": ratio(cpu_steered),
        },
        "arms": arms,
        "command": getattr(args, "command", None) or "python " + " ".join(sys.argv),
        "runs": runs,
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Server overhead: steerserve vs vLLM's OpenAI server",
        "",
        f"Model: {result['model']}",
        f"Workload: {result['workload']}",
        f"Command: `{result['command']}`",
        "",
        "Throughput ratios (tok/s; target: steerserve unsteered >= 0.97 and steered >= 0.95 of vLLM's) and "
        "API-process CPU per token ratios (> 1: more CPU per token).",
        "",
        "| ratio | median | 95 % CI |",
        "|---|---|---|",
    ]
    for name, row in result["ratios"].items():
        lines.append(f"| {name} | {row['median']:.3f} | [{row['ci95'][0]:.3f}, {row['ci95'][1]:.3f}] |")
    lines += [
        "",
        "| arm | median tok/s | TTFT p50 (ms) [95 % CI] | TTFT p99 (ms) [95 % CI] | API CPU ms / 1k tokens |",
        "|---|---|---|---|---|",
    ]

    def ms(row: dict[str, Any]) -> str:
        return f"{row['median']:.0f} [{row['ci95'][0]:.0f}, {row['ci95'][1]:.0f}]"

    for arm, row in result["arms"].items():
        lines.append(
            f"| {arm} | {row['median_tok_per_s']:.1f} | {ms(row['ttft_p50_ms'])} | {ms(row['ttft_p99_ms'])} "
            f"| {row['api_cpu_ms_per_1k_tokens']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="tiny, a catalogued name or a checkpoint path")
    parser.add_argument("--reps", type=int, default=5, help="repetitions per block")
    parser.add_argument("--cycles", type=int, default=2, help="A B B A cycles are 2 per --cycles 2 (4 blocks)")
    parser.add_argument("--requests", type=int, default=96)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--prompt-words", type=int, default=12)
    parser.add_argument("--pause", type=float, default=0.5)
    parser.add_argument(
        "--no-isolate",
        dest="isolate",
        action="store_false",
        help="leave the API server and load generator free to run on the engine worker's core",
    )
    parser.add_argument("--logs", default="/tmp/steerserve-server-bench")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/server_overhead.json"))
    parser.add_argument(
        "--from-runs", type=Path, help="summarize the runs of an earlier result file again (no servers started)"
    )
    return parser.parse_args()


def resummarize(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """An earlier result's runs with this script's statistics (its model, workload and command kept)."""
    earlier = json.loads(path.read_text())
    workload = earlier["workload"]
    args.reps, args.requests, args.clients = workload["reps_per_block"], workload["requests"], workload["clients"]
    args.isolate = workload.get("isolated", False)  # results from before the option ran unpinned
    args.max_tokens, args.model_description = workload["max_tokens"], earlier["model"].removesuffix(", 1 engine thread")
    args.command = earlier["command"]
    return summarize(args, earlier["runs"])


if __name__ == "__main__":
    options = parse()
    result = resummarize(options.from_runs, options) if options.from_runs else asyncio.run(main(options))
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(result, indent=2) + "\n")
    options.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
