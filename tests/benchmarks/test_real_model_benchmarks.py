"""The SmolLM2 benchmarks' own logic that runs without their engines and libraries (llama.cpp is not in CI)."""

from __future__ import annotations

import numpy as np

from benchmarks.llamacpp_interop import gguf_rows
from benchmarks.smollm2_reflection import splits
from steering.vector_formats import encode


def test_gguf_rows_follow_llama_cpps_loader_direction_n_in_row_n_minus_1() -> None:
    v = np.arange(8, dtype=np.float32) + 1
    data = encode({5: v, 2: -v}, "gguf", num_layers=7, metadata={"id": "x"}, model_hint="llama")
    rows = gguf_rows(data, num_layers=7, hidden=8, scale=2.0)
    assert rows.shape == (7, 8)
    assert np.array_equal(rows[4], 2 * v) and np.array_equal(rows[1], -2 * v)
    assert not rows[[0, 2, 3, 5, 6]].any()


def test_reflection_problems_are_deterministic_disjoint_and_right() -> None:
    extract, evaluate = splits(300, 500, seed=0)
    assert (extract, evaluate) == splits(300, 500, seed=0)
    assert len(extract) == 300 and len(evaluate) == 500
    assert not {p.text for p in extract} & {p.text for p in evaluate}
    for p in extract + evaluate:
        numbers = [int(w.strip(",.")) for w in p.text.split() if w.strip(",.").isdigit()]
        assert p.answer >= 0 and numbers  # every problem states its numbers; answers are counts
