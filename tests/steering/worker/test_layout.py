"""Per-token layout from per-request arrays (used by both runners)."""

from __future__ import annotations

import numpy as np

from steering.worker.layout import token_layout


def test_prefill_chunks_decodes_and_recompute() -> None:
    # req0: prompt 5, first chunk of 3 tokens; req1: decode at position 7 (prompt 4);
    # req2: resumed after preemption, recomputing 6 tokens of which the last 2 were generated (prompt 4).
    layout = token_layout([2, 0, 1], [3, 1, 6], [0, 7, 0], [5, 4, 4])
    assert layout.slot.tolist() == [2, 2, 2, 0, 1, 1, 1, 1, 1, 1]
    assert layout.is_prompt.tolist() == [True, True, True, False, True, True, True, True, False, False]
    assert layout.is_last_prompt.tolist() == [False, False, False, False, False, False, False, True, False, False]


def test_last_prompt_token_in_a_later_chunk() -> None:
    layout = token_layout([1], [2], [3], [5])  # positions 3, 4 of a 5-token prompt
    assert layout.is_prompt.tolist() == [True, True]
    assert layout.is_last_prompt.tolist() == [False, True]
    assert layout.num_tokens == 2 and layout.slot.dtype == np.int64
