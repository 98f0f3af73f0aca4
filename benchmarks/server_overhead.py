"""HTTP overhead of steerserve vs vLLM's own OpenAI server, side by side in one run.

Both servers serve the same tiny model (eager) at once: `steerserve serve` and
`python -m vllm.entrypoints.openai.api_server` with our plugin disabled (`VLLM_PLUGINS=""`). Each repetition
sends the same streaming completion workload (32 concurrent clients) to: vLLM, steerserve unsteered, and
steerserve steered (every request steered by one uploaded vector). Order rotates per repetition.
We report throughput ratios (median, bootstrap 95 % CI) and time-to-first-token p50/p99.

    python benchmarks/server_overhead.py --reps 6 --out benchmarks/results/server_overhead.json
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.engine_overhead import bootstrap_median_ci  # noqa: E402
from steering.models.tiny import TinyModelSpec, build_tiny_model  # noqa: E402

ARMS = ("vllm", "steerserve", "steerserve_steered")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    handle = log.open("wb")
    return subprocess.Popen(cmd, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)


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


async def one_request(client: httpx.AsyncClient, url: str, model: str, prompt: str, max_tokens: int,
                      steering: list[dict[str, Any]] | None) -> tuple[float, int]:
    body: dict[str, Any] = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
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


async def run_arm(url: str, model: str, prompts: list[str], clients: int, max_tokens: int,
                  steering: list[dict[str, Any]] | None) -> dict[str, Any]:
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
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(clients)))
        seconds = time.perf_counter() - start
    return {"tok_per_s": total / seconds, "seconds": seconds, "tokens": total,
            "ttft_p50": float(np.percentile(ttfts, 50)), "ttft_p99": float(np.percentile(ttfts, 99))}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    model = str(build_tiny_model(TinyModelSpec()))
    root = Path(__file__).resolve().parents[1]
    logs = Path(args.logs)
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "PYTHONUNBUFFERED": "1"}
    ours_port, theirs_port = free_port(), free_port()
    ours = start([sys.executable, "-m", "clients.cli", "serve", "--model", model, "--port", str(ours_port),
                  "--enforce-eager", "--max-model-len", "512", "--data-dir", str(logs / "data"),
                  "--served-model-name", "tiny", "--log-level", "warning"], {**env, "PYTHONPATH": str(root)},
                 logs / "steerserve.log")
    theirs = start([sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--port",
                    str(theirs_port), "--enforce-eager", "--max-model-len", "512", "--served-model-name", "tiny",
                    "--disable-log-requests"], {**env, "VLLM_PLUGINS": ""}, logs / "vllm.log")
    urls = {"vllm": f"http://127.0.0.1:{theirs_port}", "steerserve": f"http://127.0.0.1:{ours_port}"}
    try:
        await wait_healthy(urls["steerserve"], ours)
        await wait_healthy(urls["vllm"], theirs)
        rng = np.random.default_rng(0)
        direction = (rng.standard_normal(128) * 0.5).astype("<f4")
        async with httpx.AsyncClient() as client:
            response = await client.post(f"{urls['steerserve']}/v1/steering/vectors", json={
                "id": "bench", "layers": {"1": base64.b64encode(direction.tobytes()).decode()}})
            response.raise_for_status()
        words = ["Q:", "12", "+", "30", "wait", "let", "me", "re-check", "answer", "step"]
        pick = random.Random(0)
        prompts = [" ".join(pick.choice(words) for _ in range(args.prompt_words)) for _ in range(args.requests)]
        steering = [{"vector": "bench", "strength": 1.0}]
        for arm in ARMS:  # warm-up
            url = urls["vllm" if arm == "vllm" else "steerserve"]
            await run_arm(url, "tiny", prompts[: args.clients], args.clients, 8, steering if "steered" in arm else None)
        runs: list[dict[str, Any]] = []
        for rep in range(args.reps):
            order = ARMS[rep % 3:] + ARMS[: rep % 3]
            for arm in order:
                url = urls["vllm" if arm == "vllm" else "steerserve"]
                await asyncio.sleep(args.pause)
                result = await run_arm(url, "tiny", prompts, args.clients, args.max_tokens,
                                       steering if "steered" in arm else None)
                runs.append({"rep": rep, "arm": arm, **result})
                print(f"rep {rep} {arm:>20}: {result['tok_per_s']:8.1f} tok/s  ttft p50 "
                      f"{result['ttft_p50'] * 1000:.0f} ms p99 {result['ttft_p99'] * 1000:.0f} ms", flush=True)
    finally:
        for proc in (ours, theirs):
            proc.terminate()
        for proc in (ours, theirs):
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
    return summarize(args, runs)


def summarize(args: argparse.Namespace, runs: list[dict[str, Any]]) -> dict[str, Any]:
    by = {(r["rep"], r["arm"]): r for r in runs}
    reps = range(args.reps)

    def ratio(a: str, b: str) -> dict[str, Any]:
        values = [by[(r, a)]["tok_per_s"] / by[(r, b)]["tok_per_s"] for r in reps]
        lo, hi = bootstrap_median_ci(values)
        return {"median": statistics.median(values), "ci95": [lo, hi]}

    arms = {arm: {"median_tok_per_s": statistics.median(by[(r, arm)]["tok_per_s"] for r in reps),
                  "ttft_p50_ms": 1000 * statistics.median(by[(r, arm)]["ttft_p50"] for r in reps),
                  "ttft_p99_ms": 1000 * statistics.median(by[(r, arm)]["ttft_p99"] for r in reps)} for arm in ARMS}
    return {
        "model": "tiny llama (4 layers, hidden 128), float32, eager, 1 engine thread (vLLM CPU default)",
        "workload": {"requests": args.requests, "clients": args.clients, "max_tokens": args.max_tokens,
                     "reps": args.reps, "stream": True},
        "ratios": {"steerserve_vs_vllm": ratio("steerserve", "vllm"),
                   "steered_vs_unsteered": ratio("steerserve_steered", "steerserve")},
        "arms": arms,
        "command": "python " + " ".join(sys.argv),
        "runs": runs,
    }


def markdown(result: dict[str, Any]) -> str:
    lines = ["# Server overhead: steerserve vs vLLM's OpenAI server", "", f"Model: {result['model']}",
             f"Workload: {result['workload']}", f"Command: `{result['command']}`", "",
             "| ratio | median | 95 % CI |", "|---|---|---|"]
    for name, row in result["ratios"].items():
        lines.append(f"| {name} | {row['median']:.3f} | [{row['ci95'][0]:.3f}, {row['ci95'][1]:.3f}] |")
    lines += ["", "| arm | median tok/s | TTFT p50 (ms) | TTFT p99 (ms) |", "|---|---|---|---|"]
    for arm, row in result["arms"].items():
        lines.append(f"| {arm} | {row['median_tok_per_s']:.1f} | {row['ttft_p50_ms']:.0f} | {row['ttft_p99_ms']:.0f} |")
    return "\n".join(lines) + "\n"


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=6)
    parser.add_argument("--requests", type=int, default=96)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--prompt-words", type=int, default=12)
    parser.add_argument("--pause", type=float, default=0.5)
    parser.add_argument("--logs", default="/tmp/steerserve-server-bench")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/server_overhead.json"))
    return parser.parse_args()


if __name__ == "__main__":
    options = parse()
    result = asyncio.run(main(options))
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(result, indent=2) + "\n")
    options.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
