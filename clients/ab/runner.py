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
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from safetensors.numpy import load

from clients.ab.datasets import Item
from clients.ab.grading import extract_answer, is_correct
from clients.client import AsyncSteerClient


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
    steer: AsyncSteerClient, vector: str, seed: int, orthogonal: bool = False
) -> tuple[str, float]:
    """Upload a random direction with the vector's per-layer norms and defaults; returns its id and its cosine
    with the vector."""
    info = await steer.get_vector(vector)
    tensors = load(await steer.export_vector(vector))
    directions, cosine = random_direction(tensors, seed, orthogonal)
    random_id = f"{vector}-random{seed}" + ("-orth" if orthogonal else "")
    kind = "orthogonal random" if orthogonal else "random"
    await steer.push_vector(
        random_id,
        {int(name.split(".")[1]): values for name, values in directions.items()},
        defaults=info.defaults.model_dump(mode="json", include={"op", "site", "positions", "strength", "layers"}),
        description=f"{kind} direction with the per-layer norms of {vector} v{info.version} (A/B control)",
        provenance={
            "random_control_of": vector,
            "version": info.version,
            "seed": seed,
            "orthogonal": orthogonal,
            "cosine": round(cosine, 6),
        },
    )
    return random_id, cosine


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
    """Every (item, sample, arm) once; returns the arms and one result row per request. The registry calls go
    through `AsyncSteerClient`, the generations through the official openai SDK (its retries cover a dropped
    keep-alive connection and 503 overload answers)."""
    from openai import AsyncOpenAI

    key = config.admin_key or config.api_key
    async with AsyncSteerClient(config.base_url, config.api_key, config.admin_key, timeout=600.0) as steer:
        controls = {
            kind: await random_control(steer, config.vector, config.seed, orthogonal=kind == "orthogonal")
            for kind in (config.random_controls if config.random_strengths else ())
        }
        arms = build_arms(config, controls)
        budgets = await completion_budgets(steer, config, items)
    jobs = [(item, k, arm) for item in items for k in range(config.samples) for arm in arms]
    gate = asyncio.Semaphore(config.concurrency)
    rows: list[dict[str, Any]] = []
    openai = AsyncOpenAI(base_url=f"{config.base_url}/v1", api_key=key or "none", timeout=600.0, max_retries=3)

    async def one(item: Item, k: int, arm: ArmSpec) -> None:
        async with gate:
            started = time.perf_counter()
            completion = await openai.chat.completions.create(
                model=config.model,
                messages=[{"role": "user", "content": item.prompt}],
                max_tokens=budgets[item.id],
                seed=sample_seed(item, k, config.seed),
                temperature=config.temperature,  # None: the served model's default
                top_p=config.top_p,
                extra_body={"steering": arm.steering} if arm.steering is not None else None,
            )
            latency = time.perf_counter() - started
        choice = completion.choices[0]
        content = choice.message.content or ""
        said = choice.message.model_extra or {}
        reasoning = said.get("reasoning") or said.get("reasoning_content")
        usage = completion.usage
        details = usage.completion_tokens_details if usage is not None else None
        reflection = ((completion.model_extra or {}).get("steering") or {}).get("reflection") or {}
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
                "completion_tokens": usage.completion_tokens if usage is not None else 0,
                "reasoning_tokens": details.reasoning_tokens if details is not None else None,
                "markers": reflection.get("markers", 0),
                "reflected": reflection.get("markers", 0) > 0,
                "finish_reason": choice.finish_reason,
                "latency_s": round(latency, 4),
                "reasoning_chars": len(reasoning or ""),
            }
        )
        progress(len(rows), len(jobs))

    async with openai:
        await asyncio.gather(*(one(*job) for job in jobs))
    return arms, rows


async def completion_budgets(steer: AsyncSteerClient, config: RunConfig, items: list[Item]) -> dict[str, int]:
    """max_tokens per item: `config.max_tokens` when given (the server refuses what does not fit, with its own
    message); else DEFAULT_MAX_TOKENS capped at the served context minus the item's chat prompt (from vLLM's
    /tokenize, which reports both), so the default fits any served model."""
    if config.max_tokens is not None:
        return {item.id: config.max_tokens for item in items}
    gate = asyncio.Semaphore(config.concurrency)

    async def room(item: Item) -> tuple[str, int]:
        async with gate:
            answer = await steer.tokenize(config.model, [{"role": "user", "content": item.prompt}])
        # at least 1: a prompt that fills the context gets the server's own "prompt too long" answer
        return item.id, max(1, min(DEFAULT_MAX_TOKENS, int(answer["max_model_len"]) - int(answer["count"])))

    return dict(await asyncio.gather(*(room(item) for item in items)))


def config_json(config: RunConfig) -> dict[str, Any]:
    data = asdict(config)
    data.pop("api_key", None)
    data.pop("admin_key", None)
    clean: dict[str, Any] = json.loads(json.dumps(data))
    return clean
