"""vLLM engine flags with steering, through vLLM's own server on an engine started with them:

- LoRA (`--enable-lora --lora-modules`): a LoRA request, a steered request, a steered LoRA request and a plain
  one, sent together, each equal to its own run alone (greedy). The adapter is a PEFT-format LoRA written here
  for the tiny Llama (no peft needed).
- `--steering-layers 1 2`: ops and tables on those layers only; a term on another layer is a 400.
- the queue limit (`--max-num-queued-reqs`): requests waiting for a steering slot count against it, so a burst
  of new configs cannot overshoot it; the ones past it get vLLM's 503 at once.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.conftest import make_engine, stop_engine
from tests.e2e.conftest import ADMIN, SERVED, serve_app, server_argv, vllm_app

pytestmark = pytest.mark.engine
USER = {"Authorization": "Bearer user-secret"}
ADAPTER = "tiny-lora"
RANK = 8
MAX_CONFIGS = 2
STEERABLE = (1, 2)
MAX_QUEUED = 12


def write_lora_adapter(model: Path, target: Path, seed: int = 0, mlp: bool = True) -> Path:
    """A rank-8 LoRA on q_proj, v_proj and (with `mlp`) down_proj of every layer, in PEFT's files
    (adapter_config.json + adapter_model.safetensors), large enough to change the tiny model's greedy tokens."""
    from safetensors.numpy import save_file

    config = json.loads((model / "config.json").read_text())
    hidden, layers = config["hidden_size"], config["num_hidden_layers"]
    head_dim = config.get("head_dim") or hidden // config["num_attention_heads"]
    shapes = {
        "self_attn.q_proj": (hidden, config["num_attention_heads"] * head_dim),
        "self_attn.v_proj": (hidden, config["num_key_value_heads"] * head_dim),
    }
    if mlp:
        shapes["mlp.down_proj"] = (config["intermediate_size"], hidden)
    rng = np.random.default_rng(seed)
    tensors: dict[str, np.ndarray] = {}
    for layer in range(layers):
        for module, (fan_in, fan_out) in shapes.items():
            prefix = f"base_model.model.model.layers.{layer}.{module}"
            tensors[f"{prefix}.lora_A.weight"] = (rng.standard_normal((RANK, fan_in)) / np.sqrt(fan_in)).astype("f4")
            tensors[f"{prefix}.lora_B.weight"] = (0.3 * rng.standard_normal((fan_out, RANK))).astype("f4")
    target.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(target / "adapter_model.safetensors"))
    adapter_config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": str(model),
        "r": RANK,
        "lora_alpha": 2 * RANK,
        "lora_dropout": 0.0,
        "target_modules": sorted(module.split(".")[-1] for module in shapes),
        "bias": "none",
        "fan_in_fan_out": False,
        "modules_to_save": None,
        "use_rslora": False,
        "use_dora": False,
    }
    (target / "adapter_config.json").write_text(json.dumps(adapter_config))
    return target


@pytest.fixture(scope="module")
async def flags_engine(tiny_llama: Path) -> AsyncIterator[Any]:
    """An engine started with LoRA, a queue limit, 2 steering slots and layers 1, 2 steerable."""
    from steering.config import EngineSteeringConfig

    engine = make_engine(
        tiny_llama,
        steering=EngineSteeringConfig(max_configs=MAX_CONFIGS, layers=STEERABLE),
        extra=(
            ("block_size", 32),
            ("enable_lora", True),
            ("max_lora_rank", RANK),
            ("max_loras", 2),
            ("max_num_queued_reqs", MAX_QUEUED),
        ),
    )
    yield engine
    stop_engine(engine)


