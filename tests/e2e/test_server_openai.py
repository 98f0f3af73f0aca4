"""The real server over real HTTP: the official openai SDK, the real vLLM engine, a real redis-server."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import ADMIN, SERVED
from tests.e2e.engine_helpers import extracted, forcing_direction

pytestmark = pytest.mark.engine


def force_vector(tiny_llama: Path, token: int) -> dict[str, str]:
    return {
        str(k): base64.b64encode(v.astype("<f4").tobytes()).decode()
        for k, v in forcing_direction(tiny_llama, token).items()
    }


async def upload_force(url: str, vector_id: str, tiny_llama: Path, token: int) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url) as http:
        response = await http.post(
            "/v1/steering/vectors",
            headers=ADMIN,
            json={"id": vector_id, "layers": force_vector(tiny_llama, token), "description": "forces a token"},
        )
        assert response.status_code == 201, response.text
        return dict(response.json())


async def test_openai_sdk_plain_streaming_steered_and_presets(server: str, llama_engine: Any, tiny_llama: Path) -> None:
    from openai import AsyncOpenAI

    target = 300
    target_text = llama_engine.tokenizer.decode([target])
    await upload_force(server, "force", tiny_llama, target)
    client = AsyncOpenAI(base_url=f"{server}/v1", api_key="user-secret")
    prompt = "Q: 12+30"
    plain = await client.completions.create(model=SERVED, prompt=prompt, max_tokens=6, temperature=0)
    direct = None
    async for out in llama_engine.generate(
        llama_engine.tokenizer.encode(prompt),
        llama_engine.sampling_params(max_tokens=6, temperature=0.0),
        "direct-baseline",
    ):
        direct = out
    assert direct is not None and plain.choices[0].text == direct.outputs[0].text
    steered = await client.completions.create(
        model=SERVED,
        prompt=prompt,
        max_tokens=4,
        temperature=0,
        extra_body={"steering": [{"vector": "force", "strength": 1.0}]},
    )
    assert steered.choices[0].text == target_text * 4
    assert steered.model_extra["steering"]["terms"][0]["vector"] == "force"
    stream = await client.chat.completions.create(
        model=SERVED,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=4,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"steering": [{"vector": "force"}]},
    )
    pieces, usage = [], None
    async for chunk in stream:
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
        if chunk.usage is not None:
            usage = chunk.usage
    assert "".join(pieces) == target_text * 4 and usage is not None and usage.completion_tokens == 4
    async with httpx.AsyncClient(base_url=server, headers=ADMIN) as http:
        put = await http.put("/v1/steering/presets/forced", json={"steering": [{"vector": "force"}]})
        assert put.status_code == 200, put.text
    models = await client.models.list()
    assert {"forced", SERVED} <= {m.id for m in models.data}
    chat = await client.chat.completions.create(
        model="forced", messages=[{"role": "user", "content": prompt}], max_tokens=3, temperature=0
    )
    assert chat.choices[0].message.content == target_text * 3
    plain_chat = await client.chat.completions.create(
        model=SERVED, messages=[{"role": "user", "content": prompt}], max_tokens=3, temperature=0
    )
    assert plain_chat.choices[0].message.content != target_text * 3


async def test_new_version_is_used(server: str, llama_engine: Any, tiny_llama: Path) -> None:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=f"{server}/v1", api_key="user-secret")
    first = await upload_force(server, "moving", tiny_llama, 301)
    out1 = await client.completions.create(
        model=SERVED, prompt="x", max_tokens=3, temperature=0, extra_body={"steering": [{"vector": "moving"}]}
    )
    second = await upload_force(server, "moving", tiny_llama, 302)
    assert (first["version"], second["version"]) == (1, 2)
    out2 = await client.completions.create(
        model=SERVED, prompt="x", max_tokens=3, temperature=0, extra_body={"steering": [{"vector": "moving"}]}
    )
    pinned = await client.completions.create(
        model=SERVED, prompt="x", max_tokens=3, temperature=0, extra_body={"steering": [{"vector": "moving@1"}]}
    )
    decode = llama_engine.tokenizer.decode
    assert out1.choices[0].text == decode([301]) * 3
    assert out2.choices[0].text == decode([302]) * 3
    assert pinned.choices[0].text == decode([301]) * 3


@pytest.mark.parametrize(
    ("path", "body", "headers", "status"),
    [
        ("/v1/completions", {"model": SERVED, "prompt": "x", "steering": [{"vector": "ghost"}]}, {}, 404),
        (
            "/v1/completions",
            {"model": SERVED, "prompt": "x", "steering": [{"vector": "force", "layers": [99]}]},
            {},
            400,
        ),
        (
            "/v1/completions",
            {"model": SERVED, "prompt": "x", "steering": [{"vector": "force", "strength": 1e6}]},
            {},
            400,
        ),
        ("/v1/completions", {"model": SERVED, "prompt": "x"}, {"X-Steering": "force:abc"}, 400),
        (  # a condition on a vector that stores no threshold, and none given
            "/v1/completions",
            {
                "model": SERVED,
                "prompt": "x",
                "steering": [{"vector": "force", "condition": {"vector": "force", "layer": -1}}],
            },
            {},
            400,
        ),
        ("/v1/completions", {"model": SERVED, "prompt": "x", "steering": {"vector": "force"}}, {}, 400),
        ("/v1/chat/completions", {"model": "no-such-preset", "messages": [{"role": "user", "content": "x"}]}, {}, 404),
        ("/v1/responses", {"model": SERVED, "input": "x", "steering": [{"vector": "ghost"}]}, {}, 404),
        ("/v1/steering/vectors", {"id": "bad", "layers": {"0": "AAAA"}}, ADMIN, 400),
        ("/v1/steering/vectors", {"id": "bad", "layers": {"0": "AAAA"}}, {}, 403),
    ],
)
async def test_bad_input_is_refused_and_the_server_stays_healthy(
    server: str, path: str, body: dict[str, Any], headers: dict[str, str], status: int
) -> None:
    user = {"Authorization": "Bearer user-secret"}
    async with httpx.AsyncClient(base_url=server) as http:
        response = await http.post(path, json=body, headers={**user, **headers})
        assert response.status_code == status, response.text
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
        assert (await http.get("/health")).status_code == 200
        ok = await http.post(
            "/v1/completions",
            json={"model": SERVED, "prompt": "x", "max_tokens": 2},
            headers={"Authorization": "Bearer user-secret"},
        )
        assert ok.status_code == 200


async def test_metrics_after_traffic(server: str) -> None:
    async with httpx.AsyncClient(base_url=server) as http:
        text = (await http.get("/metrics")).text
    for family in (
        "steerserve:e2e_request_latency_seconds_bucket",
        "steerserve:time_to_first_token_seconds_count",
        "steerserve:inter_token_latency_seconds_count",
        "steerserve:prompt_tokens_total",
        "steerserve:generation_tokens_total",
        "steerserve:requests_total",
        "steerserve:num_requests_running",
        "steerserve:num_requests_waiting",
        "steerserve:vector_cache_hits_total",
        "steerserve:vector_cache_misses_total",
    ):
        assert family in text, family
    assert 'steered="true"' in text and 'preset="forced"' in text and 'preset="custom"' in text
    assert "vllm:" in text, "vLLM's own engine metrics should be exported on the same endpoint"
    for vector_id in ("force", "moving"):
        assert f'="{vector_id}"' not in text, "a vector id leaked into a label"


def _latency_sums(text: str) -> dict[str, float]:
    """Unsteered requests' TTFT and end-to-end histogram sums and counts, from a /metrics scrape."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels == {"steered": "false", "preset": "none"} and sample.name.startswith(
                ("steerserve:time_to_first_token_seconds_", "steerserve:e2e_request_latency_seconds_")
            ):
                out[sample.name] = sample.value
    return out


