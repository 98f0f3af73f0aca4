"""Thin routes: parse, authorize, delegate to serving/admin. Errors are mapped in `server.errors`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Form, Request, Response, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from server.errors import BadRequestError, ErrorResponse
from server.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    PresetBody,
    TokenizeRequest,
    VectorCreated,
    VectorDefaultsBody,
    VectorImport,
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


@public.get(
    "/health",
    response_class=Response,
    responses={
        200: {"description": "The engine answers (empty body).", "content": None},
        503: {"description": "The engine is down, or the server is draining (empty body).", "content": None},
    },
)
async def health(request: Request) -> Response:
    state = state_of(request)
    ok = not state.serving.draining and await state.engine.check_health()
    return Response(status_code=200 if ok else 503)  # 503 while draining: load balancers stop sending


@public.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={200: {"description": "Prometheus text exposition format.", "content": {"text/plain": {}}}},
)
async def metrics(request: Request) -> Response:
    state_of(request).sync_metrics()
    return PlainTextResponse(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


PLAYGROUND = Path(__file__).with_name("static") / "playground.html"


@public.get("/playground", response_class=HTMLResponse, include_in_schema=False)
async def playground() -> HTMLResponse:
    """The playground page: public (no key to load it); its API calls send the key the user types in."""
    return HTMLResponse(PLAYGROUND.read_text(encoding="utf-8"))


@public.get("/version")
async def version(request: Request) -> dict[str, str]:
    return {"version": __version__, "vllm": state_of(request).engine.vllm_version()}


@public.post("/tokenize", responses=ERRORS, dependencies=[Depends(api_key)])  # the key before the body
async def tokenize(body: TokenizeRequest, request: Request) -> dict[str, Any]:
    state = state_of(request)
    engine = state.engine
    if body.messages is not None:
        tokens = engine.render_chat([{"role": m.role, "content": m.text()} for m in body.messages])
    else:
        tokens = engine.tokenizer.encode(body.prompt or "", add_special_tokens=body.add_special_tokens)
    strings = [engine.tokenizer.decode([t]) for t in tokens]
    return {"tokens": tokens, "token_strs": strings, "count": len(tokens), "max_model_len": engine.max_model_len}


@public.post("/detokenize", responses=ERRORS, dependencies=[Depends(api_key)])
async def detokenize(body: DetokenizeRequest, request: Request) -> dict[str, str]:
    state = state_of(request)
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


def _created(record: Any) -> VectorCreated:
    return VectorCreated(
        id=record.id,
        version=record.version,
        sha256=record.sha256,
        hidden_size=record.hidden_size,
        layers=list(record.layers),
    )


@admin.post("/vectors", status_code=201, response_model=VectorCreated, dependencies=[Depends(admin_key)])
async def create_vector(body: VectorUpload, request: Request) -> VectorCreated:
    return _created(await state_of(request).admin.add_vector(body))


@admin.post("/vectors/import", status_code=201, response_model=VectorCreated, dependencies=[Depends(admin_key)])
async def import_vector(
    request: Request,
    id: Annotated[str, Form(description="Vector id to store the file under.")],
    file: Annotated[UploadFile, File(description="safetensors, GGUF control vector, or .npy")],
    format: Annotated[Literal["safetensors", "gguf", "npy"] | None, Form(description="Default: detected.")] = None,
    layer: Annotated[int | None, Form(description="The layer of a 1-D .npy array.")] = None,
    description: Annotated[str, Form(max_length=4096)] = "",
    defaults: Annotated[str | None, Form(description="JSON object: op, site, positions, strength, layers.")] = None,
) -> VectorCreated:
    """Import a vector file (multipart); llama.cpp's `direction.N` becomes layer N (the output of block N)."""
    try:
        parsed = VectorDefaultsBody.model_validate(json.loads(defaults)) if defaults else None
    except ValueError as exc:
        raise BadRequestError(f"defaults must be a JSON object of vector defaults: {exc}", param="defaults") from None
    upload = VectorImport(id=id, format=format, layer=layer, description=description, defaults=parsed)
    data = await file.read()
    return _created(await state_of(request).admin.import_vector(upload, data))


@admin.get("/vectors")
async def list_vectors(request: Request) -> dict[str, Any]:
    records = await state_of(request).admin.store.list_vectors()
    return {"object": "list", "data": [r.to_json() for r in records]}


@admin.get("/vectors/{vector_id}")
async def get_vector(vector_id: str, request: Request) -> dict[str, Any]:
    return await state_of(request).admin.vector_info(vector_id)


@admin.get("/vectors/{vector_id}/data")
async def get_vector_data(
    vector_id: str,
    request: Request,
    version: int | None = None,
    format: Literal["safetensors", "gguf", "npy"] = "safetensors",
) -> Response:
    """The vector as a file: safetensors (`layer.L`), GGUF control vector (`direction.L`) or .npy [layers, hidden]."""
    record, data = await state_of(request).admin.vector_data(vector_id, version, format)
    filename = f"{record.id}-v{record.version}.{format}"
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