@pytest.fixture(scope="module")
async def lora_server(
    flags_engine: Any, tiny_llama: Path, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[str]:
    adapter = write_lora_adapter(tiny_llama, tmp_path_factory.mktemp("lora") / ADAPTER)
    env = {
        "STEERSERVE_REDIS_URL": redis_url,
        "STEERSERVE_REGISTRY_NAMESPACE": "lora",
        "STEERSERVE_ADMIN_KEY": "admin-secret",
    }
    argv = server_argv(
        tiny_llama, "--enable-lora", "--lora-modules", f"{ADAPTER}={adapter}", "--max-lora-rank", str(RANK),
        "--max-num-queued-reqs", str(MAX_QUEUED),
    )  # fmt: skip
    app = await vllm_app(flags_engine, argv, env)
    url, uv, task = await serve_app(app)
    try:
        hidden = json.loads((tiny_llama / "config.json").read_text())["hidden_size"]
        direction = np.random.default_rng(7).standard_normal(hidden).astype("<f4")
        direction *= 3.0 / np.linalg.norm(direction)
        layers = {str(layer): base64.b64encode(direction.tobytes()).decode() for layer in (0, 1, 2)}
        async with httpx.AsyncClient(base_url=url, headers=ADMIN) as http:
            vector = {"id": "lora-mix", "layers": layers, "defaults": {"layers": list(STEERABLE)}}
            created = await http.post("/v1/steering/vectors", json=vector)
            assert created.status_code == 201, created.text
        yield url
    finally:
        uv.should_exit = True
        await task


KINDS: dict[str, dict[str, Any]] = {
    "plain": {"model": SERVED},
    "lora": {"model": ADAPTER},
    "steered": {"model": SERVED, "steering": [{"vector": "lora-mix"}]},
    "steered_lora": {"model": ADAPTER, "steering": [{"vector": "lora-mix"}]},
}


async def complete(http: httpx.AsyncClient, kind: str, prompt: str) -> str:
    body = {**KINDS[kind], "prompt": prompt, "max_tokens": 12, "temperature": 0, "ignore_eos": True}
    response = await http.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert (answer["steering"]["config_hash"] is not None) == ("steering" in KINDS[kind])
    assert answer["model"] == KINDS[kind]["model"]
    return str(answer["choices"][0]["text"])


async def test_lora_steered_and_plain_share_a_batch_each_equal_to_its_solo_run(lora_server: str) -> None:
    prompts = ["Q: 12+30", "the model steer vector"]
    async with httpx.AsyncClient(base_url=lora_server, headers=USER, timeout=120) as http:
        models = [m["id"] for m in (await http.get("/v1/models")).json()["data"]]
        assert ADAPTER in models
        solo = {(kind, p): await complete(http, kind, p) for p in prompts for kind in KINDS}
        keys = [(kind, p) for p in prompts for kind in KINDS]  # all 8 in flight together (under MAX_QUEUED)
        batched = await asyncio.gather(*(complete(http, kind, p) for kind, p in keys))
    for (kind, prompt), text in zip(keys, batched, strict=True):
        assert text == solo[(kind, prompt)], (kind, prompt)
    for prompt in prompts:  # each part changes the output, so equality above means each was applied
        out = {kind: solo[(kind, prompt)] for kind in KINDS}
        assert len(set(out.values())) == 4, out


async def test_waiting_for_a_steering_slot_counts_against_the_queue_limit(lora_server: str) -> None:
    """Two long requests hold both steering slots; a burst of 20 new configs follows. vLLM's limit counts the
    2 running plus those waiting for a slot: exactly MAX_QUEUED - 2 wait (and finish once the slots free), the
    rest get vLLM's 503 in OpenAI's shape at once."""
    holder = {"model": SERVED, "prompt": "x", "max_tokens": 1000, "ignore_eos": True, "stream": True}

    async def hold(http: httpx.AsyncClient, strength: float, started: asyncio.Event) -> int:
        body = {**holder, "steering": [{"vector": "lora-mix", "strength": strength}]}
        async with http.stream("POST", "/v1/completions", json=body) as response:
            async for _ in response.aiter_lines():
                started.set()
        return response.status_code

    async def burst_one(http: httpx.AsyncClient, strength: float) -> httpx.Response:
        body = {
            "model": SERVED,
            "prompt": "x",
            "max_tokens": 2,
            "steering": [{"vector": "lora-mix", "strength": strength}],
        }
        return await http.post("/v1/completions", json=body)

    async with httpx.AsyncClient(base_url=lora_server, headers=USER, timeout=120) as http:
        events = [asyncio.Event(), asyncio.Event()]
        holders = [asyncio.create_task(hold(http, 0.5 + i, e)) for i, e in enumerate(events)]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), 60)
        burst = await asyncio.gather(*(burst_one(http, 0.01 * (i + 1)) for i in range(20)))
        assert await asyncio.gather(*holders) == [200, 200]
    codes = [r.status_code for r in burst]
    assert codes.count(200) == MAX_QUEUED - MAX_CONFIGS and codes.count(503) == 20 - (MAX_QUEUED - MAX_CONFIGS), codes
    refused = next(r for r in burst if r.status_code == 503).json()
    assert set(refused["error"]) == {"message", "type", "param", "code"}


async def test_only_the_steering_layers_have_an_op(lora_server: str, flags_engine: Any) -> None:
    """Started with layers 1 and 2 steerable: the workers hold tables for those alone, and a term reaching layer
    0 is refused in the API process (400 naming the field), nothing sent to the engine."""
    stats = await flags_engine.worker_stats()
    assert [s["steerable_layers"] for s in stats] == [list(STEERABLE)] * len(stats)
    body = {"model": SERVED, "prompt": "x", "max_tokens": 2, "steering": [{"vector": "lora-mix", "layers": [0, 1]}]}
    async with httpx.AsyncClient(base_url=lora_server, headers=USER, timeout=60) as http:
        refused = await http.post("/v1/completions", json=body)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "steering[0].layers", refused.text
    assert "--steering-layers" in refused.json()["error"]["message"]
