"""Worker state: filling slots from payloads, per-step gates, and never raising on bad payloads."""

from __future__ import annotations

import numpy as np
import torch

from steering.config import EngineSteeringConfig
from steering.spec import ModelShape, SteeringLimits, SteeringTerm, resolve_spec
from steering.vectors import SteeringVector
from steering.worker.layout import token_layout
from steering.worker.tables import SteeringState

SHAPE = ModelShape(num_layers=3, hidden_size=8, vocab_size=50)


def make_state(max_configs: int = 4, layers: tuple[int, ...] = ()) -> SteeringState:
    limits = SteeringLimits(max_terms=4, max_terms_per_site=2)
    config = EngineSteeringConfig(max_configs=max_configs, limits=limits, layers=layers)
    steerable = config.steerable_layers(SHAPE.num_layers)
    return SteeringState(
        config, [0, 1, 2], steerable, hidden_size=8, max_tokens=64, dtype=torch.float32, device=torch.device("cpu")
    )


def vector(vector_id: str, seed: int) -> SteeringVector:
    rng = np.random.default_rng(seed)
    return SteeringVector(vector_id, {k: rng.standard_normal(8).astype(np.float32) for k in range(3)})


def payload(terms: list[dict], *vectors: SteeringVector, slot: int = 1) -> dict:  # type: ignore[type-arg]
    """What the API process sends: the config, the slot its ledger admitted it to, a ticket."""
    table = {v.id: v for v in vectors}
    spec = resolve_spec(
        [SteeringTerm(**t) for t in terms],
        lambda i, _: table[i],
        SHAPE,
        SteeringLimits(max_terms=4, max_terms_per_site=2),
    )
    return {"steerserve": {**spec.engine_payload(), "slot": slot, "ticket": f"t-{slot}-{spec.config_hash}"}}


def load(state: SteeringState, *vectors: SteeringVector) -> None:
    state.load_vectors([{"sha256": v.sha256, "layers": {k: d.tobytes() for k, d in v.layers.items()}} for v in vectors])


def test_fill_slot_places_terms_on_their_layers_and_sites() -> None:
    state, v = make_state(), vector("v", 1)
    load(state, v)
    state.attach_request(
        "r1",
        payload(
            [
                {"vector": "v", "strength": 2.0, "layers": [1], "op": "project", "site": "mlp"},
                {"vector": "v", "strength": 0.5, "layers": [1, 2]},
            ],
            v,
        ),
    )
    slot = int(state.slots_for(["r1"])[0])
    assert slot > 0
    mlp = state.tables[(1, "mlp")]
    assert torch.allclose(
        mlp.directions[slot, 0], torch.from_numpy(v.layers[1] / np.linalg.norm(v.layers[1])), atol=1e-6
    )
    assert mlp.coefficients[slot, 0].tolist() == [0.0, 2.0]
    res = state.tables[(2, "residual")]
    assert abs(res.coefficients[slot, 0, 0].item() - 0.5 * float(np.linalg.norm(v.layers[2]))) < 1e-5
    assert res.term_index[slot, 0].item() == 1
    assert not state.tables[(0, "residual")].directions[slot].any()


def test_gates_follow_position_modes_and_triggers() -> None:
    state, v = make_state(), vector("v", 2)
    load(state, v)
    state.attach_request(
        "a",
        payload(
            [{"vector": "v", "positions": "generated"}, {"vector": "v", "positions": {"tokens": [7]}, "layers": [0]}], v
        ),
    )
    state.attach_request("b", None)
    slots = state.slots_for(["b", "a"])
    layout = token_layout(slots, [2, 4], [0, 2], [5, 3])  # a: positions 2..5 with prompt 3
    ids = torch.tensor([1, 2, 7, 9, 7, 3])
    state.prepare_step(layout, ids, ["b", "a"])
    assert not state.quiet  # a steered request in the step: the layers run their steering code
    sa = int(slots[1])
    assert state.token_slot[:6].tolist() == [0, 0, sa, sa, sa, sa]
    assert state.token_gate[2:6, 0].tolist() == [0.0, 1.0, 1.0, 1.0]  # generated: positions 3, 4, 5
    assert state.token_gate[2:6, 1].tolist() == [1.0, 0.0, 1.0, 0.0]  # trigger token 7
    state.prepare_step(token_layout(slots[:1], [2], [5], [5]), ids, ["b"])  # only b: buffers go back to slot 0
    assert not state.token_slot[:6].any()
    assert state.quiet  # nothing to steer, gate or capture: eager layers skip their steering code


def test_mismatches_never_raise_and_are_reported_by_ticket() -> None:
    state, v = make_state(max_configs=1), vector("v", 3)
    missing = payload([{"vector": "v"}], v)
    state.attach_request("x", missing)  # the vector was never loaded here
    assert state.errors == 1 and state.slots_for(["x"]).tolist() == [0] and state.active_requests == 0
    ticket = missing["steerserve"]["ticket"]
    assert "not loaded" in state.pop_failures([ticket, "other"])[ticket] and state.pop_failures([ticket]) == {}
    load(state, v)
    state.attach_request("y", payload([{"vector": "v", "strength": 1.0}], v))
    taken = payload([{"vector": "v", "strength": 2.0}], v)  # a ledger bug: slot 1 given to a second config
    state.attach_request("z", taken)
    assert state.errors == 2 and state.slots_for(["y", "z"]).tolist() == [1, 0]
    assert "another config" in state.pop_failures([taken["steerserve"]["ticket"]])[taken["steerserve"]["ticket"]]
    state.attach_request("w", payload([{"vector": "v"}], v, slot=2))  # outside the table
    assert state.errors == 3 and state.slots_for(["w"]).tolist() == [0]
    state.forget_request("y")
    state.attach_request("z", taken)  # slot 1 is free again: refilled with z's config
    assert state.slots_for(["z"]).tolist() == [1] and state.errors == 3


