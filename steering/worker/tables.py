"""Per-worker steering state: the vector store, the fixed tables and the per-step token buffers.

Lives in each worker process (one per TP/PP rank). Requests carry content hashes and coefficients; a vector the
API process does not know every worker to hold yet rides along inline with the request (`load_vectors` on
arrival, so a new vector needs no round trip of its own). Nothing here raises on a request's content:
an exception in a worker kills the engine, so the API process validates first and this side logs and counts.
"""

from __future__ import annotations

import base64
import json
import logging
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from steering.config import EngineSteeringConfig
from steering.worker.capture import CaptureState
from steering.worker.conditions import KIND_LAST_PROMPT, KIND_PROMPT, ConditionState
from steering.worker.layout import TokenLayout
from steering.worker.ops import (
    MODE_ALL,
    MODE_CODES,
    MODE_GENERATED,
    MODE_LAST_PROMPT,
    MODE_PROMPT,
    MODE_TOKENS,
    op_coefficients,
)

MAX_FAILED_TICKETS = 4096
logger = logging.getLogger("steerserve.plugin")


@dataclass
class SiteTables:
    """Rows per slot for one (layer, site): K channels of direction and (c, b), plus their gate column."""

    directions: torch.Tensor  # [slots + 1, K, hidden], model dtype
    coefficients: torch.Tensor  # [slots + 1, K, 2], float32
    term_index: torch.Tensor  # [slots + 1, K], int64


@dataclass(frozen=True)
class StoredDirection:
    unit: torch.Tensor  # [hidden] float32, on the worker's device
    norm: float


