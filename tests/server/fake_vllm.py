"""A stand-in for vLLM's app around a fake engine: vLLM's own protocol models on its generation paths, answered
without an engine, with steerserve's endpoint plugin attached as vLLM's `build_app` attaches it. The routes'
own logic (steering sources, errors, the registry) runs for real; tests/e2e runs the same against vLLM's app."""

from __future__ import annotations

import json
from argparse import Namespace
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.entrypoints.openai.completion.protocol import CompletionRequest
from vllm.entrypoints.serve.exception_handling.register import init_exception_handler

from server.observe import follow_engine_outputs
from server.plugin import SteerserveEndpoints, build_state
from steering.settings import SteerserveSettings
from steering.store.base import VectorStore
from tests.server.fake_engine import FakeEngine

MODEL = "base"


class FakeServingModels:
    lora_requests: dict[str, Any] = {}

    async def show_available_models(self) -> Any:
        class Listed:
            def model_dump(self) -> dict[str, Any]:
                return {"data": [{"id": MODEL, "object": "model", "root": "m", "parent": None}]}

        return Listed()


def _answer(request: Any) -> tuple[str, int]:
    """'a' x max_tokens unsteered; the first letter of the config hash steered (what the fake engine would emit)."""
    payload = (request.vllm_xargs or {}).get("steerserve")
    letter = json.loads(payload)["hash"][0] if payload else "a"
    return letter, int(request.max_tokens or 4)


class FakeEngineClient:
    """`generate` as vLLM's engine client has it: `RequestOutput`-shaped deltas (streamed) or one final output."""

    async def generate(self, prompt: Any, sampling_params: Any, request_id: str) -> AsyncIterator[Any]:
        letter, count, stream = sampling_params
        for i in range(count) if stream else [count - 1]:
            n = 1 if stream else count
            completion = SimpleNamespace(
                index=0, text=letter * n, token_ids=[97] * n, finish_reason="length" if i == count - 1 else None
            )
            yield SimpleNamespace(prompt_token_ids=[1, 2] if i == 0 or not stream else None, outputs=[completion])


def fake_vllm_app(engine: FakeEngine, engine_client: FakeEngineClient) -> FastAPI:
    app = FastAPI()

    async def completions(request: CompletionRequest, raw_request: Request) -> Any:
        return await _generate("text_completion", request)

    async def chat(request: ChatCompletionRequest, raw_request: Request) -> Any:
        return await _generate("chat.completion", request)

    async def _generate(kind: str, request: Any) -> Any:
        if request.model not in (None, MODEL):
            error = {"message": f"The model `{request.model}` does not exist.", "type": "NotFoundError"}
            return JSONResponse({"error": {**error, "param": "model", "code": 404}}, status_code=404)
        engine.seen.append((request.model, dict(request.vllm_xargs or {}), request.cache_salt))
        engine.requests.append(request)
        letter, count = _answer(request)
        usage = {"prompt_tokens": 2, "completion_tokens": count, "total_tokens": 2 + count}
        outputs = engine_client.generate("prompt", (letter, count, bool(request.stream)), "x")
        if not request.stream:
            async for _ in outputs:
                pass
            choice: dict[str, Any] = {"index": 0, "finish_reason": "length"}
            choice |= (
                {"message": {"role": "assistant", "content": letter * count}}
                if kind == "chat.completion"
                else {"text": letter * count}
            )
            return JSONResponse(
                {"id": "x", "object": kind, "model": request.model, "choices": [choice], "usage": usage}
            )

        async def events() -> Any:
            async for output in outputs:
                completion = output.outputs[0]
                text = completion.text
                delta = {"delta": {"content": text}} if kind == "chat.completion" else {"text": text}
                chunk = {"id": "x", "object": f"{kind}.chunk", "model": request.model}
                chunk["choices"] = [{"index": 0, **delta, "finish_reason": completion.finish_reason}]
                yield f"data: {json.dumps(chunk, separators=(',', ':'))}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def metrics() -> Response:  # vLLM's /metrics: the process's default Prometheus registry
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    app.add_api_route("/metrics", metrics, methods=["GET"])
    app.add_api_route("/v1/completions", completions, methods=["POST"])
    app.add_api_route("/v1/chat/completions", chat, methods=["POST"])
    SteerserveEndpoints().attach_router(app)
    init_exception_handler(app)  # as vLLM's build_app does after the plugins
    return app


async def make_client(
    tmp_path: Path, store: VectorStore | None = None, api_key: str | None = None, **settings: Any
) -> tuple[httpx.AsyncClient, FakeEngine, FastAPI]:
    from steering.store.embedded import EmbeddedStore

    engine = FakeEngine()
    engine_client = FakeEngineClient()
    follow_engine_outputs(engine_client)
    app = fake_vllm_app(engine, engine_client)
    app.state.openai_serving_models = FakeServingModels()
    args = Namespace(model="m", served_model_name=[MODEL], api_key=[api_key] if api_key else None)
    args.log_error_stack = False
    app.state.args = args  # vLLM's exception handlers read it
    store = store if store is not None else EmbeddedStore(tmp_path / "reg.sqlite3", MODEL)
    app.state.steerserve = await build_state(
        None, app.state, args, SteerserveSettings(data_dir=tmp_path, **settings), store=store, engine=engine
    )
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")
    return client, engine, app
