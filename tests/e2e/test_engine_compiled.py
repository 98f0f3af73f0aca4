"""torch.compile (vLLM's default) steers exactly like eager mode: no branch was frozen at trace time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import make_engine, stop_engine
from tests.e2e.test_engine_batch import mixed_terms, run_mixed

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
async def compiled_engine(tiny_llama: Path) -> Any:
    engine = make_engine(tiny_llama, enforce_eager=False)
    yield engine
    stop_engine(engine)


async def test_compiled_equals_eager(compiled_engine: Any, llama_engine: Any) -> None:
    compiled_mixed, compiled_plain = await run_mixed(compiled_engine)
    eager_mixed, eager_plain = await run_mixed(llama_engine)
    assert compiled_mixed == eager_mixed
    assert compiled_plain == eager_plain
    plan = mixed_terms(llama_engine.shape.num_layers)
    assert sum(compiled_mixed[i] != compiled_plain[i] for i, t in enumerate(plan) if t) >= 4


async def test_compiled_capture_equals_eager(compiled_engine: Any, llama_engine: Any) -> None:
    """The gather runs inside the traced graph: a frozen branch would return zeros or stale rows."""
    prompt = [40 + (k * 11) % 150 for k in range(45)]
    compiled = await compiled_engine.capture(prompt, [0, 3], positions=[2, 30, 44])
    eager = await llama_engine.capture(prompt, [0, 3], positions=[2, 30, 44])
    for layer in (0, 3):
        assert np.abs(compiled.layers[layer]).sum() > 0
        np.testing.assert_allclose(compiled.layers[layer], eager.layers[layer], atol=1e-4, rtol=1e-3)
