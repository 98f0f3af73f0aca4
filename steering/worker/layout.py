"""Per-token layout of one engine step, from per-request arrays in batch order (no torch, no vLLM)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class TokenLayout:
    """Per scheduled token: its request's slot, and where its input token sits relative to the prompt."""

    slot: IntArray
    is_prompt: BoolArray  # the input token comes from the prompt
    is_last_prompt: BoolArray  # the input token is the prompt's last one
    request_index: IntArray  # the token's request, as an index into the step's batch order
    position: IntArray  # the token's position in its sequence
    generated: IntArray  # t: tokens the request had generated when this token's output is computed (schedules)

    @property
    def num_tokens(self) -> int:
        return int(self.slot.shape[0])


def token_layout(
    request_slots: npt.ArrayLike,
    num_scheduled: npt.ArrayLike,
    num_computed: npt.ArrayLike,
    prompt_lens: npt.ArrayLike,
) -> TokenLayout:
    """Expand per-request arrays (batch order) to per-token arrays.

    Request i contributes `num_scheduled[i]` consecutive tokens at positions
    `num_computed[i] .. num_computed[i] + num_scheduled[i] - 1`; a position p holds a prompt token iff
    p < prompt_len (a preempted request that recomputes its output tokens gets them right too).
    """
    slots = np.asarray(request_slots, dtype=np.int64)
    counts = np.asarray(num_scheduled, dtype=np.int64)
    computed = np.asarray(num_computed, dtype=np.int64)
    plens = np.asarray(prompt_lens, dtype=np.int64)
    total = int(counts.sum())
    starts = np.cumsum(counts) - counts
    offset = np.arange(total, dtype=np.int64) - np.repeat(starts, counts)
    positions = np.repeat(computed, counts) + offset
    plen = np.repeat(plens, counts)
    return TokenLayout(
        slot=np.repeat(slots, counts),
        is_prompt=positions < plen,
        is_last_prompt=positions == plen - 1,
        request_index=np.repeat(np.arange(len(counts), dtype=np.int64), counts),
        position=positions,
        generated=np.maximum(positions - plen + 1, 0),
    )
