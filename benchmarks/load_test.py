"""Load: N concurrent streaming clients against `steerserve serve` on the toy demo model, for a bounded run.

Each client sends `--requests` streaming chat completions in turn, cycling through unsteered, the reflection
vector at two strengths, and the two presets. Pass: no error other than an explicit 503 overload answer (in
OpenAI's shape, with Retry-After); the server's RSS grows < 5 % between the run's halves; the running and
waiting gauges are back to 0 afterwards.

    python benchmarks/load_test.py --clients 256 --requests 4 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.fixtures.processes import demo_server_process  # noqa: E402

STEERING: list[dict[str, Any]] = [
    {},
    {"steering": [{"vector": "reflection", "strength": -1.0}]},
    {"model": "reflect-up"},
    {"steering": [{"vector": "reflection", "strength": 0.3}]},
    {"model": "reflect-down"},
]


def rss_bytes(pid: int) -> int:
    """Resident memory of the server and its children (vLLM's engine core runs in a child process)."""
    import psutil

    proc = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])


def gauge(metrics: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith(name))


async def one_request(http: httpx.AsyncClient, index: int, max_tokens: int) -> tuple[str, float, int]:
    """(outcome, seconds, completion tokens): 'ok', 'ok after a retry', 'overloaded' or an error description.

    A transport error before any response byte (a pooled keep-alive connection closed under it) is retried
    once, as the openai SDK does, and counted apart; an error after the response started is a failure."""
    started = time.perf_counter()
    for attempt in range(2):
        outcome, tokens, before_response = await _attempt(http, index, max_tokens)
        if not before_response or attempt == 1:
            break
    if attempt == 1 and outcome == "ok":
        outcome = "ok after a retry"
    return outcome, time.perf_counter() - started, tokens


async def _attempt(http: httpx.AsyncClient, index: int, max_tokens: int) -> tuple[str, int, bool]:
    """(outcome, tokens, whether a transport error came before the response started)."""
    body: dict[str, Any] = {
        "model": "steerserve-demo",
        "messages": [{"role": "user", "content": f"{10 + index % 80}+{index % 37}-{index % 13}"}],
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        "seed": index,
        **STEERING[index % len(STEERING)],
    }
    tokens, responded = 0, False
    try:
        async with http.stream("POST", "/v1/chat/completions", json=body) as response:
            responded = True
            if response.status_code == 503:
                error = json.loads(await response.aread())["error"]
                ok = error["code"] == "overloaded" and response.headers.get("retry-after")
                return ("overloaded" if ok else f"503 {error}"), 0, False
            if response.status_code != 200:
                return f"{response.status_code} {(await response.aread())[:200]!r}", 0, False
            done = False
            async for line in response.aiter_lines():
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("data: "):
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        return f"stream error {chunk['error']}", 0, False
                    if chunk.get("usage"):
                        tokens = chunk["usage"]["completion_tokens"]
            if not done:
                return "stream ended without [DONE]", tokens, False
    except httpx.HTTPError as exc:
        where = "mid-stream" if responded else "before the response"
        return f"{type(exc).__name__} {where}: {exc!r} (cause {exc.__cause__!r})", 0, not responded
    return "ok", tokens, False


async def run(url: str, pid: int, clients: int, requests: int, max_tokens: int) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=clients + 8, max_keepalive_connections=clients + 8)
    results: list[tuple[int, str, float, int]] = []  # (round, outcome, seconds, tokens)
    rss: list[tuple[int, int]] = []  # (requests finished so far, bytes), sampled every second
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:
        rss.append((0, rss_bytes(pid)))

        async def client(c: int) -> None:
            for r in range(requests):
                outcome, seconds, tokens = await one_request(http, c * requests + r, max_tokens)
                results.append((r, outcome, seconds, tokens))

        async def sampler() -> None:
            while True:
                await asyncio.sleep(1.0)
                rss.append((len(results), rss_bytes(pid)))

        started = time.perf_counter()
        sampling = asyncio.create_task(sampler())
        await asyncio.gather(*(client(c) for c in range(clients)))
        sampling.cancel()
        wall = time.perf_counter() - started
        await asyncio.sleep(1.0)
        metrics = (await http.get("/metrics")).text
    total = clients * requests
    first = [b for n, b in rss if n <= total // 2]
    second = [b for n, b in rss if n > total // 2]
    outcomes = Counter(outcome for _, outcome, _, _ in results)
    errors = {k: v for k, v in outcomes.items() if k not in ("ok", "ok after a retry", "overloaded")}
    latencies = sorted(s for _, o, s, _ in results if o.startswith("ok"))
    growth = (statistics.median(second) / statistics.median(first) - 1.0) if first and second else None
    return {
        "clients": clients,
        "requests_per_client": requests,
        "max_tokens": max_tokens,
        "requests": total,
        "outcomes": dict(outcomes),
        "errors": errors,
        "wall_s": wall,
        "completion_tokens": sum(t for *_, t in results),
        "tokens_per_s": sum(t for *_, t in results) / wall,
        "latency_p50_s": latencies[len(latencies) // 2] if latencies else None,
        "latency_p99_s": latencies[int(len(latencies) * 0.99)] if latencies else None,
        "rss_first_half_median_mb": statistics.median(first) / 2**20 if first else None,
        "rss_second_half_median_mb": statistics.median(second) / 2**20 if second else None,
        "rss_growth": growth,
        "running_after": gauge(metrics, "steerserve:num_requests_running"),
        "waiting_after": gauge(metrics, "steerserve:num_requests_waiting"),
        "passed": not errors
        and growth is not None
        and growth < 0.05
        and gauge(metrics, "steerserve:num_requests_running") == 0
        and gauge(metrics, "steerserve:num_requests_waiting") == 0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=256)
    parser.add_argument("--requests", type=int, default=4, help="streaming requests per client, one after another")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--out", type=Path, default=None, help="write load_test.json here")
    parser.add_argument("--server-log", type=Path, default=None, help="keep the server's log here")
    args = parser.parse_args()
    queue = ("--max-num-queued-reqs", str(args.clients))
    with demo_server_process(args=queue, keep_log=args.server_log) as (url, proc):
        result = asyncio.run(run(url, proc.pid, args.clients, args.requests, args.max_tokens))
    result["command"] = "python " + " ".join(["benchmarks/load_test.py", *sys.argv[1:]])
    print(json.dumps(result, indent=1))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "load_test.json").write_text(json.dumps(result, indent=1) + "\n")
    sys.exit(0 if result["passed"] else 1)


if __name__ == "__main__":
    main()
