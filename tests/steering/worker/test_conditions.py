"""Condition channels: the in-forward gate of token- and prompt-scoped conditions, on the worker's own buffers."""

from __future__ import annotations

import numpy as np
import torch

from steering.vectors import SteeringVector
from steering.worker.conditions import condition_gate
from steering.worker.layout import token_layout
from steering.worker.tables import SteeringState
from tests.steering.worker.test_tables import load, make_state, payload, vector


def _gate_at(state: SteeringState, layer: int, stream: torch.Tensor) -> None:
    """What the layer's forward does after block `layer`: multiply the gates of terms conditioned there."""
    c, t = state.conditions, state.conditions.tables[layer]
    condition_gate(
        state.token_gate, c.prompt_state, c.prompt_upto, stream, None, state.token_slot, c.token_meta,
        t.directions, t.threshold, t.column, t.scope, c.count, c.layer_index[layer],
    )  # fmt: skip


def _projection(cond: SteeringVector, layer: int, stream: torch.Tensor) -> np.ndarray:
    unit = cond.layers[layer] / np.linalg.norm(cond.layers[layer])
    return np.asarray(stream.numpy() @ unit)


def _step(state: SteeringState, req_ids: list[str], counts: list[int], computed: list[int], plens: list[int]) -> int:
    layout = token_layout(state.slots_for(req_ids), counts, computed, plens)
    state.prepare_step(layout, torch.zeros(64, dtype=torch.int64), req_ids)
    return layout.num_tokens


def test_token_scope_gates_each_token_by_its_own_projection_and_leaves_neighbours() -> None:
    state, v, cond = make_state(), vector("v", 1), vector("c", 2)
    load(state, v, cond)
    term = {"vector": "v", "layers": [2], "condition": {"vector": "c", "layer": 1, "threshold": 0.1}}
    state.attach_request("a", payload([term, {"vector": "v", "layers": [2]}], v, cond))
    n = _step(state, ["a", "plain"], [6, 3], [0, 0], [6, 3])
    stream = torch.randn(n, 8, generator=torch.Generator().manual_seed(0))
    before = state.token_gate[:n].clone()
    _gate_at(state, 1, stream)
    fired = _projection(cond, 1, stream[:6]) > 0.1
    assert 0 < fired.sum() < 6, "the test needs both outcomes"
    assert state.token_gate[:6, 0].tolist() == fired.astype(np.float32).tolist()
    assert torch.equal(state.token_gate[:n, 1:-1], before[:, 1:-1]), "an unconditioned term's gate changed"
    assert torch.equal(state.token_gate[6:n, :-1], before[6:, :-1]), "an unsteered neighbour's gates changed"
    _gate_at(state, 0, stream)  # a layer without this request's condition leaves the gates alone
    assert state.token_gate[:6, 0].tolist() == fired.astype(np.float32).tolist()


def test_prompt_scope_decides_on_the_mean_over_a_chunked_prompt_and_holds() -> None:
    state, v, cond = make_state(), vector("v", 3), vector("c", 4)
    load(state, v, cond)
    term = {"vector": "v", "layers": [1], "condition": {"vector": "c", "layer": 1, "threshold": 0.0, "scope": "prompt"}}
    state.attach_request("a", payload([term], v, cond))
    plen = 7
    streams = torch.randn(plen + 2, 8, generator=torch.Generator().manual_seed(1))
    streams[:plen] += torch.from_numpy(cond.layers[1] / np.linalg.norm(cond.layers[1])) * 3.0  # the mean fires
    gates = []
    for start, count in ((0, 4), (4, 3), (plen, 1), (plen + 1, 1)):  # two prefill chunks, then two decodes
        _step(state, ["a"], [count], [start], [plen])
        _gate_at(state, 1, streams[start : start + count])
        gates += state.token_gate[:count, 0].tolist()
    decision = float(_projection(cond, 1, streams[:plen]).mean() > 0.0)
    assert decision == 1.0
    assert gates == [0.0] * (plen - 1) + [decision] * 3, gates
    # recomputation after preemption: the prompt's tokens are not counted twice and the decision holds
    state.forget_request("a")
    state.attach_request("a", payload([term], v, cond))
    _step(state, ["a"], [plen], [0], [plen])
    _gate_at(state, 1, -10 * streams[:plen])  # would decide "no" if it were counted again
    assert state.token_gate[plen - 1, 0].item() == 1.0


def test_prompt_scope_below_threshold_never_steers() -> None:
    state, v, cond = make_state(), vector("v", 5), vector("c", 6)
    load(state, v, cond)
    term = {
        "vector": "v",
        "layers": [2],
        "condition": {"vector": "c", "layer": 0, "threshold": 50.0, "scope": "prompt"},
    }
    state.attach_request("a", payload([term], v, cond))
    n = _step(state, ["a"], [5], [0], [5])
    _gate_at(state, 0, torch.randn(n, 8, generator=torch.Generator().manual_seed(2)))
    assert state.token_gate[:n, 0].tolist() == [0.0] * 5
