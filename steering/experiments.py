"""A/B experiments: arms of steering, sticky assignment, and tallies kept in the registry (shared by replicas).

An experiment is a document in the registry; its running tallies are registry counters, incremented
atomically by whichever replica served the request, so a report read from any replica covers all traffic.
Medians come from per-arm histograms (exact completion-token counts; latency in log-spaced buckets).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import random
import re
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from steering.errors import BadRequestError, NotFoundError
from steering.spec import SteeringTerm
from steering.store.base import VectorStore

logger = logging.getLogger("steerserve.experiments")
KIND = "experiment"
PREFIX = "experiment/"
MAX_ARMS = 8
MAX_EXPERIMENTS = 32  # bounds the arm label's cardinality in Prometheus
LATENCY_EDGES = tuple(round(0.01 * 1.25**i, 6) for i in range(48))  # 10 ms .. ~440 s
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class Arm(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=_NAME.pattern)
    steering: list[SteeringTerm] | str | None = Field(
        default=None, description="Terms, a preset name, or null for the unsteered control."
    )
    weight: float = Field(default=1.0, gt=0, le=1e6)


class ExperimentBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    arms: list[Arm] = Field(min_length=1, max_length=MAX_ARMS)
    description: str = Field(default="", max_length=4096)

    @model_validator(mode="after")
    def _distinct(self) -> ExperimentBody:
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise ValueError("arm names must be distinct")
        return self


def pick_arm(name: str, arms: list[dict[str, Any]], user: str | None) -> dict[str, Any]:
    """Sticky by `user` (a hash of experiment and user picks a point on the weight line), else random."""
    total = sum(float(a["weight"]) for a in arms)
    if user:
        digest = hashlib.sha256(f"{name}\x00{user}".encode()).digest()
        point = int.from_bytes(digest[:8], "big") / 2**64 * total
    else:
        point = random.random() * total
    for arm in arms:
        point -= float(arm["weight"])
        if point < 0:
            return arm
    return arms[-1]


def latency_bucket(seconds: float) -> int:
    for index, edge in enumerate(LATENCY_EDGES):
        if seconds <= edge:
            return index
    return len(LATENCY_EDGES)


def _median(histogram: dict[float, float]) -> float | None:
    total = sum(histogram.values())
    if total <= 0:
        return None
    seen = 0.0
    for value in sorted(histogram):
        seen += histogram[value]
        if seen >= total / 2:
            return value
    return None


class Experiments:
    """CRUD, assignment, tallies and reports; documents and counters live in the registry."""

    def __init__(self, store: VectorStore, cache_seconds: float = 1.0) -> None:
        self.store = store
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, dict[str, Any] | None]] = {}
        self._pending: set[asyncio.Task[None]] = set()

    async def put(self, name: str, body: ExperimentBody) -> dict[str, Any]:
        if not _NAME.match(name):
            raise BadRequestError("experiment names are 1-64 of [A-Za-z0-9._-]", param="name")
        existing = await self.store.get_document(KIND, name)
        if existing is None and len(await self.store.list_documents(KIND)) >= MAX_EXPERIMENTS:
            raise BadRequestError(f"at most {MAX_EXPERIMENTS} experiments; delete one first", param="name")
        doc = {
            "name": name,
            "object": "steering.experiment",
            "model": PREFIX + name,
            "arms": [a.model_dump(mode="json") for a in body.arms],
            "description": body.description,
            "created_at": existing["created_at"] if existing else time.time(),
        }
        await self.store.put_document(KIND, name, doc)
        self._cache.pop(name, None)
        return doc

    async def get(self, name: str) -> dict[str, Any]:
        now = time.monotonic()
        cached = self._cache.get(name)
        if cached is not None and now - cached[0] < self.cache_seconds:
            doc = cached[1]
        else:
            doc = await self.store.get_document(KIND, name)
            self._cache[name] = (now, doc)
        if doc is None:
            raise NotFoundError(f"experiment {name!r} does not exist", param="experiment")
        return doc

    async def list(self) -> list[dict[str, Any]]:
        return await self.store.list_documents(KIND)

    async def delete(self, name: str) -> None:
        if not await self.store.delete_document(KIND, name):
            raise NotFoundError(f"experiment {name!r} does not exist", param="name")
        self._cache.pop(name, None)

    def record(
        self, name: str, arm: str, completion_tokens: int, latency: float, markers: int, truncated: bool
    ) -> None:
        """Add one response to the shared tallies (in the background: the response is not held up)."""
        deltas = {
            f"{arm}|requests": 1.0,
            f"{arm}|completion_tokens": float(completion_tokens),
            f"{arm}|latency_s": latency,
            f"{arm}|reflected": 1.0 if markers > 0 else 0.0,
            f"{arm}|markers": float(markers),
            f"{arm}|truncated": 1.0 if truncated else 0.0,
            f"{arm}|tokens={completion_tokens}": 1.0,
            f"{arm}|latency_bucket={latency_bucket(latency)}": 1.0,
        }

        async def write() -> None:
            try:
                await self.store.add_counters(KIND, name, deltas)
            except Exception as exc:  # noqa: BLE001 - tallies are best effort; the response already went out
                logger.warning("experiment %s: tally not recorded (%s)", name, exc)

        task = asyncio.get_running_loop().create_task(write())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def flush(self) -> None:
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    async def report(self, name: str) -> dict[str, Any]:
        doc = await self.get(name)
        counters = await self.store.get_counters(KIND, name)
        arms = []
        for arm in doc["arms"]:
            prefix = f"{arm['name']}|"
            own = {k[len(prefix) :]: v for k, v in counters.items() if k.startswith(prefix)}
            n = own.get("requests", 0.0)
            tokens = {int(k.split("=")[1]): v for k, v in own.items() if k.startswith("tokens=")}
            buckets = {int(k.split("=")[1]): v for k, v in own.items() if k.startswith("latency_bucket=")}
            latencies = {(LATENCY_EDGES[b] if b < len(LATENCY_EDGES) else math.inf): v for b, v in buckets.items()}
            arms.append(
                {
                    "name": arm["name"],
                    "steering": arm["steering"],
                    "weight": arm["weight"],
                    "requests": int(n),
                    "mean_completion_tokens": own.get("completion_tokens", 0.0) / n if n else None,
                    "median_completion_tokens": _median({float(k): v for k, v in tokens.items()}),
                    "mean_latency_s": own.get("latency_s", 0.0) / n if n else None,
                    "median_latency_s_upper_bound": _median(latencies),
                    "reflection_rate": own.get("reflected", 0.0) / n if n else None,
                    "markers_per_response": own.get("markers", 0.0) / n if n else None,
                    "truncation_rate": own.get("truncated", 0.0) / n if n else None,
                }
            )
        return {"object": "steering.experiment_report", "name": name, "arms": arms}
