"""Run arms (strengths of one vector, plus a random direction of equal norm as control) over a dataset through
a steerserve server, with common seeds: the same item and sample index get the same sampling seed in every
arm, so arms are compared pairwise.

The control comes plain (a Gaussian direction rescaled to the vector's per-layer norms) or orthogonal (the same
direction with its component along the vector removed before rescaling). In a small model a plain random
direction overlaps the vector by chance (cosine ~ 1/sqrt(hidden size)), so part of its effect is the vector's own;
the orthogonal control removes that part. Each random arm records its cosine with the vector."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import httpx
import numpy as np
from safetensors.numpy import load

from clients.ab.datasets import Item
from clients.ab.grading import extract_answer, is_correct


@dataclass(frozen=True)
class ArmSpec:
    name: str
    vector: str  # "reflection" style id of the studied vector, "random" or "random-orthogonal"
    strength: float
    steering: list[dict[str, Any]] | None
    cosine: float | None = None  # a random arm's cosine with the studied vector (all layers together)


DEFAULT_MAX_TOKENS = 512

# --random-control: which random directions are run as controls, and their arms' name prefix and vector label.
RANDOM_CONTROLS = {"plain": ("random", "random"), "orthogonal": ("random-orth", "random-orthogonal")}


@dataclass(frozen=True)
class RunConfig:
    base_url: str
    model: str
    vector: str
    strengths: tuple[float, ...]
    random_strengths: tuple[float, ...]
    samples: int = 1
    temperature: float | None = None  # None: the served model's default (its generation_config.json)
    top_p: float | None = None
    max_tokens: int | None = None  # None: DEFAULT_MAX_TOKENS, capped at the served context minus each prompt
    seed: int = 0
    concurrency: int = 32
    api_key: str | None = None
    admin_key: str | None = None
    term_fields: tuple[tuple[str, Any], ...] = ()  # extra term fields for every steered arm (op, site, positions)
    random_controls: tuple[str, ...] = ("plain",)  # keys of RANDOM_CONTROLS


def sample_seed(item: Item, sample: int, seed: int) -> int:
    digest = hashlib.sha256(f"{seed}|{item.id}|{sample}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def random_direction(
    vector: dict[str, np.ndarray], seed: int, orthogonal: bool = False
) -> tuple[dict[str, np.ndarray], float]:
    """A random direction with `vector`'s per-layer norms (same seed, same direction whether orthogonal or not)
    and its cosine with `vector` over all layers together. `orthogonal` removes each layer's component along
    the vector before rescaling."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for name, values in sorted(vector.items()):
        target = np.asarray(values, dtype=np.float64)
        raw = rng.standard_normal(target.shape)
        norm = float(np.linalg.norm(values))
        if orthogonal and norm > 0:
            raw = raw - (raw @ target) / (target @ target) * target
        out[name] = np.asarray(raw * (norm / float(np.linalg.norm(raw))))
    names = sorted(vector)
    flat_v = np.concatenate([np.asarray(vector[n], dtype=np.float64) for n in names])
    flat_r = np.concatenate([out[n] for n in names])
    cosine = float(flat_r @ flat_v / max(1e-30, float(np.linalg.norm(flat_r) * np.linalg.norm(flat_v))))
    return out, cosine


async def random_control(
    client: httpx.AsyncClient, vector: str, seed: int, headers: dict[str, str], orthogonal: bool = False
) -> tuple[str, float]:
    """Upload a random direction with the vector's per-layer norms and defaults; returns its id and its cosine
    with the vector."""
    info = (await client.get(f"/v1/steering/vectors/{vector}")).raise_for_status().json()
    data = (await client.get(f"/v1/steering/vectors/{vector}/data")).raise_for_status().content
    tensors = load(io.BytesIO(data).getvalue())
    directions, cosine = random_direction(tensors, seed, orthogonal)
    layers = {name.split(".")[1]: _b64(values) for name, values in directions.items()}
    defaults = dict(info["defaults"])
    kind = "orthogonal random" if orthogonal else "random"
    body = {
        "id": f"{vector}-random{seed}" + ("-orth" if orthogonal else ""),
        "layers": layers,
        "description": f"{kind} direction with the per-layer norms of {vector} v{info['version']} (A/B control)",
        "defaults": {k: defaults[k] for k in ("op", "site", "positions", "strength", "layers") if k in defaults},
        "provenance": {
            "random_control_of": vector,
            "version": info["version"],
            "seed": seed,
            "orthogonal": orthogonal,
            "cosine": round(cosine, 6),
        },
    }
    created = await client.post("/v1/steering/vectors", json=body, headers=headers)
    created.raise_for_status()
    return str(body["id"]), cosine


def _b64(values: np.ndarray) -> str:
    import base64

    return base64.b64encode(np.asarray(values, dtype="<f4").tobytes()).decode()


async def post_with_retry(
    client: httpx.AsyncClient, path: str, body: dict[str, Any], attempts: int = 4
) -> tuple[httpx.Response, float]:
    """POST, retrying a dropped connection (a pooled keep-alive connection the server closed just then) and 503
    overload answers; returns the response and the latency of the attempt that got it."""
    for attempt in range(attempts):
        started = time.perf_counter()
        try:
            response = await client.post(path, json=body)
        except httpx.TransportError:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(0.2 * (attempt + 1))
            continue
        if response.status_code != 503 or attempt == attempts - 1:
            return response, time.perf_counter() - started
        await asyncio.sleep(float(response.headers.get("Retry-After", "1")))
    raise AssertionError("unreachable")