@pytest.mark.parametrize("stream", [False, True])
async def test_time_to_first_token_is_the_engine_first_token_streamed_or_not(server: str, stream: bool) -> None:
    """A non-streamed answer is one final output, yet its TTFT is the first token's time (vLLM's request
    stats), far below its end-to-end latency; streamed likewise."""
    body = {"model": SERVED, "prompt": "x", "max_tokens": 300, "ignore_eos": True, "stream": stream}
    ttft, e2e = "steerserve:time_to_first_token_seconds_", "steerserve:e2e_request_latency_seconds_"
    async with httpx.AsyncClient(base_url=server, headers={"Authorization": "Bearer user-secret"}, timeout=60) as http:
        before = _latency_sums((await http.get("/metrics")).text)
        response = await http.post("/v1/completions", json=body)
        assert response.status_code == 200
        after = _latency_sums((await http.get("/metrics")).text)
    delta = {name: after[name] - before.get(name, 0.0) for name in after}
    assert delta[ttft + "count"] == 1 and delta[e2e + "count"] == 1
    assert 0 < delta[ttft + "sum"] < 0.5 * delta[e2e + "sum"], delta


async def _engine_idle(engine: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if engine.llm.output_processor.get_num_unfinished_requests() == 0:
            return True
        await asyncio.sleep(0.05)
    return False


async def test_client_disconnect_aborts_the_engine_request(server: str, llama_engine: Any) -> None:
    body = {"model": SERVED, "prompt": "x", "max_tokens": 900, "ignore_eos": True, "temperature": 0}
    user = {"Authorization": "Bearer user-secret"}
    async with httpx.AsyncClient(base_url=server, headers=user, timeout=60) as http:
        async with http.stream("POST", "/v1/completions", json={**body, "stream": True}) as response:
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    break  # one chunk arrived; leaving the block drops the connection
    assert await _engine_idle(llama_engine), "a streaming request kept running after its client left"
    async with httpx.AsyncClient(base_url=server, headers=user, timeout=60) as http:
        pending = asyncio.create_task(http.post("/v1/completions", json=body))
        await asyncio.sleep(1.0)
        assert llama_engine.llm.output_processor.get_num_unfinished_requests() == 1
        pending.cancel()
        await asyncio.gather(pending, return_exceptions=True)
    assert await _engine_idle(llama_engine), "a non-streaming request kept running after its client left"


async def test_structured_output_logprobs_and_echo(server: str, llama_engine: Any) -> None:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=f"{server}/v1", api_key="user-secret")
    schema = {
        "type": "object",
        "properties": {"a": {"type": "integer"}},
        "required": ["a"],
        "additionalProperties": False,
    }
    chat = await client.chat.completions.create(
        model=SERVED,
        messages=[{"role": "user", "content": "json please"}],
        max_tokens=40,
        temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
    )
    text = chat.choices[0].message.content or ""
    assert text.lstrip().startswith("{"), text  # the grammar forces JSON even on random weights
    if chat.choices[0].finish_reason == "stop":
        import json

        assert isinstance(json.loads(text)["a"], int)
    completion = await client.completions.create(
        model=SERVED, prompt="Q: 1+1", max_tokens=5, temperature=0, logprobs=2, echo=True
    )
    choice = completion.choices[0]
    prompt_len = len(llama_engine.tokenizer.encode("Q: 1+1"))
    assert choice.text.startswith("Q: 1+1") and choice.logprobs is not None
    assert len(choice.logprobs.tokens) == prompt_len + 5 and choice.logprobs.token_logprobs[0] is None
    assert all(lp is not None and lp <= 0 for lp in choice.logprobs.token_logprobs[prompt_len:])
    with_top = await client.chat.completions.create(
        model=SERVED,
        messages=[{"role": "user", "content": "x"}],
        max_tokens=3,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
    )
    content = with_top.choices[0].logprobs.content
    assert len(content) == 3 and all(len(item.top_logprobs) == 2 for item in content)


