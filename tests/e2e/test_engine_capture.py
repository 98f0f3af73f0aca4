"""Activation capture on the real engine equals Hugging Face hidden states, alone, concurrent and compiled."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
import torch

from steering.errors import InvalidSteeringError

pytestmark = pytest.mark.engine

PROMPTS = [[40 + (i * 7 + k) % 200 for k in range(length)] for i, length in enumerate((37, 18, 64, 5, 120, 33))]


def hf_states(model: Any, ids: list[int]) -> list[np.ndarray]:
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    return [h[0].float().numpy() for h in out.hidden_states]


async def test_capture_matches_hf_hidden_states(llama_engine: Any, hf_llama: Any) -> None:
    layers = list(range(llama_engine.shape.num_layers))
    results = await asyncio.gather(*(llama_engine.capture(p, layers) for p in PROMPTS))
    for ids, got in zip(PROMPTS, results, strict=True):
        expected = hf_states(hf_llama, ids)
        assert got.positions == list(range(len(ids)))
        for layer in layers:
            # layer L = stream after block L = HF hidden_states[L + 1]; HF's last entry is after the final norm
            if layer == layers[-1]:
                continue
            np.testing.assert_allclose(got.layers[layer], expected[layer + 1], atol=2e-4, rtol=1e-3)
    # the last block's stream, before the final norm: compare its normed value with HF's last entry
    ids, got = PROMPTS[0], results[0]
    norm = hf_llama.model.norm
    normed = norm(torch.from_numpy(got.layers[layers[-1]])).detach().numpy()
    np.testing.assert_allclose(normed, hf_states(hf_llama, ids)[-1], atol=2e-4, rtol=1e-3)


async def test_capture_positions_and_mean_pool(llama_engine: Any, hf_llama: Any) -> None:
    ids = PROMPTS[2]
    expected = hf_states(hf_llama, ids)
    picked = await llama_engine.capture(ids, [1], positions=[3, 0, 40, 63])
    assert picked.positions == [0, 3, 40, 63]
    np.testing.assert_allclose(picked.layers[1], expected[2][[0, 3, 40, 63]], atol=2e-4, rtol=1e-3)
    pooled = await llama_engine.capture(ids, [0, 2], pool="mean")
    assert pooled.count == len(ids) and pooled.layers[2].shape == (llama_engine.shape.hidden_size,)
    np.testing.assert_allclose(pooled.layers[2], expected[3].mean(axis=0), atol=2e-4, rtol=1e-3)


async def test_capture_limits_are_checked_before_the_engine(llama_engine: Any) -> None:
    with pytest.raises(InvalidSteeringError):
        await llama_engine.capture(PROMPTS[0], [99])
    with pytest.raises(InvalidSteeringError):
        await llama_engine.capture(PROMPTS[0], [0], positions=[500])
    with pytest.raises(InvalidSteeringError):
        await llama_engine.capture([1] * 2000, [0])
    assert await llama_engine.check_health()


async def test_capture_while_other_requests_decode(llama_engine: Any) -> None:
    """Captures ride in mixed batches; their rows stay their own."""
    from tests.e2e.engine_helpers import run

    alone = await llama_engine.capture(PROMPTS[4], [0, 3])
    mixed = await asyncio.gather(
        *(run(llama_engine, p, max_tokens=24) for p in PROMPTS[:3]), llama_engine.capture(PROMPTS[4], [0, 3])
    )
    together = mixed[-1]
    for layer in (0, 3):
        np.testing.assert_allclose(together.layers[layer], alone.layers[layer], atol=1e-5)


async def test_capture_mlp_site_matches_hf_mlp_output(llama_engine: Any, hf_llama: Any) -> None:
    """site="mlp" reads the block's MLP output (where the `mlp` steering site acts), not the stream."""
    ids = PROMPTS[0]
    outputs: dict[int, np.ndarray] = {}
    hooks = [
        layer.mlp.register_forward_hook(lambda _m, _i, out, k=k: outputs.__setitem__(k, out[0].detach().numpy()))
        for k, layer in enumerate(hf_llama.model.layers)
    ]
    try:
        hf_states(hf_llama, ids)
    finally:
        for hook in hooks:
            hook.remove()
    got = await llama_engine.capture(ids, [0, 2], positions=[1, 9, 30], site="mlp")
    for layer in (0, 2):
        np.testing.assert_allclose(got.layers[layer], outputs[layer][[1, 9, 30]], atol=2e-4, rtol=1e-3)
    stream = await llama_engine.capture(ids, [2], positions=[1, 9, 30])
    assert not np.allclose(stream.layers[2], got.layers[2])
