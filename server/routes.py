"""Thin routes: parse, authorize, delegate to serving/admin. Errors are mapped in `server.errors`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from server.errors import BadRequestError, ErrorResponse
from server.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    PresetBody,
    TokenizeRequest,
    VectorCreated,
    VectorUpload,
)
from server.state import ServerState
from steering import __version__

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 409, 413, 503)
}


def state_of(request: Request) -> ServerState:
    state: ServerState = request.app.state.steerserve
    return state


async def api_key(request: Request) -> None:  # async: FastAPI runs sync dependencies in a thread pool
    state_of(request).keys.require_api(request)


async def admin_key(request: Request) -> None:
    state_of(request).keys.require_admin(request)


def request_id(request: Request) -> str:
    rid: str = request.state.request_id
    return rid


public = APIRouter()
v1 = APIRouter(prefix="/v1", dependencies=[Depends(api_key)], responses=ERRORS)
admin = APIRouter(prefix="/v1/steering", dependencies=[Depends(api_key)], responses=ERRORS)


@public.get("/health")
async def health(request: Request) -> Response:
    ok = await state_of(request).engine.check_health()
    return Response(status_code=200 if ok else 503)


@public.get("/metrics")
async def metrics(request: Request) -> Response:
    state_of(request).sync_metrics()
    return PlainTextResponse(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


@public.get("/version")
async def version(request: Request) -> dict[str, str]:
    return {"version": __version__, "vllm": state_of(request).engine.vllm_version()}


@public.post("/tokenize", responses=ERRORS)
async def tokenize(body: TokenizeRequest, request: Request) -> dict[str, Any]:
    state = state_of(request)
    state.keys.require_api(request)
    engine = state.engine
    if body.messages is not None:
        tokens = engine.render_chat([{"role": m.role, "content": m.text()} for m in body.messages])
    else:
        tokens = engine.tokenizer.encode(body.prompt or "", add_special_tokens=body.add_special_tokens)
    strings = [engine.tokenizer.decode([t]) for t in tokens]
    return {"tokens": tokens, "token_strs": strings, "count": len(tokens), "max_model_len": engine.max_model_len}


@public.post("/detokenize", responses=ERRORS)
async def detokenize(body: DetokenizeRequest, request: Request) -> dict[str, str]:
    state = state_of(request)
    state.keys.require_api(request)
    vocab = state.engine.shape.vocab_size
    if any(not 0 <= t < vocab for t in body.tokens):
        raise BadRequestError(f"token ids must be in [0, {vocab})", param="tokens")
    return {"prompt": state.engine.tokenizer.decode(body.tokens)}


@v1.get("/models")
async def models(request: Request) -> dict[str, Any]:
    return await state_of(request).model_list()


@v1.post("/completions")
async def completions(body: CompletionRequest, request: Request) -> Any:
    state = state_of(request)
    return await state.serving.completion(body, request, request_id(request))


@v1.post("/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
    state = state_of(request)
    return await state.serving.chat(body, request, request_id(request))


@admin.post("/vectors", status_code=201, response_model=VectorCreated, dependencies=[Depends(admin_key)])
async def create_vector(body: VectorUpload, request: Request) -> VectorCreated:
    record = await state_of(request).admin.add_vector(body)
    return VectorCreated(
        id=record.id,
        version=record.version,
        sha256=record.sha256,
        hidden_size=record.hidden_size,
        layers=list(record.layers),
    )


@admin.get("/vectors")
async def list_vectors(request: Request) -> dict[str, Any]:
    records = await state_of(request).admin.store.list_vectors()
    return {"object": "list", "data": [r.to_json() for r in records]}


@admin.get("/vectors/{vector_id}")
async def get_vector(vector_id: str, request: Request) -> dict[str, Any]:
    return await state_of(request).admin.vector_info(vector_id)


@admin.get("/vectors/{vector_id}/data")
async def get_vector_data(vector_id: str, request: Request, version: int | None = None) -> Response:
    record, data = await state_of(request).admin.vector_data(vector_id, version)
    filename = f"{record.id}-v{record.version}.safetensors"
    return Response(
        data,
        media_type="application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


@admin.delete("/vectors/{vector_id}", dependencies=[Depends(admin_key)])
async def delete_vector(vector_id: str, request: Request) -> dict[str, Any]:
    await state_of(request).admin.delete_vector(vector_id)
    return {"id": vector_id, "deleted": True}


@admin.get("/presets")
async def list_presets(request: Request) -> dict[str, Any]:
    presets = await state_of(request).admin.store.list_presets()
    return {"object": "list", "data": [p.model_dump() for p in presets]}


@admin.put("/presets/{name}", dependencies=[Depends(admin_key)])
async def put_preset(name: str, body: PresetBody, request: Request) -> dict[str, Any]:
    state = state_of(request)
    preset = await state.admin.put_preset(name, body, state.served_model)
    return preset.model_dump()


@admin.get("/presets/{name}")
async def get_preset(name: str, request: Request) -> dict[str, Any]:
    return (await state_of(request).admin.get_preset(name)).model_dump()


@admin.delete("/presets/{name}", dependencies=[Depends(admin_key)])
async def delete_preset(name: str, request: Request) -> JSONResponse:
    await state_of(request).admin.delete_preset(name)
    return JSONResponse({"name": name, "deleted": True})