async def test_reasoning_sections_and_reflection_metrics(
    server: str, llama_engine: Any, tiny_llama: Path, redis_url: str, namespace: str
) -> None:
    from openai import AsyncOpenAI

    wait_ids = llama_engine.tokenizer.encode("Wait", add_special_tokens=False)
    assert len(wait_ids) == 1
    await upload_force(server, "force-wait", tiny_llama, wait_ids[0])
    client = AsyncOpenAI(base_url=f"{server}/v1", api_key="user-secret")
    messages = [{"role": "user", "content": "Q: 12+30"}]
    waits = await client.chat.completions.create(
        model=SERVED,
        messages=messages,
        max_tokens=6,
        temperature=0,
        extra_body={"steering": [{"vector": "force-wait"}]},
    )
    reflection = waits.model_extra["steering"]["reflection"]
    assert reflection["markers"] >= 3 and reflection["responses_with_reflection"] == 1
    async with httpx.AsyncClient(base_url=server) as http:
        metrics = (await http.get("/metrics")).text
    assert 'steerserve:responses_with_reflection_total{arm="none",preset="custom"}' in metrics
    assert reflection["markers_content"] == reflection["markers"]  # no reasoning parser: all content
    # vLLM's own reasoning parser splits the thinking section: with deepseek_r1's (R1's template opens the
    # section) everything before </think> is reasoning, and the markers are counted there
    from tests.e2e.conftest import serve_app, server_argv, vllm_app

    env = {"STEERSERVE_REDIS_URL": redis_url, "STEERSERVE_REGISTRY_NAMESPACE": namespace}
    app = await vllm_app(llama_engine, server_argv(tiny_llama, "--reasoning-parser", "deepseek_r1"), env)
    url, uv, task = await serve_app(app)
    try:
        r1 = AsyncOpenAI(base_url=f"{url}/v1", api_key="user-secret")
        steering = {"steering": [{"vector": "force-wait"}]}
        whole = await r1.chat.completions.create(
            model=SERVED, messages=messages, max_tokens=6, temperature=0, extra_body=steering
        )
        message = whole.choices[0].message
        counted = whole.model_extra["steering"]["reflection"]
        assert (message.model_extra or {}).get("reasoning") and not message.content
        assert counted["markers_reasoning"] >= 3 and counted["markers_content"] == 0
        stream = await r1.chat.completions.create(
            model=SERVED, messages=messages, max_tokens=6, temperature=0, stream=True, extra_body=steering
        )
        reasoning, last = "", None
        async for chunk in stream:
            if chunk.choices:
                reasoning += (chunk.choices[0].delta.model_extra or {}).get("reasoning") or ""
            last = chunk
        assert reasoning == message.model_extra["reasoning"]
        assert last is not None and last.model_extra["steering"]["reflection"] == counted
    finally:
        uv.should_exit = True
        await task


