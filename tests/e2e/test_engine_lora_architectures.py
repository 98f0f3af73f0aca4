"""LoRA composes with the layer patch beyond Llama: vLLM wraps the attention projections in LoRA layers, the
plugin swaps the classes of the decoder layer, its attention and (layers that return one hidden state) its
MLP. On Granite, whose layers return one hidden state, a plain, a steered, a LoRA and a steered LoRA request
in one batch each equal their solo run, and all four differ. (Llama: `test_engine_flags_steered.py`, through
the server. MoE models take no LoRA on vLLM's CPU build at all: its fused-MoE LoRA path needs Triton, and
plain vLLM fails the same way. vLLM 0.32's CPU LoRA logits path also fails on `prompt_logprobs`, so these
engines are kept apart from the reference tests, which read them.)"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from steering.spec import SteeringTerm
from tests.conftest import make_engine, stop_engine
from tests.e2e.engine_helpers import random_vector, run
from tests.e2e.test_engine_flags_steered import RANK, write_lora_adapter
from tests.e2e.test_engine_vs_reference import PROMPT
from tests.fixtures.tiny import TinyModelSpec, build_tiny_model

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module", params=["granite"])
async def lora_engine(request: Any, model_cache_dir: Path, tmp_path_factory: Any) -> Any:
    from vllm.lora.request import LoRARequest

    path = build_tiny_model(TinyModelSpec(architecture=request.param, seed=1), model_cache_dir)
    adapter = write_lora_adapter(path, tmp_path_factory.mktemp("lora") / request.param, mlp=False)
    extra = (("block_size", 32), ("enable_lora", True), ("max_lora_rank", RANK), ("max_loras", 2))
    engine = make_engine(path, extra=extra)
    yield request.param, engine, LoRARequest(f"{request.param}-lora", 1, str(adapter))
    stop_engine(engine)


async def test_lora_and_steering_share_a_batch_each_equal_to_its_solo_run(lora_engine: Any) -> None:
    arch, engine, lora = lora_engine
    layers, hidden = engine.shape.num_layers, engine.shape.hidden_size
    vectors = {"v": random_vector("v", list(range(layers)), hidden, scale=0.5, seed=5)}
    terms = [SteeringTerm(vector="v", strength=2.0, layers=[1], site="mlp"), SteeringTerm(vector="v", site="attn")]
    kinds = [(None, None), (terms, None), (None, lora), (terms, lora)]
    batch = await asyncio.gather(*(run(engine, PROMPT, t, vectors, 12, lora_request=r) for t, r in kinds))
    solo = [
        await run(engine, PROMPT, t, vectors, 12, cache_salt=f"solo-{i}", lora_request=r)
        for i, (t, r) in enumerate(kinds)
    ]
    assert [r.token_ids for r in batch] == [r.token_ids for r in solo], arch
    assert len({tuple(r.token_ids) for r in batch}) == 4, f"{arch}: LoRA or steering changed nothing"
