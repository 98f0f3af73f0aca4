"""Activation capture, API-process side: ask the engine for residual-stream rows of one prompt.

The prompt runs as a one-token request whose ``extra_args`` name the layers and positions wanted; the
workers gather those rows during prefill (see `steering.worker.capture`) and hand them back through the
worker extension. A row budget keeps the rows of all captures in flight within the workers' fixed buffer,
and each capture gets its own cache salt, so no prompt token is skipped by the prefix cache.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from steering.errors import InvalidSteeringError

Float32Array = npt.NDArray[np.float32]
POOLS = ("none", "mean")
CAPTURE_SITES = ("residual", "mlp")  # where rows can be read (attn output: not kept)


@dataclass(frozen=True)
class Activations:
    """Captured rows: per layer `[len(positions), hidden]`, or `[hidden]` when mean-pooled over `count` rows."""

    layers: dict[int, Float32Array]
    positions: list[int]
    pool: str
    count: int


class RowBudget:
    """A counting semaphore over capture rows (the workers' buffer capacity)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._free = capacity
        self._changed = asyncio.Condition()

    async def acquire(self, rows: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self._free >= rows)
            self._free -= rows

    async def release(self, rows: int) -> None:
        async with self._changed:
            self._free += rows
            self._changed.notify_all()


class ActivationCapture:
    """Runs captures on one `AsyncLLM` whose workers carry the steerserve plugin."""

    def __init__(self, llm: Any, num_layers: int, hidden_size: int, capacity: int, max_model_len: int) -> None:
        self.llm = llm
        self.num_layers = num_layers
        self.hidden_size = hidden_size
        self.budget = RowBudget(capacity)
        self.max_model_len = max_model_len

    def check(self, prompt_len: int, layers: Sequence[int], positions: Sequence[int] | None, pool: str) -> int:
        """Validate in the API process (never in a worker); returns the number of rows the capture needs."""
        if self.budget.capacity <= 0:
            raise InvalidSteeringError("this engine was started without activation capture", param="capture")
        if pool not in POOLS:
            raise InvalidSteeringError(f"pool must be one of {POOLS}", param="pool")
        if not 0 < prompt_len < self.max_model_len:
            raise InvalidSteeringError(
                f"a capture prompt needs 1 to {self.max_model_len - 1} tokens, got {prompt_len}", param="prompt"
            )
        if not layers or any(not 0 <= layer < self.num_layers for layer in layers):
            raise InvalidSteeringError(f"capture layers must lie in [0, {self.num_layers})", param="layers")
        rows = prompt_len if positions is None else len(set(positions))
        if positions is not None and any(not 0 <= p < prompt_len for p in positions):
            raise InvalidSteeringError(f"capture positions must lie in [0, {prompt_len})", param="positions")
        if rows > self.budget.capacity:
            raise InvalidSteeringError(
                f"{rows} capture rows exceed the engine's capture capacity of {self.budget.capacity} per prompt",
                param="positions",
            )
        return rows

    async def run(
        self,
        prompt_token_ids: Sequence[int],
        layers: Sequence[int],
        positions: Sequence[int] | None = None,
        pool: str = "none",
        extra_args: dict[str, Any] | None = None,
        site: str = "residual",
    ) -> Activations:
        """Capture the stream after each block in `layers` (layer L = HF `hidden_states[L + 1]`), or with
        `site="mlp"` the block's MLP output (where the `mlp` steering site acts)."""
        from vllm import SamplingParams

        ids = [int(t) for t in prompt_token_ids]
        rows = self.check(len(ids), layers, positions, pool)
        if site not in CAPTURE_SITES:
            raise InvalidSteeringError(f"capture site must be one of {CAPTURE_SITES}", param="site")
        wanted = sorted(set(positions)) if positions is not None else list(range(len(ids)))
        capture_id = uuid.uuid4().hex
        layer_ids = sorted({int(x) for x in layers})
        payload = {"id": capture_id, "layers": layer_ids, "positions": wanted, "pool": pool, "site": site}
        params = SamplingParams(
            max_tokens=1, temperature=0.0, extra_args={**(extra_args or {}), "steerserve_capture": payload}
        )
        inputs = {"prompt_token_ids": ids, "cache_salt": f"capture:{capture_id}"}
        await self.budget.acquire(rows)
        try:
            async for _ in self.llm.generate(inputs, params, f"capture-{capture_id}"):
                pass
            replies: list[dict[str, Any]] = await self.llm.collective_rpc(
                "steerserve_pop_captures", args=([capture_id],)
            )
        finally:
            await self.budget.release(rows)
        return merge_replies(replies, capture_id, layer_ids, self.hidden_size)


def merge_replies(replies: list[dict[str, Any]], capture_id: str, layers: list[int], hidden: int) -> Activations:
    """Join the ranks' answers: pipeline stages hold different layers; tensor-parallel ranks hold equal rows."""
    merged: dict[int, Float32Array] = {}
    positions: list[int] = []
    pool, count = "none", 0
    for reply in replies:
        result = reply.get(capture_id)
        if result is None:
            continue
        if "error" in result:
            raise InvalidSteeringError(str(result["error"]), param="site")
        pool, count = result["pool"], int(result["count"])
        positions = list(result["positions"])
        for layer, raw in result["layers"].items():
            if int(layer) not in merged:
                data = np.frombuffer(raw, dtype="<f4").copy()
                merged[int(layer)] = data if pool == "mean" else data.reshape(-1, hidden)
    missing = [layer for layer in layers if layer not in merged]
    if missing:
        raise RuntimeError(f"capture {capture_id}: no rows came back for layers {missing}")
    return Activations(layers=merged, positions=positions, pool=pool, count=count)