async def test_extraction_job_and_experiment_over_http(server: str, llama_engine: Any) -> None:
    from openai import AsyncOpenAI

    async with httpx.AsyncClient(base_url=server, headers=ADMIN, timeout=60) as http:
        body = {
            "id": "tone",
            "positive": [f"Wait, let me re-check step {i}." for i in range(12)],
            "negative": [f"The total is {i * 7} apples." for i in range(12)],
            "method": "pca",
            "layers": [-1, 1],
        }
        refused = await http.post(
            "/v1/steering/vectors/extract", json=body, headers={"Authorization": "Bearer user-secret"}
        )
        assert refused.status_code == 403
        bad = await http.post("/v1/steering/vectors/extract", json={"id": "x", "positive": ["a"]})
        assert bad.status_code == 400 and set(bad.json()["error"]) == {"message", "type", "param", "code"}
        result = await extracted(http, body)
        assert result["layers"] == [1, llama_engine.shape.num_layers - 1] and len(result["scan"]) == 4
        assert result["counts"] == {"positive_texts": 12, "negative_texts": 12}
        info = (await http.get("/v1/steering/vectors/tone")).json()
        assert info["provenance"]["method"] == "pca" and info["provenance"]["scan"]
        # the probe's threshold per stored layer, for mean-pooled texts a prompt-scoped condition
        condition = info["defaults"]["condition"]
        assert condition["scope"] == "prompt" and set(condition["thresholds"]) == {"1", str(result["layers"][1])}
        # a gate extracted as a logistic probe's direction separates the rows at least as well as the pca one
        accuracy = (await extracted(http, {**body, "id": "tone-gate", "method": "probe"}))["condition_accuracy"]
        assert (
            set(accuracy) == {str(layer) for layer in range(4)} and accuracy["1"] >= result["condition_accuracy"]["1"]
        )
        assert (await http.get("/v1/steering/vectors/tone-gate")).json()["provenance"]["method"] == "probe"
        gated = await http.post(
            "/v1/completions",
            json={
                "model": SERVED,
                "prompt": "Wait, let me re-check",
                "max_tokens": 3,
                "steering": [{"vector": "tone", "layers": [-1], "condition": {"vector": "tone", "layer": 1}}],
            },
            headers={"Authorization": "Bearer user-secret"},
        )
        assert gated.status_code == 200, gated.text
        reported = gated.json()["steering"]["terms"][0]["condition"]
        assert reported == {**reported, "layer": 1, "scope": "prompt", "threshold": condition["thresholds"]["1"]}
        arms = {"arms": [{"name": "off"}, {"name": "on", "steering": [{"vector": "tone", "strength": 0.5}]}]}
        assert (await http.put("/v1/steering/experiments/tone-ab", json=arms)).status_code == 200
    client = AsyncOpenAI(base_url=f"{server}/v1", api_key="user-secret")
    assert "experiment/tone-ab" in [m.id async for m in client.models.list()]
    seen = set()
    for user in ("ann", "bob", "cid", "dan", "eve", "fay"):
        raw = await client.chat.completions.with_raw_response.create(
            model="experiment/tone-ab", messages=[{"role": "user", "content": "hi"}], max_tokens=3, user=user
        )
        seen.add(raw.headers["x-steering-arm"])
    async with httpx.AsyncClient(base_url=server, headers=ADMIN) as http:
        report = (await http.get("/v1/steering/experiments/tone-ab/report")).json()
    assert sum(a["requests"] for a in report["arms"]) == 6 and seen <= {"off", "on"}


