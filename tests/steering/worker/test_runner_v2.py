"""Model Runner V2 hooks, driven with objects shaped like vLLM 0.32's V2 runner (V2 needs Triton: not run here).

Also checks that the V2 hook points and the fields the hooks read exist in the installed vLLM, so an upgrade
that moves them fails here rather than silently.
"""

from __future__ import annotations

import dataclasses
import inspect
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from steering.worker.runner import STATE_ATTR, _v2_add_requests, _v2_prepare_inputs, _v2_remove_request
from tests.steering.worker.test_tables import load, make_state, payload, vector


class FakeV2Runner:
    def __init__(self) -> None:
        self.req_states = SimpleNamespace(
            prompt_len=SimpleNamespace(np=np.zeros(8, dtype=np.int32)), req_id_to_index={}
        )
        self.free = list(range(8))
        self.batches: list[SimpleNamespace] = []
        setattr(self, STATE_ATTR, make_state())

    # originals, as V2 does them
    def add_requests(self, scheduler_output: SimpleNamespace) -> None:
        for new in scheduler_output.scheduled_new_reqs:
            index = self.free.pop(0)
            self.req_states.req_id_to_index[new.req_id] = index
            self.req_states.prompt_len.np[index] = new.prompt_len

    def _remove_request(self, req_id: str) -> bool:
        index = self.req_states.req_id_to_index.pop(req_id, None)
        if index is None:
            return False
        self.free.insert(0, index)  # freed indices are reused first
        return True

    def prepare_inputs(self, *_: object) -> SimpleNamespace:
        return self.batches.pop(0)


add = _v2_add_requests(FakeV2Runner.add_requests)
remove = _v2_remove_request(FakeV2Runner._remove_request)
prepare = _v2_prepare_inputs(FakeV2Runner.prepare_inputs)


def new_req(req_id: str, prompt_len: int, extra: dict | None) -> SimpleNamespace:  # type: ignore[type-arg]
    return SimpleNamespace(req_id=req_id, prompt_len=prompt_len, sampling_params=SimpleNamespace(extra_args=extra))


def batch(
    runner: FakeV2Runner, req_ids: list[str], scheduled: list[int], computed: list[int], ids: list[int]
) -> SimpleNamespace:
    index = runner.req_states.req_id_to_index
    return SimpleNamespace(
        req_ids=req_ids,
        idx_mapping_np=np.array([index[r] for r in req_ids], dtype=np.int32),
        num_scheduled_tokens=np.array(scheduled, dtype=np.int32),
        num_computed_tokens_np=np.array(computed, dtype=np.int32),
        input_ids=torch.tensor(ids + [0] * 4),  # padded like num_tokens_after_padding
    )


def test_v2_slots_follow_resorted_batches_and_reused_request_indices() -> None:
    runner, v = FakeV2Runner(), vector("v", 4)
    state = getattr(runner, STATE_ATTR)
    load(state, v)
    add(
        runner,
        SimpleNamespace(
            scheduled_new_reqs=[
                new_req("a", 3, payload([{"vector": "v", "strength": 1.0}], v)),
                new_req("b", 2, None),
                new_req("c", 2, payload([{"vector": "v", "strength": 3.0, "positions": "generated"}], v, slot=2)),
            ]
        ),
    )
    sa, sc = (int(s) for s in state.slots_for(["a", "c"]))
    assert sa > 0 and sc > 0 and sa != sc
    # step 1: prefills in arrival order
    runner.batches.append(batch(runner, ["a", "b", "c"], [3, 2, 2], [0, 0, 0], [1, 2, 3, 4, 5, 6, 7]))
    prepare(runner)
    assert state.token_slot[:7].tolist() == [sa] * 3 + [0, 0] + [sc] * 2
    assert state.token_gate[5:7, 0].tolist() == [0.0, 0.0]  # c's prompt tokens: 'generated' gate closed
    # step 2: V2 re-sorts the batch (decodes first); c decodes its first generated input token
    runner.batches.append(batch(runner, ["c", "b", "a"], [1, 1, 1], [2, 2, 3], [9, 9, 9]))
    prepare(runner)
    assert state.token_slot[:3].tolist() == [sc, 0, sa]
    assert state.token_gate[0, 0].item() == 1.0
    assert not state.token_slot[3:7].any(), "tokens past this step must fall back to slot 0"
    # a finishes; its request index is reused by a new unsteered request d: d must not inherit a's steering
    remove(runner, "a")
    add(runner, SimpleNamespace(scheduled_new_reqs=[new_req("d", 4, None)]))
    assert runner.req_states.req_id_to_index["d"] == 0
    runner.batches.append(batch(runner, ["c", "b", "d"], [1, 1, 4], [3, 3, 0], [1, 1, 1, 1, 1, 1]))
    prepare(runner)
    assert state.token_slot[:6].tolist() == [sc, 0, 0, 0, 0, 0]
    assert state.active_requests == 1 and state.stats()["configs_in_use"] == 1  # only c holds a config now


def test_installed_vllm_has_the_v2_hook_points() -> None:
    model_runner = pytest.importorskip("vllm.v1.worker.gpu.model_runner")
    input_batch = pytest.importorskip("vllm.v1.worker.gpu.input_batch")
    states = pytest.importorskip("vllm.v1.worker.gpu.states")
    runner_cls = model_runner.GPUModelRunner
    assert list(inspect.signature(runner_cls.add_requests).parameters) == ["self", "scheduler_output"]
    assert list(inspect.signature(runner_cls._remove_request).parameters) == ["self", "req_id"]
    assert "prepare_inputs" in runner_cls.__dict__ and "load_model" in runner_cls.__dict__
    fields = {f.name for f in dataclasses.fields(input_batch.InputBatch)}
    assert {"req_ids", "idx_mapping_np", "num_scheduled_tokens", "num_computed_tokens_np", "input_ids"} <= fields
    assert "self.prompt_len" in inspect.getsource(states)


def test_installed_vllm_has_the_v1_hook_points() -> None:
    v1 = pytest.importorskip("vllm.v1.worker.gpu_model_runner")
    runner_cls = v1.GPUModelRunner
    assert list(inspect.signature(runner_cls._prepare_inputs).parameters)[:3] == [
        "self",
        "scheduler_output",
        "num_scheduled_tokens",
    ]
    assert list(inspect.signature(runner_cls._on_request_state_removed).parameters) == ["self", "req_id", "req_state"]


def test_patching_is_idempotent() -> None:
    pytest.importorskip("vllm")
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    from steering.worker import register

    register()
    first = GPUModelRunner._prepare_inputs
    register()
    assert GPUModelRunner._prepare_inputs is first and getattr(first, "_steerserve_patched", False)
