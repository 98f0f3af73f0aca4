"""steerserve's own routes on vLLM's app: models with presets, the registry, the playground. Thin: parse,
authorize, delegate to `Admin`; errors are mapped in `server.error_responses`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Form, Request, Response, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse

from server.error_responses import ErrorResponse
from server.state import state_of
from steering.errors import BadRequestError, ModelNotFoundError, PayloadTooLargeError
from steering.models import DEMO_NAME
from steering.store.admin import PresetBody, VectorCreated, VectorImport, VectorUpload
from steering.vectors import VectorDefaults

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 409, 413, 503)
}


async def api_key(request: Request) -> None:  # async: FastAPI runs sync dependencies in a thread pool
    state_of(request).keys.require_api(request)


async def admin_key(request: Request) -> None:
    state_of(request).keys.require_admin(request)


async def body_limit(request: Request) -> None:
    """Uploads over `max_vector_bytes` get 413 before their body is read."""
    length = request.headers.get("content-length", "")
    limit = state_of(request).settings.max_vector_bytes
    if length.isdigit() and int(length) > limit:
        raise PayloadTooLargeError(f"request body over {limit} bytes")


public = APIRouter()
v1 = APIRouter(prefix="/v1", dependencies=[Depends(api_key)], responses=ERRORS)
admin = APIRouter(prefix="/v1/steering", dependencies=[Depends(api_key), Depends(body_limit)], responses=ERRORS)
PLAYGROUND = Path(__file__).with_name("static") / "playground.html"


@public.get("/playground", response_class=HTMLResponse, include_in_schema=False)
async def playground() -> HTMLResponse:
    """The playground page: public (no key to load it); its API calls send the key the user types in."""
    return HTMLResponse(PLAYGROUND.read_text(encoding="utf-8"))


@v1.get("/models")
async def models(request: Request) -> dict[str, Any]:
    """vLLM's model list (the base model, LoRA adapters) followed by every preset and experiment."""
    state = state_of(request)
    listed = await request.app.state.openai_serving_models.show_available_models()
    data = listed.model_dump()["data"]
    for card in data:
        card["max_model_len"] = state.engine.max_model_len
        if card["id"] == DEMO_NAME:
            card["description"] = "toy demo reasoning model: chain arithmetic only, not a real reasoner"
    return {"object": "list", "data": data + await state.steered_models()}


@v1.get("/models/{model_id:path}")
async def model(model_id: str, request: Request) -> dict[str, Any]:
    """One model of `GET /v1/models`: the base model, a LoRA adapter, a preset or an experiment."""
    for card in (await models(request))["data"]:
        if card["id"] == model_id:
            return card  # type: ignore[no-any-return]
    raise ModelNotFoundError(f"model {model_id!r} does not exist", param="model")


@admin.post("/vectors", status_code=201, response_model=VectorCreated, dependencies=[Depends(admin_key)])
async def create_vector(body: VectorUpload, request: Request) -> VectorCreated:
    return VectorCreated.of(await state_of(request).admin.add_vector(body))


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
        parsed = VectorDefaults.model_validate(json.loads(defaults)) if defaults else None
    except ValueError as exc:
        raise BadRequestError(f"defaults must be a JSON object of vector defaults: {exc}", param="defaults") from None
    upload = VectorImport(id=id, format=format, layer=layer, description=description, defaults=parsed)
    data = await file.read()
    return VectorCreated.of(await state_of(request).admin.import_vector(upload, data))


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