async def test_a_request_the_engine_cannot_steer_fails_loudly(server: str, llama_engine: Any, tiny_llama: Path) -> None:
    """Forced mismatch: the API process believes a vector is loaded, the workers lost it. The request must not
    pass as steered: an error (non-streamed and streamed), counted, and the server keeps serving."""
    created = await upload_force(server, "lost", tiny_llama, 333)
    user = {"Authorization": "Bearer user-secret"}
    body = {"model": SERVED, "prompt": "x", "max_tokens": 2, "steering": [{"vector": "lost", "strength": 0.5}]}
    async with httpx.AsyncClient(base_url=server, headers=user, timeout=60) as http:
        assert (await http.post("/v1/completions", json=body)).status_code == 200  # loads it in every worker
        await llama_engine.llm.collective_rpc("steerserve_drop_vectors", args=([created["sha256"]],))
        other = {**body, "steering": [{"vector": "lost", "strength": 0.7}]}  # a new config: its row needs a fill
        failed = await http.post("/v1/completions", json=other)
        assert failed.status_code == 500, failed.text
        assert "could not apply" in failed.json()["error"]["message"]
        streamed = await http.post("/v1/completions", json={**other, "stream": True})
        events = [line[6:] for line in streamed.text.splitlines() if line.startswith("data: ")]
        assert "could not apply" in json.loads(events[-2])["error"]["message"] and events[-1] == "[DONE]"
        assert not any("steering" in json.loads(e) for e in events[:-1]), "a failed stream still claimed steering"
        metrics = (await http.get("/metrics")).text
        assert "steerserve:requests_not_steered_total 2.0" in metrics
        plain = await http.post("/v1/completions", json={"model": SERVED, "prompt": "x", "max_tokens": 2})
        assert plain.status_code == 200
