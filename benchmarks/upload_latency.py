"""Upload -> first steered token: how soon a vector nobody has used yet steers a streamed request.

Through the real server (`steerserve serve --model M`, embedded store, real HTTP). While --background streams
run continuously (steered with a shared vector, so the engine stays busy), each trial:

  unsteered   a streamed completion with no steering: its time to first token (TTFT)
  upload      POST /v1/steering/vectors with a fresh random vector, then at once a streamed completion
              steered by it: time from the POST's start to the first token

Every request has a prompt of its own (no prefix-cache hits on either side). Reported: p50/p99 of both, of
the upload alone, and the cost on top of an unsteered request: p99(upload -> first steered token) minus
p99(unsteered TTFT), and the paired per-trial difference. Target: <= 100 ms at p99.

    python benchmarks/upload_latency.py --model smollm2-135m-instruct --out benchmarks/results/upload_latency.json
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.engine_overhead import model_path  # noqa: E402
from tests.fixtures.processes import demo_server_process  # noqa: E402


def vector_body(vector_id: str, layer: int, hidden: int, norm: float, rng: np.random.Generator) -> dict[str, Any]:
    raw = rng.standard_normal(hidden)
    data = (raw / np.linalg.norm(raw) * norm).astype("<f4").tobytes()
    return {"id": vector_id, "layers": {str(layer): base64.b64encode(data).decode()}}


async def first_token(
    client: httpx.AsyncClient, model: str, prompt: str, steering: Any, max_tokens: int
) -> float | None:
    """Seconds from now to the first streamed chunk that carries text (the request runs to its end); None when
    the model ended the stream before any text."""
    body: dict[str, Any] = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "stream": True}
    if steering is not None:
        body["steering"] = steering
    start = time.perf_counter()
    first: float | None = None
    async with client.stream("POST", "/v1/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{response.status_code}: {(await response.aread()).decode()[:300]}")
        async for line in response.aiter_lines():
            if first is None and line.startswith("data: {"):
                chunk = json.loads(line[6:])
                if chunk["choices"] and chunk["choices"][0].get("text"):
                    first = time.perf_counter() - start
    return first


async def run(url: str, args: argparse.Namespace, hidden: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        model = (await client.get("/v1/models")).json()["data"][0]["id"]
        response = await client.post("/v1/steering/vectors", json=vector_body("busy", args.layer, hidden, 2.0, rng))
        response.raise_for_status()
        stop = asyncio.Event()
        served = 0

        async def background(k: int) -> None:
            nonlocal served
            n = 0
            while not stop.is_set():
                steering = [{"vector": "busy", "strength": 1.0}]
                await first_token(client, model, f"Background stream {k}.{n}: tell me a story.", steering, 96)
                n += 1
                served += 1

        streams = [asyncio.create_task(background(k)) for k in range(args.background)]
        await asyncio.sleep(args.settle)
        plain, upload_to_first, upload_only = [], [], []
        for trial in range(args.warmup + args.trials):
            plain_ttft = await first_token(client, model, f"Trial {trial} (a): name a colour.", None, 8)
            assert plain_ttft is not None, "an unsteered trial request produced no text"
            start = time.perf_counter()
            vector_id = f"fresh-{trial}"
            response = await client.post(
                "/v1/steering/vectors", json=vector_body(vector_id, args.layer, hidden, args.norm, rng)
            )
            response.raise_for_status()
            uploaded = time.perf_counter() - start
            steering = [{"vector": vector_id, "strength": 1.0}]
            ttft = await first_token(client, model, f"Trial {trial} (b): name a colour.", steering, 8)
            assert ttft is not None, "a steered trial request produced no text"
            if trial >= args.warmup:
                plain.append(plain_ttft)
                upload_only.append(uploaded)
                upload_to_first.append(uploaded + ttft)
            await client.delete(f"/v1/steering/vectors/{vector_id}")
        stop.set()
        await asyncio.gather(*streams)
    return summarize(args, plain, upload_to_first, upload_only, served)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000, q))


def summarize(
    args: argparse.Namespace, plain: list[float], total: list[float], upload: list[float], served: int
) -> dict[str, Any]:
    paired = [t - p for t, p in zip(total, plain, strict=True)]
    return {
        "model": args.model,
        "workload": {
            "trials": args.trials,
            "background_streams": args.background,
            "layer": args.layer,
            "background_requests_served": served,
        },
        "ms": {
            "unsteered_ttft": {"p50": pct(plain, 50), "p99": pct(plain, 99)},
            "upload_to_first_steered_token": {"p50": pct(total, 50), "p99": pct(total, 99)},
            "upload_alone": {"p50": pct(upload, 50), "p99": pct(upload, 99)},
            "paired_extra": {"p50": pct(paired, 50), "p99": pct(paired, 99)},
        },
        "extra_at_p99_ms": pct(total, 99) - pct(plain, 99),
        "target_ms": 100.0,
        "samples_ms": {
            "unsteered_ttft": [x * 1000 for x in plain],
            "upload_to_first_steered_token": [x * 1000 for x in total],
        },
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
        "command": "python " + " ".join(sys.argv),
    }


def markdown(res: dict[str, Any]) -> str:
    w, ms = res["workload"], res["ms"]
    lines = [
        "# Upload -> first steered token",
        "",
        f"{res['model']} through `steerserve serve` (embedded store, real HTTP); {w['trials']} trials while "
        f"{w['background_streams']} steered streams run ({w['background_requests_served']} background requests "
        f"served); fresh vector on layer {w['layer']} each trial.",
        "",
        f"Command: `{res['command']}`",
        "",
        "| measure | p50 ms | p99 ms |",
        "|---|---|---|",
    ]
    for key, label in (
        ("unsteered_ttft", "unsteered request: TTFT"),
        ("upload_to_first_steered_token", "POST vector -> first token of a request using it"),
        ("upload_alone", "POST vector alone"),
        ("paired_extra", "per-trial difference (upload path - unsteered)"),
    ):
        lines.append(f"| {label} | {ms[key]['p50']:.1f} | {ms[key]['p99']:.1f} |")
    lines += [
        "",
        f"On top of an unsteered request at p99: **{res['extra_at_p99_ms']:.1f} ms** "
        f"(target <= {res['target_ms']:g} ms).",
        "",
    ]
    return "\n".join(lines)


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--background", type=int, default=16)
    parser.add_argument("--settle", type=float, default=5.0, help="seconds of background load before trial 1")
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--norm", type=float, default=4.0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/upload_latency.json"))
    return parser.parse_args()


if __name__ == "__main__":
    options = parse()
    checkpoint, _description = model_path(options.model)
    hidden_size = int(json.loads((checkpoint / "config.json").read_text())["hidden_size"])
    serve_args = ("--model", options.model, "--max-model-len", "1024")
    with demo_server_process(start_timeout_s=900, args=serve_args) as (base_url, _):
        result = asyncio.run(run(base_url, options, hidden_size))
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(result, indent=2) + "\n")
    options.out.with_suffix(".md").write_text(markdown(result) + "\n")
    print(markdown(result))
