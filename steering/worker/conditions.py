"""Conditions inside the forward: a term's gate column multiplied by whether a probe direction fired.

At every steerable layer L, K condition *channels* per slot (like the steering channels of a site): a unit
direction r̂, a threshold θ, the gate column of the term it gates and a scope. After block L (before L's own
mlp/residual steering), for each token and channel, with x the stream after block L:

    token scope:   factor = [r̂·x > θ]
    prompt scope:  the request's running sum of r̂·x over its prompt tokens (each counted once, also across
                   chunked-prefill steps and recomputation), decided at its last prompt token: mean > θ, then held;
                   factor = decision for the last prompt token and every later token, 0 for earlier prompt tokens

and the term's column of the step's gate buffer is multiplied by the factor, so its layers >= L (and its
later-site steering of L) see the condition. Unused channels point at a scratch gate column. Prompt-scope state
lives in per-request rows (row 0: scratch), kept for a while after a request leaves the runner so a preempted
request that comes back keeps its decision.

The op is one opaque custom op (`steerserve::condition_gate`) mutating the gate and the prompt state: traced once,
it reads fresh buffers on every call. On CPU it reads the step's channel count for the layer on the host and
does nothing when no request of the step has a condition there; on CUDA it always runs every channel (no host
value can change a recorded graph), with per-channel torch ops.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from steering.worker.ops import LIBRARY

SCOPE_TOKEN = 0
SCOPE_PROMPT = 1
SCOPE_CODES = {"token": SCOPE_TOKEN, "prompt": SCOPE_PROMPT}
KIND_GENERATED, KIND_PROMPT, KIND_LAST_PROMPT = 0, 1, 2
# prompt state per (row, gate column): running sum, rows counted, decided (0/1), decision (0/1)
SUM, COUNT, DECIDED, PASSED = 0, 1, 2, 3


@dataclass
class ConditionTables:
    """One layer's condition channels per slot."""

    directions: torch.Tensor  # [slots + 1, K, hidden], model dtype
    threshold: torch.Tensor  # [slots + 1, K], float32
    column: torch.Tensor  # [slots + 1, K], int64: gate column (unused: the scratch column)
    scope: torch.Tensor  # [slots + 1, K], int8


