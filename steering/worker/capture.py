"""Activation capture in the worker: residual-stream rows of chosen requests, layers and positions.

A request asks through ``extra_args["steerserve_capture"] = {"id", "layers", "positions", "pool"}``.
Each step, the runner writes the step-local token indices of the wanted rows into a fixed index buffer and
their count into a counter; every patched decoder layer calls the custom op
`steerserve::capture_rows`, which gathers those rows of its output stream (h + r) into the layer's own fixed
buffer. The op is opaque to torch.compile, so its count check runs on every call: with no row wanted (no
request captures) it does nothing, eagerly and compiled. On CUDA, where a graph replays what was recorded,
it always gathers the buffer's full capacity (padding indices point at row 0 and are ignored).
After the forward the rows are copied out and accumulated per request — kept per position, or summed for a
mean — and published as soon as every wanted position is in, for the API process to pop. The API side
bounds what is in flight to the buffer's capacity, so a step never holds more wanted rows than the buffer.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from steering.worker.layout import TokenLayout
from steering.worker.ops import LIBRARY

logger = logging.getLogger("steerserve.plugin")
CAPTURE_KEY = "steerserve_capture"
MAX_KEPT_RESULTS = 1024  # results never popped (a vanished caller) are dropped oldest first


@dataclass
class CaptureJob:
    """What one request wants and what has been gathered so far."""

    req_id: str
    capture_id: str
    layers: tuple[int, ...]
    positions: frozenset[int]  # the prompt positions wanted
    pool: str  # "none" | "mean"
    site: str = "residual"  # "residual": stream after the block; "mlp": the block's MLP output
    rows: dict[int, dict[int, np.ndarray]] = field(default_factory=dict)  # layer -> position -> row
    sums: dict[int, np.ndarray] = field(default_factory=dict)  # layer -> float64 sum (pool "mean")
    count: int = 0
    seen_positions: set[int] = field(default_factory=set)

    def result(self) -> dict[str, Any]:
        """Plain data for the RPC reply: per layer float32 bytes, positions in the order of the rows."""
        if self.pool == "mean":
            layers = {layer: (total / max(1, self.count)).astype("<f4").tobytes() for layer, total in self.sums.items()}
            return {"pool": "mean", "count": self.count, "positions": [], "layers": layers}
        positions = sorted(self.seen_positions)
        layers = {
            layer: np.stack([by_pos[p] for p in positions]).astype("<f4").tobytes() if positions else b""
            for layer, by_pos in self.rows.items()
        }
        return {"pool": "none", "count": len(positions), "positions": positions, "layers": layers}


class CaptureState:
    """Fixed gather buffers shared with the patched layers, plus the per-request accumulation."""

    def __init__(
        self, capacity: int, local_layers: Sequence[int], hidden_size: int, dtype: torch.dtype, device: torch.device
    ) -> None:
        self.capacity = capacity
        self.local_layers = tuple(local_layers)
        with torch.inference_mode(False):
            self.index = torch.zeros(capacity, dtype=torch.int64, device=device)
            # Rows wanted this step, read by the op on CPU; on CUDA the op ignores it (and it is never written).
            self.count = torch.zeros(1, dtype=torch.int64, device=device)
            # 1 for rows of the residual stream (h + r), 0 for rows of the block's MLP output (h alone)
            self.residual_scale = torch.ones(capacity, 1, dtype=dtype, device=device)
            # The residual of layers that return one hidden state (the stream itself), expanded to each step's rows
            self.zero_residual = torch.zeros(1, hidden_size, dtype=dtype, device=device)
            self.buffers = {
                layer: torch.zeros(capacity, hidden_size, dtype=dtype, device=device) for layer in self.local_layers
            }
        self.device = device
        self.jobs: dict[str, CaptureJob] = {}  # by engine request id
        self.results: OrderedDict[str, dict[str, Any]] = OrderedDict()  # by capture id
        self._pending: list[tuple[CaptureJob, int]] = []  # (job, position) of each buffer row this step
        self.overflows = 0
        # False when the layers return one hidden state (no separate MLP output reaches the layer's end)
        self.mlp_site = True

    @property
    def active(self) -> bool:
        """Rows are wanted in the step about to run (eager mode skips the gather otherwise)."""
        return bool(self._pending)

    @property
    def has_jobs(self) -> bool:
        return bool(self.jobs)

    def attach(self, req_id: str, extra_args: Mapping[str, Any] | None) -> None:
        payload = (extra_args or {}).get(CAPTURE_KEY)
        if not payload:
            return
        if payload.get("site") == "mlp" and not self.mlp_site:
            self.results[str(payload["id"])] = {
                "error": "this model's decoder layers return one hidden state: capture site 'mlp' is not "
                "available; capture site 'residual'"
            }
            return
        self.jobs[req_id] = CaptureJob(
            req_id=req_id,
            capture_id=str(payload["id"]),
            layers=tuple(int(x) for x in payload["layers"] if int(x) in self.buffers),
            positions=frozenset(int(p) for p in payload["positions"]),
            pool=str(payload.get("pool", "none")),
            site=str(payload.get("site", "residual")),
        )

    def forget(self, req_id: str) -> None:
        """The request left the runner before every wanted row was in (aborted): publish what it has."""
        job = self.jobs.pop(req_id, None)
        if job is not None:
            self._publish(job)

    def _publish(self, job: CaptureJob) -> None:
        self.jobs.pop(job.req_id, None)
        self.results[job.capture_id] = job.result()
        while len(self.results) > MAX_KEPT_RESULTS:
            self.results.popitem(last=False)

    def prepare_step(self, layout: TokenLayout, req_ids: Sequence[str | None]) -> None:
        """Choose this step's rows: prompt tokens of capturing requests at the wanted positions."""
        self._pending = []
        if not self.jobs:
            return
        rows: list[int] = []
        for batch_index, req_id in enumerate(req_ids):
            job = self.jobs.get(req_id) if req_id is not None else None
            if job is None:
                continue
            tokens = np.flatnonzero((layout.request_index == batch_index) & layout.is_prompt)
            for token in tokens.tolist():
                position = int(layout.position[token])
                if position in job.positions:
                    rows.append(token)
                    self._pending.append((job, position))
        if len(rows) > self.capacity:
            self.overflows += 1
            logger.error(
                "capture: %d rows wanted in one step, capacity %d; extra rows dropped", len(rows), self.capacity
            )
            rows, self._pending = rows[: self.capacity], self._pending[: self.capacity]
        if rows:
            self.index[: len(rows)].copy_(torch.tensor(rows, dtype=torch.int64))
            scale = [0.0 if job.site == "mlp" else 1.0 for job, _ in self._pending]
            self.residual_scale[: len(rows), 0].copy_(torch.tensor(scale, dtype=self.residual_scale.dtype))
        if self.device.type == "cpu":
            self.count[0] = len(rows)

    def collect(self) -> None:
        """After the forward: move this step's rows out of the buffers into their requests."""
        if not self._pending:
            return
        count = len(self._pending)
        host = {layer: buffer[:count].float().cpu().numpy() for layer, buffer in self.buffers.items()}
        self.index[:count].zero_()  # every entry must stay a valid row for any later (smaller) step
        if self.device.type == "cpu":
            self.count[0] = 0
        for row, (job, position) in enumerate(self._pending):
            if job.pool == "mean" and position in job.seen_positions:
                continue  # recomputed after preemption: count each position once
            if job.pool == "mean":
                for layer in job.layers:
                    job.sums.setdefault(layer, np.zeros(host[layer].shape[1], dtype=np.float64))
                    job.sums[layer] += host[layer][row]
                job.count += 1
            else:
                for layer in job.layers:
                    job.rows.setdefault(layer, {})[position] = host[layer][row].copy()
            job.seen_positions.add(position)
        for job in {id(job): job for job, _ in self._pending}.values():
            if job.positions <= job.seen_positions:
                self._publish(job)
        self._pending = []

    def pop(self, capture_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        return {cid: self.results.pop(cid) for cid in capture_ids if cid in self.results}


# A low-level library op (like steering.worker.ops.steer_in_place): a fraction of `torch.library.custom_op`'s
# per-call cost.
LIBRARY.define(  # type: ignore[no-untyped-call]
    "capture_rows(Tensor hidden, Tensor residual, Tensor index, Tensor residual_scale, Tensor count, "
    "Tensor(a!) buffer) -> ()"
)


def _capture_rows(
    hidden: torch.Tensor,
    residual: torch.Tensor,
    index: torch.Tensor,
    residual_scale: torch.Tensor,
    count: torch.Tensor,
    buffer: torch.Tensor,
) -> None:
    """buffer[:n] = hidden[index[:n]] + residual[index[:n]] * residual_scale[:n], n = count[0].

    Nothing at all when no row is wanted. On CUDA the whole capacity is gathered every call, so that a CUDA
    graph recorded while nothing was captured still gathers on replay (the index buffer's padding is row 0)."""
    if buffer.is_cuda:
        buffer.copy_(hidden.index_select(0, index) + residual.index_select(0, index) * residual_scale)
        return
    n = int(count[0])
    if n == 0:
        return
    rows = index[:n]
    buffer[:n].copy_(hidden.index_select(0, rows) + residual.index_select(0, rows) * residual_scale[:n])


def _capture_rows_fake(*_args: object) -> None:
    return None


for _key in ("CPU", "CUDA"):
    LIBRARY.impl("capture_rows", _capture_rows, _key)  # type: ignore[no-untyped-call]
torch.library.register_fake("steerserve::capture_rows", _capture_rows_fake, lib=LIBRARY)
capture_rows = torch.ops.steerserve.capture_rows
