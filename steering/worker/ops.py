"""The steering op on fixed tables.

Every term is one *channel* of one (layer, site): a unit direction r̂ and two coefficients (c, b), applied as

    x <- x + g * (c + b * (r̂ . x)) * r̂

where g in {0, 1} is the term's position gate for the token. The three ops are special cases:

    add      x + s*v                  c = s*|v|, b = 0
    project  x + s*(r̂.x)*r̂            c = 0,     b = s
    clamp    x + (s - r̂.x)*r̂          c = s,     b = -1

Channels of one (layer, site) apply in term order (project/clamp do not commute). Tables are indexed by a
per-token slot (row 0 = zeros = no-op), so the op has no Python branch on per-batch state: it traces once
under torch.compile and reads fresh buffer contents on every call (and every CUDA-graph replay).
"""

from __future__ import annotations

import torch

# Codes for a term's position mode, stored per (slot, term) in the gate tables.
MODE_UNUSED = 0
MODE_ALL = 1
MODE_PROMPT = 2
MODE_GENERATED = 3
MODE_LAST_PROMPT = 4
MODE_TOKENS = 5
MODE_CODES: dict[str, int] = {
    "all": MODE_ALL,
    "prompt": MODE_PROMPT,
    "generated": MODE_GENERATED,
    "last_prompt": MODE_LAST_PROMPT,
    "tokens": MODE_TOKENS,
}


# Coefficients (c, b) per op and strength s, given the raw vector's norm.
def op_coefficients(op: str, strength: float, norm: float) -> tuple[float, float]:
    if op == "add":
        return strength * norm, 0.0
    if op == "project":
        return 0.0, strength
    if op == "clamp":
        return strength, -1.0
    raise ValueError(f"unknown steering op {op!r}")


def steered_sum(
    target: torch.Tensor,
    extra: torch.Tensor | None,
    token_slot: torch.Tensor,
    token_gate: torch.Tensor,
    directions: torch.Tensor,
    coefficients: torch.Tensor,
    term_index: torch.Tensor,
    num_channels: int | None = None,
) -> torch.Tensor:
    """`target` plus the change its site's channels make, read from the site value `target + extra` (`extra`:
    the residual, for site `residual`; else None). The fused CUDA kernel (`steering.worker.ops_triton`) computes
    the same."""
    x = target if extra is None else target + extra
    return target + steering_delta(x, token_slot, token_gate, directions, coefficients, term_index, num_channels)


def steering_delta(
    x: torch.Tensor,
    token_slot: torch.Tensor,
    token_gate: torch.Tensor,
    directions: torch.Tensor,
    coefficients: torch.Tensor,
    term_index: torch.Tensor,
    num_channels: int | None = None,
) -> torch.Tensor:
    """The change the channels of one (layer, site) make to `x` ([tokens, hidden]).

    token_slot [>= tokens] int64, token_gate [>= tokens, terms], directions [slots, K, hidden],
    coefficients [slots, K, 2] (c, b), term_index [slots, K] int64 (which gate column a channel uses).
    The delta is accumulated apart from x so that it keeps its precision in bf16. `num_channels` (eager
    mode only) skips channels no token of the step uses; traced code always runs all K.
    """
    num_tokens = x.shape[0]
    slot = token_slot[:num_tokens]
    gate = torch.gather(token_gate[:num_tokens], 1, term_index[slot])  # [n, K]
    coef = coefficients[slot]  # [n, K, 2]
    delta = torch.zeros_like(x)
    for k in range(directions.shape[1] if num_channels is None else num_channels):  # fixed K when traced
        direction = directions[:, k][slot]  # [n, hidden]
        current = x + delta
        proj = torch.sum(current * direction, dim=-1, dtype=torch.float32)
        weight = gate[:, k].float() * (coef[:, k, 0].float() + coef[:, k, 1].float() * proj)
        delta = delta + weight.to(x.dtype).unsqueeze(-1) * direction
    return delta


# A low-level library op, not `torch.library.custom_op`: its Python wrapper costs ~30 us a call against ~6 us here
# (measured on these CPUs), and the model calls it once per (layer, site) every step.
LIBRARY = torch.library.Library("steerserve", "FRAGMENT")  # type: ignore[no-untyped-call]  # our custom ops
LIBRARY.define(  # type: ignore[no-untyped-call]
    "steer_in_place(Tensor(a!) target, Tensor? extra, Tensor token_slot, Tensor token_gate, Tensor directions, "
    "Tensor coefficients, Tensor term_index, Tensor channel_count, int site) -> ()"
)


def _steer_in_place(
    target: torch.Tensor,
    extra: torch.Tensor | None,
    token_slot: torch.Tensor,
    token_gate: torch.Tensor,
    directions: torch.Tensor,
    coefficients: torch.Tensor,
    term_index: torch.Tensor,
    channel_count: torch.Tensor,
    site: int,
) -> None:
    """`target += steering_delta(...)` over the first `channel_count[site]` channels: nothing at all when no
    token of the step is steered at this (layer, site).

    Opaque to torch.compile, so the host-side count is read on every call (the CPU path: no CUDA graph
    replays a recorded call). `channel_count` lives on the host and is written by the runner each step."""
    channels = int(channel_count[site])
    if channels == 0:
        return
    x = target if extra is None else target + extra
    target.add_(steering_delta(x, token_slot, token_gate, directions, coefficients, term_index, channels))


def _steer_in_place_fake(*_args: object) -> None:
    return None


LIBRARY.impl("steer_in_place", _steer_in_place, "CPU")  # type: ignore[no-untyped-call]
torch.library.register_fake("steerserve::steer_in_place", _steer_in_place_fake, lib=LIBRARY)
steer_in_place = torch.ops.steerserve.steer_in_place
