"""What vLLM's own server does keeps working, steered: tools (the request Open WebUI sends), the Responses and
Anthropic Messages APIs, model cards for presets, tokenize/version/health — through clients nobody here wrote
(the openai and anthropic SDKs, langchain-openai), against the real engine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import ADMIN, SERVED
from tests.e2e.test_server_openai import upload_force

pytestmark = pytest.mark.engine
USER = {"Authorization": "Bearer user-secret"}
TOKEN = 421  # the forced token of this module's vector


def tools(n: int) -> list[dict[str, Any]]:
    """Tools shaped like the built-in ones a chat UI attaches to every request."""
    return [
        {
            "type": "function",
            "function": {
                "name": f"tool_{i}",
                "description": f"Built-in tool number {i}",
                "parameters": {
                    "type": "object",
                    "properties": {"query": {"type": "string", "description": "what to look up"}},
                    "required": ["query"],
                },
            },
        }
        for i in range(n)
    ]


@pytest.fixture(scope="module")
async def forced(server: str, tiny_llama: Path) -> str:
    """A vector that makes the model emit TOKEN, and the preset `forced-up` over it."""
    await upload_force(server, "route-force", tiny_llama, TOKEN)
    async with httpx.AsyncClient(base_url=server, headers=ADMIN) as http:
        preset = {"steering": [{"vector": "route-force"}], "description": "forces one token"}
        assert (await http.put("/v1/steering/presets/forced-up", json=preset)).status_code == 200
    return "forced-up"


async def test_open_webui_request_shape_streams_an_answer(server: str, forced: str, llama_engine: Any) -> None:
    """Open WebUI: `stream: true`, ~30 tools, no tool_choice, no stream_options; the model a preset."""
    body = {
        "model": forced,
        "stream": True,
        "messages": [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "hello"}],
        "tools": tools(30),
        "max_tokens": 4,
        "temperature": 0,
    }
    text, steering = "", None
    async with httpx.AsyncClient(base_url=server, headers=USER, timeout=60) as http:
        async with http.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200, await response.aread()
            assert response.headers["x-steering-config"] != "none"
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                for choice in chunk["choices"]:
                    text += choice["delta"].get("content") or ""
                steering = chunk.get("steering", steering)
    assert text == llama_engine.tokenizer.decode([TOKEN]) * 4
    assert steering is not None and steering["preset"] == forced


@pytest.mark.parametrize("tool_choice", [None, "auto", "none"])
async def test_tools_without_a_forced_choice_are_answered(server: str, forced: str, tool_choice: str | None) -> None:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=f"{server}/v1", api_key="user-secret")
    extra = {} if tool_choice is None else {"tool_choice": tool_choice}
    for model in (SERVED, forced):
        answer = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], tools=tools(3), max_tokens=3, **extra
        )
        assert answer.choices[0].message.content or answer.choices[0].message.tool_calls
        assert (answer.model_extra["steering"]["preset"] == forced) == (model == forced)


async def test_a_named_tool_choice_returns_a_valid_call_steered_and_not(server: str, forced: str) -> None:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=f"{server}/v1", api_key="user-secret")
    choice = {"type": "function", "function": {"name": "tool_1"}}
    for model in (SERVED, forced):
        answer = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "look it up"}], tools=tools(3), tool_choice=choice,
            max_tokens=60, temperature=0,
        )  # fmt: skip
        (call,) = answer.choices[0].message.tool_calls or []
        assert call.function.name == "tool_1"
        json.loads(call.function.arguments)  # valid JSON: vLLM forces the named call with structured outputs


async def test_models_retrieve_lists_presets_and_404s_unknown(server: str, forced: str) -> None:
    from openai import AsyncOpenAI, NotFoundError

    client = AsyncOpenAI(base_url=f"{server}/v1", api_key="user-secret")
    base = await client.models.retrieve(SERVED)
    preset = await client.models.retrieve(forced)
    assert base.id == SERVED and preset.id == forced and preset.model_extra["parent"] == SERVED
    with pytest.raises(NotFoundError):
        await client.models.retrieve("no-such-model")


async def test_responses_api_steered_by_preset_streamed_and_not(server: str, forced: str, llama_engine: Any) -> None:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=f"{server}/v1", api_key="user-secret")
    expected = llama_engine.tokenizer.decode([TOKEN]) * 3
    plain = await client.responses.create(model=SERVED, input="hi", max_output_tokens=3, temperature=0)
    steered = await client.responses.create(model=forced, input="hi", max_output_tokens=3, temperature=0)
    assert steered.output_text == expected and plain.output_text != expected
    assert steered.model == forced and steered.model_extra["steering"]["preset"] == forced
    assert plain.model_extra["steering"]["config_hash"] is None
    stream = await client.responses.create(model=forced, input="hi", max_output_tokens=3, temperature=0, stream=True)
    deltas, completed = "", None
    async for event in stream:
        if event.type == "response.output_text.delta":
            deltas += event.delta
        elif event.type == "response.completed":
            completed = event.response
    assert deltas == expected and completed is not None
    assert completed.model_extra["steering"]["config_hash"] == steered.model_extra["steering"]["config_hash"]


async def test_anthropic_messages_steered_streamed_and_errors_in_its_shape(
    server: str, forced: str, llama_engine: Any
) -> None:
    import anthropic

    client = anthropic.AsyncAnthropic(base_url=server, api_key="user-secret", default_headers=USER)
    expected = llama_engine.tokenizer.decode([TOKEN]) * 3
    messages: Any = [{"role": "user", "content": "hi"}]
    greedy: Any = {"temperature": 0}
    by_field = await client.messages.create(
        model=SERVED, max_tokens=3, messages=messages, extra_body={**greedy, "steering": [{"vector": "route-force"}]}
    )
    by_preset = await client.messages.create(model=forced, max_tokens=3, messages=messages, extra_body=greedy)
    plain = await client.messages.create(model=SERVED, max_tokens=3, messages=messages, extra_body=greedy)
    assert by_field.content[0].text == by_preset.content[0].text == expected  # type: ignore[union-attr]
    assert plain.content[0].text != expected  # type: ignore[union-attr]
    assert by_preset.model == forced and (by_preset.model_extra or {})["steering"]["preset"] == forced
    text = ""
    async with client.messages.stream(model=forced, max_tokens=3, messages=messages, extra_body=greedy) as stream:
        async for delta in stream.text_stream:
            text += delta
    assert text == expected
    with pytest.raises(anthropic.NotFoundError) as missing:
        await client.messages.create(model="no-such-preset", max_tokens=3, messages=messages)
    assert missing.value.body["type"] == "error" and missing.value.body["error"]["type"]  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError):
        await client.messages.create(
            model=SERVED,
            max_tokens=3,
            messages=messages,
            extra_body={"steering": [{"vector": "route-force", "layers": [99]}]},
        )


async def test_langchain_chat_openai_on_a_preset(server: str, forced: str, llama_engine: Any) -> None:
    from langchain_openai import ChatOpenAI

    chat = ChatOpenAI(base_url=f"{server}/v1", api_key="user-secret", model=forced, max_tokens=3, temperature=0)  # type: ignore[arg-type]
    reply = await chat.ainvoke("hi")
    assert reply.content == llama_engine.tokenizer.decode([TOKEN]) * 3
    plain = ChatOpenAI(base_url=f"{server}/v1", api_key="user-secret", model=SERVED, max_tokens=3, temperature=0)  # type: ignore[arg-type]
    assert (await plain.ainvoke("hi")).content != reply.content


async def test_vllm_utility_routes_and_reasoning_effort(server: str, llama_engine: Any) -> None:
    async with httpx.AsyncClient(base_url=server, headers=USER, timeout=60) as http:
        assert (await http.get("/health")).status_code == 200
        assert "version" in (await http.get("/version")).json()
        tokens = (await http.post("/tokenize", json={"model": SERVED, "prompt": "hello"})).json()
        assert tokens["count"] == len(tokens["tokens"]) and tokens["max_model_len"] == llama_engine.max_model_len
        text = (await http.post("/detokenize", json={"model": SERVED, "tokens": tokens["tokens"]})).json()
        assert text["prompt"].strip() == "hello"
        effort = await http.post(
            "/v1/chat/completions",
            json={
                "model": SERVED,
                "messages": [{"role": "user", "content": "x"}],
                "max_tokens": 2,
                "reasoning_effort": "low",
            },
        )
        assert effort.status_code == 200, effort.text
