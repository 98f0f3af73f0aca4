"""Redis faults: kill `redis-server` (SIGKILL) under load, then start it again on the same AOF directory.

While Redis is down, requests whose vectors and presets are cached, and plain requests, must keep succeeding;
writes and uncached vectors must get a 503 in OpenAI's shape. Once Redis is back, a new vector works without
restarting the server, and every vector written before the kill is intact (same sha256).

    python benchmarks/redis_faults.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.fixtures.processes import RedisServer, demo_server_process  # noqa: E402

HIDDEN = 256  # the demo model's hidden size
KINDS = ("plain", "preset reflect-up", "cached vector")
CACHED = [
    {},
    {"model": "reflect-up"},
    {"steering": [{"vector": "warm", "strength": 0.5}]},
]


def vector_body(vector_id: str, seed: int) -> dict[str, Any]:
    data = np.random.default_rng(seed).standard_normal(HIDDEN).astype("<f4")
    return {"id": vector_id, "layers": {"2": base64.b64encode(data.tobytes()).decode()}}


def completion(extra: dict[str, Any]) -> dict[str, Any]:
    return {"model": "steerserve-demo", "prompt": "Q: 12+30", "max_tokens": 8, **extra}


def openai_503(response: httpx.Response) -> bool:
    try:
        error = response.json()["error"]
    except (ValueError, KeyError):
        return False
    return response.status_code == 503 and set(error) == {"message", "type", "param", "code"}


async def load(http: httpx.AsyncClient, stop: asyncio.Event, log: list[tuple[float, int, int]]) -> None:
    """One client: cached-steering and plain requests in turn until `stop`; logs (time, kind, status)."""
    i = 0
    while not stop.is_set():
        kind = i % len(CACHED)
        response = await http.post("/v1/completions", json=completion(CACHED[kind]))
        log.append((time.monotonic(), kind, response.status_code))
        i += 1


async def scenario(url: str, redis: RedisServer, clients: int, outage_s: float) -> dict[str, Any]:
    report: dict[str, Any] = {}
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        for vector_id, seed in (("warm", 1), ("cold", 2)):
            assert (await http.post("/v1/steering/vectors", json=vector_body(vector_id, seed))).status_code == 201
        before = {v: (await http.get(f"/v1/steering/vectors/{v}")).json()["sha256"] for v in ("warm", "cold")}
        for extra in CACHED:  # warm the registry cache; "cold" is never used before the kill
            assert (await http.post("/v1/completions", json=completion(extra))).status_code == 200
        log: list[tuple[float, int, int]] = []
        stop = asyncio.Event()
        workers = [asyncio.create_task(load(http, stop, log)) for _ in range(clients)]
        await asyncio.sleep(2.0)
        redis.stop()
        killed = time.monotonic()
        await asyncio.sleep(0.5)
        write = await http.post("/v1/steering/vectors", json=vector_body("during", 3))
        cold = await http.post("/v1/completions", json=completion({"steering": [{"vector": "cold"}]}))
        report["during_outage"] = {
            "write_status": write.status_code,
            "write_is_openai_503": openai_503(write),
            "uncached_vector_status": cold.status_code,
            "uncached_is_openai_503": openai_503(cold),
        }
        await asyncio.sleep(outage_s)
        redis.start()
        restarted = time.monotonic()
        await asyncio.sleep(2.0)
        stop.set()
        await asyncio.gather(*workers)
        during = [(kind, status) for t, kind, status in log if killed <= t < restarted]
        report["load"] = {
            "clients": clients,
            "requests": len(log),
            "during_outage": len(during),
            "during_outage_by_kind_status": {
                f"{['plain', 'preset reflect-up', 'cached vector'][k]} -> {s}": n
                for (k, s), n in Counter(during).items()
            },
            "failed_during_outage": sum(1 for _, s in during if s != 200),
            "failed_overall": sum(1 for *_, s in log if s != 200),
        }
        back = time.monotonic()
        new_ok = False
        while time.monotonic() - back < 10 and not new_ok:  # the server reconnects by itself
            created = await http.post("/v1/steering/vectors", json=vector_body("after", 4))
            new_ok = created.status_code == 201
            if not new_ok:
                await asyncio.sleep(0.2)
        used = await http.post("/v1/completions", json=completion({"steering": [{"vector": "after"}]}))
        cold_after = await http.post("/v1/completions", json=completion({"steering": [{"vector": "cold"}]}))
        after = {v: (await http.get(f"/v1/steering/vectors/{v}")).json().get("sha256") for v in ("warm", "cold")}
        report["after_restart"] = {
            "new_vector_written": new_ok,
            "seconds_until_writes_work": round(time.monotonic() - back, 2),
            "new_vector_usable": used.status_code == 200,
            "uncached_vector_usable": cold_after.status_code == 200,
            "vectors_intact": after == before,
        }
    d, a, ld = report["during_outage"], report["after_restart"], report["load"]
    report["passed"] = bool(
        d["write_is_openai_503"]
        and d["uncached_is_openai_503"]
        and ld["during_outage"] > 0
        and ld["failed_during_outage"] == 0
        and all(a.values())
    )
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--outage-s", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=None, help="write redis_faults.json here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        redis = RedisServer(Path(workdir))
        redis.start()
        try:
            with demo_server_process(args=("--redis-url", redis.url)) as (url, _):
                result = asyncio.run(scenario(url, redis, args.clients, args.outage_s))
        finally:
            redis.stop()
    result["command"] = "python " + " ".join(["benchmarks/redis_faults.py", *sys.argv[1:]])
    print(json.dumps(result, indent=1))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "redis_faults.json").write_text(json.dumps(result, indent=1) + "\n")
    sys.exit(0 if result["passed"] else 1)


if __name__ == "__main__":
    main()