class SteeringState:
    """Everything one worker needs to steer its local layers."""

    def __init__(
        self,
        config: EngineSteeringConfig,
        local_layers: Sequence[int],
        steerable_layers: Sequence[int],
        hidden_size: int,
        max_tokens: int,
        dtype: torch.dtype,
        device: torch.device,
        max_requests: int = 256,
    ) -> None:
        self.config = config
        self.local_layers = tuple(local_layers)
        self.steerable_layers = tuple(layer for layer in self.local_layers if layer in set(steerable_layers))
        self.hidden_size = hidden_size
        self.device = device
        self.dtype = dtype
        limits = config.limits
        rows = config.max_configs + 1
        k = limits.max_terms_per_site
        with torch.inference_mode(False):
            self.token_slot = torch.zeros(max_tokens, dtype=torch.int64, device=device)
            # float32: a scheduled term's gate carries its strength at the token (the op reads it as float32); one
            # column per term plus a scratch column that unused condition channels write
            self.token_gate = torch.zeros(max_tokens, limits.max_terms + 1, dtype=torch.float32, device=device)
            self.term_mode = torch.zeros(rows, limits.max_terms, dtype=torch.int8, device=device)
            self.term_tokens = torch.full(
                (rows, limits.max_terms, limits.max_trigger_tokens), -1, dtype=torch.int64, device=device
            )
            # Schedules, per (slot, term): strength(t) = start + sum_k slope_k * clamp(t - knot_k, 0, width_k);
            # an unscheduled term is start 1 with no segments (its gate stays 0/1)
            segments = limits.max_schedule_points - 1
            self.schedule_start = torch.ones(rows, limits.max_terms, dtype=torch.float32, device=device)
            self.schedule_knot = torch.zeros(rows, limits.max_terms, segments, dtype=torch.float32, device=device)
            self.schedule_width = torch.zeros(rows, limits.max_terms, segments, dtype=torch.float32, device=device)
            self.schedule_slope = torch.zeros(rows, limits.max_terms, segments, dtype=torch.float32, device=device)
            self.tables: dict[tuple[int, str], SiteTables] = {
                (layer, site): SiteTables(
                    directions=torch.zeros(rows, k, hidden_size, dtype=dtype, device=device),
                    coefficients=torch.zeros(rows, k, 2, dtype=torch.float32, device=device),
                    term_index=torch.zeros(rows, k, dtype=torch.int64, device=device),
                )
                for layer in self.steerable_layers
                for site in config.sites
            }
        self.conditions = ConditionState(
            self.steerable_layers,
            rows,
            k,
            limits.max_terms + 1,
            hidden_size,
            max_tokens,
            2 * max_requests + 1,
            dtype,
            device,
        )
        self.vectors: dict[str, dict[int, StoredDirection]] = {}
        # the API process's ledger says which slot a request's config is in; this side only fills rows
        self._slot_key: dict[int, str] = {}  # slot -> config hash its row holds
        self._slot_refs: dict[int, int] = {}  # slot -> requests using it here
        self._request_slot: dict[str, int] = {}
        self.failed: OrderedDict[str, str] = OrderedDict()  # ticket -> why the request could not be steered
        self._known: set[str] = set()
        self._slot_uses_tokens = np.zeros(rows, dtype=bool)
        self._slot_uses_schedule = np.zeros(rows, dtype=bool)
        self._dirty_tokens = 0
        self._slot_channels: dict[int, dict[tuple[int, str], int]] = {}
        # Eager mode without CUDA graphs may skip unused (layer, site)s; the runner decides at start-up.
        self.eager_skip = False
        # Nothing to steer, gate or capture in the step about to run (host-side, set by the runner each step;
        # eager runs then skip every layer's steering code, most of what the plugin costs an unsteered step)
        self.quiet = True
        self.step_channels = [0] * len(self.tables)  # channel_count as a list (eager code reads it per site)
        self.step_gating = False  # a request of the step has a condition
        # Channels in use this step per (layer, site), on the host (read by the op on CPU, by eager CUDA code)
        self.site_index = {key: index for index, key in enumerate(self.tables)}
        self.channel_count = torch.zeros(len(self.tables), dtype=torch.int64)
        self.errors = 0
        self.steps_steered = 0
        self.capture: CaptureState | None = (
            CaptureState(config.capture_tokens, self.local_layers, hidden_size, dtype, device)
            if config.capture_tokens > 0
            else None
        )

    # ---- vectors (inline with requests; dropped by collective RPC) ----------------------------------------
    def load_vectors(self, vectors: Iterable[Mapping[str, Any]]) -> int:
        """Store directions: each item {"sha256", "layers": {layer: little-endian float32 bytes}}."""
        count = 0
        for item in vectors:
            stored: dict[int, StoredDirection] = {}
            for layer, raw in item["layers"].items():
                data = torch.from_numpy(np.frombuffer(raw, dtype="<f4").copy())
                norm = float(torch.linalg.vector_norm(data))
                stored[int(layer)] = StoredDirection((data / norm).to(self.device), norm)
            self.vectors[str(item["sha256"])] = stored
            count += 1
        return count

    def drop_vectors(self, hashes: Iterable[str]) -> int:
        return sum(self.vectors.pop(h, None) is not None for h in hashes)

    # ---- requests -----------------------------------------------------------------------------------------
    @property
    def known_requests(self) -> set[str]:
        return self._known

    def attach_request(self, req_id: str, extra_args: Mapping[str, Any] | None) -> None:
        """Give a new request its slot (or none when unsteered)."""
        self.forget_request(req_id)
        self._known.add(req_id)
        if self.capture is not None:
            self.capture.attach(req_id, extra_args)
        payload = (extra_args or {}).get("steerserve")
        if isinstance(payload, str):  # through an HTTP route: vLLM's `vllm_xargs` is flat, so the spec is JSON
            payload = json.loads(payload)
        if not payload:
            return
        key, slot, ticket = str(payload["hash"]), int(payload.get("slot", -1)), str(payload.get("ticket", req_id))
        carried = payload.get("vectors") or ()
        if carried:  # vectors this worker may not hold yet, inline (see `ResolvedSpec.engine_fields`)
            try:
                self.load_vectors(
                    {"sha256": v["sha256"], "layers": {int(k): base64.b64decode(d) for k, d in v["layers"].items()}}
                    for v in carried
                )
            except (KeyError, ValueError, TypeError) as exc:
                self._fail(ticket, f"a vector it carries could not be loaded: {exc!r}")
                return
        if not 1 <= slot <= self.config.max_configs:
            self._fail(ticket, f"slot {slot} is outside 1..{self.config.max_configs}")
            return
        if self._slot_key.get(slot) != key:
            if self._slot_refs.get(slot, 0) > 0:
                self._fail(ticket, f"slot {slot} still holds another config in use")
                return
            if not self._fill_slot(slot, payload["terms"]):
                self._clear_slot(slot)
                self._slot_key.pop(slot, None)
                self._fail(ticket, "a vector of the config is not loaded in this worker")
                return
            self._slot_key[slot] = key
        if self.conditions.slot_decides_on_prompt(slot) and self.conditions.claim_row(req_id) == 0:
            self._fail(ticket, "no free row for a prompt-scoped condition")
            return
        self._slot_refs[slot] = self._slot_refs.get(slot, 0) + 1
        self._request_slot[req_id] = slot

    def _fail(self, ticket: str, reason: str) -> None:
        """The request runs without steering: remembered under its ticket so the API process fails it loudly."""
        self.errors += 1
        self.failed[ticket] = reason
        while len(self.failed) > MAX_FAILED_TICKETS:
            self.failed.popitem(last=False)
        logger.error("steering: request %s cannot be steered: %s", ticket, reason)

    def pop_failures(self, tickets: Iterable[str]) -> dict[str, str]:
        return {t: self.failed.pop(t) for t in tickets if t in self.failed}

    def forget_request(self, req_id: str) -> None:
        """The request finished (or, in V2, left the runner): free its claim on the slot."""
        self._known.discard(req_id)
        if self.capture is not None:
            self.capture.forget(req_id)
        self.conditions.park_row(req_id)
        slot = self._request_slot.pop(req_id, None)
        if slot is not None:
            self._slot_refs[slot] -= 1

    def slots_for(self, req_ids: Iterable[str | None]) -> np.ndarray:
        slot_of = self._request_slot
        return np.fromiter((slot_of.get(r, 0) if r is not None else 0 for r in req_ids), dtype=np.int64)

    @property
    def idle(self) -> bool:
        """No steered request is known and the buffers already say "slot 0": a step needs no work."""
        capturing = self.capture is not None and self.capture.has_jobs
        return not self._request_slot and self._dirty_tokens == 0 and not capturing

    @property
    def capturing(self) -> bool:
        """Rows are captured in the step about to run."""
        return self.capture is not None and self.capture.active

    @property
    def active_requests(self) -> int:
        return len(self._request_slot)

    # ---- tables -------------------------------------------------------------------------------------------
    def _clear_slot(self, slot: int) -> None:
        for tables in self.tables.values():
            tables.directions[slot].zero_()
            tables.coefficients[slot].zero_()
            tables.term_index[slot].zero_()
        self.term_mode[slot].zero_()
        self.term_tokens[slot].fill_(-1)
        self._slot_uses_tokens[slot] = False
        self.schedule_start[slot].fill_(1.0)
        self.schedule_width[slot].zero_()
        self.schedule_slope[slot].zero_()
        self._slot_uses_schedule[slot] = False
        self._slot_channels.pop(slot, None)
        self.conditions.clear_slot(slot)

    def _fill_slot(self, slot: int, terms: Sequence[Mapping[str, Any]]) -> bool:
        self._clear_slot(slot)
        used: dict[tuple[int, str], int] = {}
        limits = self.config.limits
        for index, term in enumerate(terms):
            stored = self.vectors.get(term["sha256"])
            if stored is None or index >= limits.max_terms:
                logger.error("steering: vector %s not loaded in this worker (term %d)", term["sha256"], index)
                return False
            mode = MODE_CODES[term["positions"]]
            self.term_mode[slot, index] = mode
            if mode == MODE_TOKENS:
                tokens = list(term["tokens"])[: limits.max_trigger_tokens]
                self.term_tokens[slot, index, : len(tokens)] = torch.tensor(tokens, dtype=torch.int64)
                self._slot_uses_tokens[slot] = True
            if term.get("schedule"):
                self._fill_schedule(slot, index, [(float(t), float(s)) for t, s in term["schedule"]])
            if term.get("condition") and not self._fill_condition(slot, index, term["condition"]):
                return False
            strength = float(term["strength"])  # 1 for a scheduled term: its gate carries the strength
            for layer in term["layers"]:
                tables = self.tables.get((int(layer), term["site"]))
                if tables is None:
                    continue  # a layer of another pipeline stage, or a site not compiled in
                direction = stored.get(int(layer))
                channel = used.get((int(layer), term["site"]), 0)
                if direction is None or channel >= limits.max_terms_per_site:
                    logger.error("steering: term %d cannot be placed on layer %s", index, layer)
                    return False
                used[(int(layer), term["site"])] = channel + 1
                c, b = op_coefficients(term["op"], strength, direction.norm)
                tables.directions[slot, channel] = direction.unit.to(self.dtype)
                tables.coefficients[slot, channel, 0] = c
                tables.coefficients[slot, channel, 1] = b
                tables.term_index[slot, channel] = index
        self._slot_channels[slot] = dict(used)
        return True

    def _fill_condition(self, slot: int, index: int, condition: Mapping[str, Any]) -> bool:
        layer = int(condition["layer"])
        direction = self.vectors.get(condition["sha256"], {}).get(layer)
        if direction is None:
            logger.error(
                "steering: condition vector %s has no layer %d here (term %d)", condition["sha256"], layer, index
            )
            return False
        placed = self.conditions.fill(
            slot, index, layer, direction.unit, float(condition["threshold"]), str(condition["scope"])
        )
        if not placed:
            logger.error("steering: term %d's condition cannot be placed on layer %d", index, layer)
        return placed

    def _fill_schedule(self, slot: int, index: int, points: Sequence[tuple[float, float]]) -> None:
        self._slot_uses_schedule[slot] = True
        self.schedule_start[slot, index] = points[0][1]
        for k, ((t0, s0), (t1, s1)) in enumerate(zip(points, points[1:], strict=False)):
            self.schedule_knot[slot, index, k] = t0
            self.schedule_width[slot, index, k] = t1 - t0
            self.schedule_slope[slot, index, k] = (s1 - s0) / (t1 - t0)

    # ---- per step -----------------------------------------------------------------------------------------
    def prepare_step(self, layout: TokenLayout, input_ids: torch.Tensor, req_ids: Sequence[str | None]) -> None:
        """Write the per-token buffers for the step about to run: slots and gates (padding stays slot 0), and
        the rows to capture."""
        if self.capture is not None:
            self.capture.prepare_step(layout, req_ids)
        n = layout.num_tokens
        steered = bool(layout.slot.any())
        self.quiet = not steered and not self.capturing
        self.channel_count.zero_()
        self.conditions.count.zero_()
        self.step_gating = False
        if not steered:
            self.step_channels = [0] * len(self.tables)
            if self._dirty_tokens:
                self.token_slot[: self._dirty_tokens].zero_()
                self._dirty_tokens = 0
            return
        self.steps_steered += 1
        for slot_id in np.unique(layout.slot).tolist():
            for site_key, count in self._slot_channels.get(slot_id, {}).items():
                index = self.site_index[site_key]
                self.channel_count[index] = max(count, int(self.channel_count[index]))
        self.step_channels = self.channel_count.tolist()
        slot = _to_device(layout.slot, self.device)
        is_prompt = _to_device(layout.is_prompt, self.device).unsqueeze(1)
        is_last = _to_device(layout.is_last_prompt, self.device).unsqueeze(1)
        modes = self.term_mode[slot]  # [n, terms]
        gate = (
            (modes == MODE_ALL)
            | ((modes == MODE_PROMPT) & is_prompt)
            | ((modes == MODE_GENERATED) & ~is_prompt)
            | ((modes == MODE_LAST_PROMPT) & is_last)
        )
        if self._slot_uses_tokens[layout.slot].any():
            triggers = self.term_tokens[slot]  # [n, terms, max_trigger_tokens]
            ids = input_ids[:n].to(torch.int64).view(n, 1, 1)
            gate |= (modes == MODE_TOKENS) & (triggers == ids).any(dim=-1)
        if self._slot_uses_schedule[layout.slot].any():
            t = _to_device(layout.generated, self.device).to(torch.float32).view(n, 1, 1)
            knot, width = self.schedule_knot[slot], self.schedule_width[slot]  # [n, terms, segments]
            ramp = torch.minimum(torch.clamp(t - knot, min=0.0), width)
            strength = self.schedule_start[slot] + (self.schedule_slope[slot] * ramp).sum(dim=-1)
            self.token_gate[:n, :-1].copy_(gate * strength)
        else:
            self.token_gate[:n, :-1].copy_(gate)
        self.step_gating = self.conditions.prepare_step(layout.slot)
        if self.step_gating:
            rows = np.fromiter((self.conditions.row_of(r) for r in req_ids), dtype=np.int64, count=len(req_ids))
            kind = layout.is_prompt.astype(np.int64) * KIND_PROMPT
            kind[layout.is_last_prompt] = KIND_LAST_PROMPT
            meta = np.stack([rows[layout.request_index], layout.position, kind], axis=1)
            self.conditions.token_meta[:n].copy_(_to_device(meta, self.device))
        self.token_slot[:n].copy_(slot)
        if self._dirty_tokens > n:
            self.token_slot[n : self._dirty_tokens].zero_()
        self._dirty_tokens = n

    def stats(self) -> dict[str, Any]:
        return {
            "local_layers": list(self.local_layers),
            "steerable_layers": list(self.steerable_layers),
            "sites": list(self.config.sites),
            "vectors": len(self.vectors),
            "configs_in_use": sum(1 for refs in self._slot_refs.values() if refs > 0),
            "active_requests": self.active_requests,
            "steps_steered": self.steps_steered,
            "errors": self.errors,
            "capture_capacity": self.capture.capacity if self.capture is not None else 0,
            "capture_overflows": self.capture.overflows if self.capture is not None else 0,
        }


def _to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    tensor = torch.from_numpy(array)
    if device.type == "cpu":
        return tensor
    # A fresh pinned staging tensor per step: a reused one could be overwritten before its copy runs.
    return tensor.pin_memory().to(device, non_blocking=True)