class ConditionState:
    """The condition tables of a worker's steerable layers, the per-token metadata and the prompt-scope rows."""

    def __init__(
        self,
        layers: tuple[int, ...],
        slots: int,
        channels: int,
        columns: int,
        hidden_size: int,
        max_tokens: int,
        request_rows: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.scratch = columns - 1
        self.layer_index = {layer: index for index, layer in enumerate(layers)}
        with torch.inference_mode(False):
            self.tables = {
                layer: ConditionTables(
                    directions=torch.zeros(slots, channels, hidden_size, dtype=dtype, device=device),
                    threshold=torch.zeros(slots, channels, dtype=torch.float32, device=device),
                    column=torch.full((slots, channels), self.scratch, dtype=torch.int64, device=device),
                    scope=torch.zeros(slots, channels, dtype=torch.int8, device=device),
                )
                for layer in layers
            }
            self.token_meta = torch.zeros(max_tokens, 3, dtype=torch.int64, device=device)  # row, position, kind
            self.prompt_state = torch.zeros(request_rows, columns, 4, dtype=torch.float32, device=device)
            self.prompt_upto = torch.zeros(request_rows, dtype=torch.float32, device=device)  # next uncounted position
        self.count = torch.zeros(max(1, len(layers)), dtype=torch.int64)  # host: channels in use this step, per layer
        self._slot_channels: dict[int, dict[int, int]] = {}  # slot -> layer -> channels
        self._slot_prompt_scope = np.zeros(slots, dtype=bool)
        self._free_rows = list(range(request_rows - 1, 0, -1))
        self._request_row: dict[str, int] = {}
        self._parked: OrderedDict[str, int] = OrderedDict()  # left the runner, may come back (preemption)

    # ---- slots ----------------------------------------------------------------------------------------------
    def clear_slot(self, slot: int) -> None:
        for tables in self.tables.values():
            tables.directions[slot].zero_()
            tables.threshold[slot].zero_()
            tables.column[slot].fill_(self.scratch)
            tables.scope[slot].zero_()
        self._slot_channels.pop(slot, None)
        self._slot_prompt_scope[slot] = False

    def fill(self, slot: int, column: int, layer: int, unit: torch.Tensor, threshold: float, scope: str) -> bool:
        """Place one term's condition; False when the layer's channels are full."""
        tables = self.tables.get(layer)
        if tables is None:
            return True  # a layer of another pipeline stage (conditions are refused under PP)
        used = self._slot_channels.setdefault(slot, {})
        channel = used.get(layer, 0)
        if channel >= tables.column.shape[1]:
            return False
        used[layer] = channel + 1
        tables.directions[slot, channel] = unit.to(tables.directions.dtype)
        tables.threshold[slot, channel] = threshold
        tables.column[slot, channel] = column
        tables.scope[slot, channel] = SCOPE_CODES[scope]
        if scope == "prompt":
            self._slot_prompt_scope[slot] = True
        return True

    def slot_decides_on_prompt(self, slot: int) -> bool:
        return bool(self._slot_prompt_scope[slot])

    # ---- prompt-scope rows ----------------------------------------------------------------------------------
    def claim_row(self, req_id: str) -> int:
        """The request's prompt-state row (its earlier one if it was preempted and came back); 0 if none is free."""
        row = self._parked.pop(req_id, None) or self._request_row.get(req_id)
        if row is None:
            if not self._free_rows and self._parked:
                _, evicted = self._parked.popitem(last=False)
                self._free_rows.append(evicted)
            if not self._free_rows:
                return 0
            row = self._free_rows.pop()
            self.prompt_state[row].zero_()
            self.prompt_upto[row] = 0.0
        self._request_row[req_id] = row
        return row

    def park_row(self, req_id: str) -> None:
        row = self._request_row.pop(req_id, None)
        if row is not None:
            self._parked[req_id] = row

    def row_of(self, req_id: str | None) -> int:
        return self._request_row.get(req_id, 0) if req_id is not None else 0

    # ---- per step -------------------------------------------------------------------------------------------
    def prepare_step(self, slots: np.ndarray) -> bool:
        """Set the channel counts of the step's slots per layer; True when any is in use (then the caller writes
        the token metadata)."""
        self.count.zero_()
        for slot in np.unique(slots).tolist():
            for layer, channels in self._slot_channels.get(slot, {}).items():
                index = self.layer_index[layer]
                self.count[index] = max(channels, int(self.count[index]))
        return bool(self.count.any())


def _condition_gate(
    token_gate: torch.Tensor,
    prompt_state: torch.Tensor,
    prompt_upto: torch.Tensor,
    hidden: torch.Tensor,
    residual: torch.Tensor | None,
    token_slot: torch.Tensor,
    token_meta: torch.Tensor,
    directions: torch.Tensor,
    threshold: torch.Tensor,
    column: torch.Tensor,
    scope: torch.Tensor,
    count: torch.Tensor,
    layer: int,
) -> None:
    channels = directions.shape[1] if hidden.is_cuda else int(count[layer])
    if channels == 0:
        return
    x = (hidden if residual is None else hidden + residual).float()
    n = x.shape[0]
    slot = token_slot[:n]
    row, position, kind = token_meta[:n, 0], token_meta[:n, 1].float(), token_meta[:n, 2]
    is_prompt, is_last = kind != KIND_GENERATED, kind == KIND_LAST_PROMPT
    width = prompt_state.shape[1]
    cols = column[slot][:, :channels]  # [n, C]
    theta = threshold[slot][:, :channels]
    by_prompt = scope[slot][:, :channels] == SCOPE_PROMPT
    proj = torch.stack([(x * directions[:, c][slot].float()).sum(-1) for c in range(channels)], dim=1)
    # prompt scope: count each prompt token once into its request's row, then decide at the last prompt token
    state = prompt_state.view(-1, 4)
    flat = (row.unsqueeze(1) * width + cols).reshape(-1)
    fresh = (is_prompt & (position >= prompt_upto[row])).unsqueeze(1) & by_prompt
    state[:, SUM].index_add_(0, flat, (proj * fresh).reshape(-1))
    state[:, COUNT].index_add_(0, flat, fresh.float().reshape(-1))
    counted = torch.where(is_prompt & by_prompt.any(dim=1), position + 1.0, torch.zeros_like(position))
    prompt_upto.scatter_reduce_(0, row, counted, reduce="amax")
    now = state[flat].view(n, channels, 4)
    decide = is_last.unsqueeze(1) & by_prompt & (now[..., DECIDED] == 0)
    verdict = (now[..., SUM] / now[..., COUNT].clamp(min=1.0) > theta).float()
    state[:, PASSED].index_add_(0, flat, (decide * (verdict - now[..., PASSED])).reshape(-1))
    state[:, DECIDED].index_add_(0, flat, decide.float().reshape(-1))
    held = state[flat, PASSED].view(n, channels) * (~is_prompt | is_last).unsqueeze(1)
    factor = torch.where(by_prompt, held, (proj > theta).float())
    gate = token_gate[:n]
    for c in range(channels):
        index = cols[:, c : c + 1]
        gate.scatter_(1, index, gate.gather(1, index) * factor[:, c : c + 1])


def _condition_gate_fake(*_args: object) -> None:
    return None


LIBRARY.define(  # type: ignore[no-untyped-call]
    "condition_gate(Tensor(a!) token_gate, Tensor(b!) prompt_state, Tensor(c!) prompt_upto, Tensor hidden, "
    "Tensor? residual, Tensor token_slot, Tensor token_meta, Tensor directions, Tensor threshold, Tensor column, "
    "Tensor scope, Tensor count, int layer) -> ()"
)
LIBRARY.impl("condition_gate", _condition_gate, "CPU")  # type: ignore[no-untyped-call]
LIBRARY.impl("condition_gate", _condition_gate, "CUDA")  # type: ignore[no-untyped-call]
torch.library.register_fake("steerserve::condition_gate", _condition_gate_fake, lib=LIBRARY)
condition_gate = torch.ops.steerserve.condition_gate