def build_arms(config: RunConfig, controls: dict[str, tuple[str, float]]) -> list[ArmSpec]:
    """The vector's arms (the baseline, strength 0, always), then each random control's (`controls`: kind ->
    uploaded id and cosine)."""
    extra = dict(config.term_fields)
    arms = []
    for strength in sorted(set(config.strengths) | {0.0}):
        steering = None if strength == 0 else [{"vector": config.vector, "strength": strength, **extra}]
        arms.append(ArmSpec(f"{config.vector}@{strength:g}", config.vector, float(strength), steering))
    for kind, (random_id, cosine) in controls.items():
        prefix, label = RANDOM_CONTROLS[kind]
        for strength in sorted(set(config.random_strengths) - {0.0}):
            steering = [{"vector": random_id, "strength": strength, **extra}]
            arms.append(ArmSpec(f"{prefix}@{strength:g}", label, float(strength), steering, round(cosine, 6) + 0.0))
    return arms


async def run(
    config: RunConfig, items: list[Item], progress: Callable[[int, int], None] = lambda done, total: None
) -> tuple[list[ArmSpec], list[dict[str, Any]]]:
    """Every (item, sample, arm) once; returns the arms and one result row per request."""
    headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
    admin = (
        {"Authorization": f"Bearer {config.admin_key or config.api_key}"}
        if (config.admin_key or config.api_key)
        else {}
    )
    timeout = httpx.Timeout(600.0, connect=10.0)
    limits = httpx.Limits(max_connections=config.concurrency)
    async with httpx.AsyncClient(base_url=config.base_url, headers=headers, timeout=timeout, limits=limits) as client:
        controls = {
            kind: await random_control(client, config.vector, config.seed, admin, orthogonal=kind == "orthogonal")
            for kind in (config.random_controls if config.random_strengths else ())
        }
        arms = build_arms(config, controls)
        budgets = await completion_budgets(client, config, items)
        jobs = [(item, k, arm) for item in items for k in range(config.samples) for arm in arms]
        gate = asyncio.Semaphore(config.concurrency)
        rows: list[dict[str, Any]] = []

        async def one(item: Item, k: int, arm: ArmSpec) -> None:
            body: dict[str, Any] = {
                "model": config.model,
                "messages": [{"role": "user", "content": item.prompt}],
                "max_tokens": budgets[item.id],
                "seed": sample_seed(item, k, config.seed),
            }
            if config.temperature is not None:
                body["temperature"] = config.temperature
            if config.top_p is not None:
                body["top_p"] = config.top_p
            if arm.steering is not None:
                body["steering"] = arm.steering
            async with gate:
                response, latency = await post_with_retry(client, "/v1/chat/completions", body)
            response.raise_for_status()
            data = response.json()
            choice = data["choices"][0]
            content = choice["message"].get("content") or ""
            reasoning = choice["message"].get("reasoning") or choice["message"].get("reasoning_content")
            details = data["usage"].get("completion_tokens_details") or {}
            reflection = (data.get("steering") or {}).get("reflection") or {}
            rows.append(
                {
                    "item": item.id,
                    "sample": k,
                    "arm": arm.name,
                    "vector": arm.vector,
                    "strength": arm.strength,
                    "answer": item.answer,
                    "extracted": extract_answer(content),
                    "correct": is_correct(content, item.answer),
                    "completion_tokens": data["usage"]["completion_tokens"],
                    "reasoning_tokens": details.get("reasoning_tokens"),
                    "markers": reflection.get("markers", 0),
                    "reflected": reflection.get("markers", 0) > 0,
                    "finish_reason": choice["finish_reason"],
                    "latency_s": round(latency, 4),
                    "reasoning_chars": len(reasoning or ""),
                }
            )
            progress(len(rows), len(jobs))

        await asyncio.gather(*(one(*job) for job in jobs))
    return arms, rows


async def completion_budgets(client: httpx.AsyncClient, config: RunConfig, items: list[Item]) -> dict[str, int]:
    """max_tokens per item: `config.max_tokens` when given (the server refuses what does not fit, with its own
    message); else DEFAULT_MAX_TOKENS capped at the served context minus the item's chat prompt (from
    /tokenize, which reports both), so the default fits any served model."""
    if config.max_tokens is not None:
        return {item.id: config.max_tokens for item in items}
    gate = asyncio.Semaphore(config.concurrency)

    async def room(item: Item) -> tuple[str, int]:
        body = {"model": config.model, "messages": [{"role": "user", "content": item.prompt}]}
        async with gate:
            answer = (await client.post("/tokenize", json=body)).raise_for_status().json()
        # at least 1: a prompt that fills the context gets the server's own "prompt too long" answer
        return item.id, max(1, min(DEFAULT_MAX_TOKENS, int(answer["max_model_len"]) - int(answer["count"])))

    return dict(await asyncio.gather(*(room(item) for item in items)))


def config_json(config: RunConfig) -> dict[str, Any]:
    data = asdict(config)
    data.pop("api_key", None)
    data.pop("admin_key", None)
    clean: dict[str, Any] = json.loads(json.dumps(data))
    return clean