def test_vectors_carried_inline_load_on_arrival_then_the_hash_alone_serves() -> None:
    """A request carrying a vector the worker lacks (as `ResolvedSpec.engine_fields` sends it, JSON with base64
    layers) is steered at once; a later config naming only its hash fills from the loaded copy."""
    state, v = make_state(), vector("v", 4)
    table = {"v": v}
    limits = SteeringLimits(max_terms=4, max_terms_per_site=2)
    first = resolve_spec([SteeringTerm(vector="v", strength=1.5)], lambda i, _: table[i], SHAPE, limits)
    state.attach_request("a", first.engine_fields(1, "t-a", [v]))
    assert state.errors == 0 and state.slots_for(["a"]).tolist() == [1]
    unit = torch.from_numpy(v.layers[2] / np.linalg.norm(v.layers[2]))
    assert torch.allclose(state.tables[(2, "residual")].directions[1, 0], unit, atol=1e-6)
    second = resolve_spec([SteeringTerm(vector="v", strength=-1.0)], lambda i, _: table[i], SHAPE, limits)
    state.attach_request("b", second.engine_fields(2, "t-b"))  # no vectors carried: the hash is enough now
    assert state.errors == 0 and state.slots_for(["b"]).tolist() == [2]


def test_tables_exist_only_for_steerable_layers() -> None:
    """`--steering-layers 1`: no op and no table on layers 0 and 2 (nothing to pay there), layer 1 steers."""
    state, v = make_state(layers=(-2,)), vector("v", 5)
    assert state.steerable_layers == (1,) and {layer for layer, _ in state.tables} == {1}
    load(state, v)
    state.attach_request("r", payload([{"vector": "v", "layers": [1]}], v))
    assert state.errors == 0 and state.slots_for(["r"]).tolist() == [1]


def test_capture_rows_follow_requests_positions_and_chunks() -> None:
    """Rows land in their own request at their own positions, across prefill chunks; mean pools each once."""
    state = make_state()
    capture = state.capture
    assert capture is not None
    state.attach_request(
        "p", {"steerserve_capture": {"id": "P", "layers": [0, 2], "positions": [1, 4], "pool": "none"}}
    )
    state.attach_request(
        "m", {"steerserve_capture": {"id": "M", "layers": [1], "positions": [0, 1, 2], "pool": "mean"}}
    )
    state.attach_request("u", None)
    hidden = torch.arange(64 * 8, dtype=torch.float32).reshape(64, 8)

    def run(req_ids: list[str], counts: list[int], computed: list[int], prompts: list[int]) -> None:
        layout = token_layout(state.slots_for(req_ids), counts, computed, prompts)
        state.prepare_step(layout, torch.zeros(64, dtype=torch.long), req_ids)
        for layer, buffer in capture.buffers.items():  # what the patched layer does: gather the wanted rows
            buffer.copy_(hidden.index_select(0, capture.index) + layer)
        capture.collect()

    run(["u", "p", "m"], [3, 3, 2], [0, 0, 0], [9, 6, 3])  # p: positions 0..2 (tokens 3..5); m: 0..1 (6..7)
    assert capture.pop(["P", "M"]) == {}  # neither is complete yet
    run(["m", "p"], [1, 3], [2, 3], [3, 6])  # m: position 2 (token 0); p: positions 3..5 (tokens 1..3)
    got = capture.pop(["P", "M"])
    p_rows = np.frombuffer(got["P"]["layers"][2], dtype="<f4").reshape(-1, 8)
    assert got["P"]["positions"] == [1, 4] and set(got["P"]["layers"]) == {0, 2}
    assert p_rows[0].tolist() == (hidden[4] + 2).tolist() and p_rows[1].tolist() == (hidden[2] + 2).tolist()
    mean = np.frombuffer(got["M"]["layers"][1], dtype="<f4")
    assert got["M"]["count"] == 3 and np.allclose(mean, ((hidden[6] + hidden[7] + hidden[0]) / 3 + 1).numpy())
    assert not capture.index.any() and not capture.has_jobs  # index back to row 0; jobs published


def test_a_scheduled_terms_gate_is_its_strength_at_the_tokens_generated_count() -> None:
    state, v = make_state(), vector("v", 3)
    load(state, v)
    points = [[2, 0.5], [4, -1.5], [6, -1.0]]
    state.attach_request("s", payload([{"vector": "v", "positions": "all", "schedule": {"points": points}}], v))
    state.attach_request("f", payload([{"vector": "v", "strength": 2.0}], v, slot=2))
    slots = state.slots_for(["s", "f"])
    # s: prompt of 3, positions 0..9 (t = 0,0,0,1,..,7); f: one decode token
    layout = token_layout(slots, [10, 1], [0, 7], [3, 3])
    state.prepare_step(layout, torch.arange(11), ["s", "f"])

    def expected(t: int) -> float:
        return float(np.interp(t, [p[0] for p in points], [p[1] for p in points]))

    assert layout.generated[:10].tolist() == [0, 0, 0, 1, 2, 3, 4, 5, 6, 7]
    got = state.token_gate[:10, 0].tolist()
    assert np.allclose(got, [expected(t) for t in layout.generated[:10]], atol=1e-6), got
    assert state.token_gate[10, 0].item() == 1.0  # an unscheduled term keeps its 0/1 gate
    assert state.tables[(1, "residual")].coefficients[int(slots[0]), 0, 0].item() > 0  # unit strength: c = |v|
