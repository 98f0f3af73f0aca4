"""Steering on vLLM's own generation routes.

For each of `POST /v1/chat/completions`, `/v1/completions`, `/v1/responses` and `/v1/messages` the endpoint
plugin registers a route that replaces vLLM's (same path and method) and wraps vLLM's own endpoint function:

1. resolve the request's steering (body `steering`, a preset as `model`, `X-Steering`, an experiment) in this
   process, against the registry; any problem is a 4xx in that API's own error shape and nothing reaches the
   engine;
2. hand it over as vLLM's own request fields: `vllm_xargs["steerserve"]` (→ `SamplingParams.extra_args`) and
   `cache_salt` (the config hash), with `model` set to the base model when a preset or experiment named it;
3. hold the config's admission and its vectors for the request's whole life (the stream's, when streamed);
4. call vLLM's endpoint (tools, reasoning parsers, structured outputs, LoRA, cancellation: all vLLM's);
5. add the `steering` object (terms, versions, hash, preset, arm, reflection markers) and the
   `X-Steering-Config` / `X-Steering-Arm` headers to what it returns, streamed or not.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.routing import APIRoute

from server.error_responses import error_parts
from server.observe import CURRENT, Observation
from server.state import state_of
from steering.errors import BadRequestError, SteeringNotAppliedError
from steering.sources import HEADER, RequestSteering, SteeringFields

GENERATION_ROUTES = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/responses": "responses",
    "/v1/messages": "messages",
}
Endpoint = Callable[..., Awaitable[Any]]


def steer_generation_routes(app: FastAPI) -> list[str]:
    """Register a steered route over each of vLLM's generation routes present on `app`; returns their paths."""
    replaced = []
    routes = app.router.routes
    for index, route in enumerate(list(routes)):
        if not (isinstance(route, APIRoute) and route.path in GENERATION_ROUTES and "POST" in route.methods):
            continue
        kind = GENERATION_ROUTES[route.path]
        body_model = route.dependant.body_params[0].field_info.annotation  # vLLM's own request model, resolved
        steered = APIRoute(
            route.path,
            _steered_endpoint(route.endpoint, body_model, kind),
            methods=["POST"],
            dependencies=list(route.dependencies),
            responses=dict(route.responses),
            summary=route.summary,
            description=(route.description or "") + "\n\nSteered by steerserve: `steering`, a preset as `model`, "
            "`X-Steering`, or an experiment.",
            name=route.name,
        )
        routes[index] = steered  # in vLLM's place (other methods on the path stay vLLM's)
        replaced.append(route.path)
    return replaced


def _steered_endpoint(original: Endpoint, body_model: Any, kind: str) -> Endpoint:
    async def endpoint(request: Any, raw_request: Request) -> Response:
        return await handle(kind, original, request, raw_request)

    endpoint.__annotations__ = {"request": body_model, "raw_request": Request, "return": Response}
    endpoint.__name__ = getattr(original, "__name__", "endpoint")
    endpoint.__doc__ = original.__doc__
    return endpoint


async def _our_fields(request: Any, raw_request: Request, kind: str, max_model_len: int) -> SteeringFields:
    """`steering`, `experiment`, `reasoning_budget` from the body as sent (vLLM's models drop or only warn
    about unknown fields), validated."""
    extra = getattr(request, "model_extra", None)
    for name in SteeringFields.model_fields:
        if extra is not None:
            extra.pop(name, None)
    fields = SteeringFields.of(await raw_request.json())  # Starlette keeps the body FastAPI already read
    budget = fields.reasoning_budget
    if budget is not None and kind != "chat":
        raise BadRequestError("reasoning_budget is a chat completions field", param="reasoning_budget")
    if budget is not None and budget > max_model_len:
        raise BadRequestError(f"reasoning_budget must be at most {max_model_len}", param="reasoning_budget")
    return fields


def api_error_body(kind: str, exc: Exception) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Our error in the route's own shape: vLLM's `ErrorResponse` (OpenAI's fields, `code` the HTTP status, as
    the route's schema declares), or Anthropic's `{"type": "error", "error": {...}}` for /v1/messages."""
    status, body, headers = error_parts(exc)
    error = body["error"]
    if kind == "messages":
        return status, {"type": "error", "error": {"type": error["type"], "message": error["message"]}}, headers
    return status, {"error": {**error, "code": status}}, headers


def api_error(kind: str, exc: Exception) -> JSONResponse:
    status, body, headers = api_error_body(kind, exc)
    return JSONResponse(body, status_code=status, headers=headers)


async def handle(kind: str, original: Endpoint, request: Any, raw_request: Request) -> Response:
    state = state_of(raw_request)
    started = time.perf_counter()
    asked = getattr(request, "model", None) or state.served_model
    stack = contextlib.AsyncExitStack()
    try:
        fields = await _our_fields(request, raw_request, kind, int(state.engine.max_model_len))
        budget = fields.reasoning_budget
        user = getattr(request, "user", None)
        chosen = await state.sources.for_request(
            asked,
            fields.steering,
            raw_request.headers.get(HEADER),
            fields.experiment,
            user if isinstance(user, str) else None,
            budget,
        )
        backstop = state.sources.budget.backstop_tokens(budget) if budget is not None else None
        if backstop is not None and getattr(request, "thinking_token_budget", None) is None:
            request.thinking_token_budget = backstop  # vLLM's hard stop behind the schedule
        if not state.sources.served_by_vllm(asked):
            request.model = state.served_model  # a preset or an experiment: vLLM serves its base model
        admitted = await stack.enter_async_context(state.engine.steered(chosen.spec if chosen.steered else None))
        if admitted is not None and chosen.spec is not None:
            request.vllm_xargs = {**(request.vllm_xargs or {}), **admitted.fields}
            request.cache_salt = chosen.spec.cache_salt(request.cache_salt)
    except Exception as exc:  # noqa: BLE001 - every failure before the engine is this API's own error response
        await stack.aclose()
        return api_error(kind, exc)
    observation = Observation(state, chosen, kind, started, request)
    CURRENT.set(observation)  # the engine outputs vLLM's handler reads, now or while it streams, report to it
    try:
        response = await original(request=request, raw_request=raw_request)
    except BaseException:
        await stack.aclose()
        observation.finish("error")
        raise
    headers = _headers(chosen)
    if isinstance(response, StreamingResponse):
        response.body_iterator = _stream(kind, response.body_iterator, observation, asked, stack, admitted)
        response.headers.update(headers)
        return response
    try:
        if getattr(response, "status_code", 500) < 400:
            await state.engine.verify(admitted)
    except SteeringNotAppliedError as exc:
        observation.finish("not_steered")
        state.metrics.not_steered.inc()
        return api_error(kind, exc)
    finally:
        await stack.aclose()
    return _decorate(response, observation, asked, headers)


def _headers(chosen: RequestSteering) -> dict[str, str]:
    headers = {"X-Steering-Config": chosen.header_value}
    if chosen.experiment and chosen.arm:
        headers["X-Steering-Arm"] = chosen.arm
    return headers


def _rename(served: str, asked: str) -> tuple[str, str] | None:
    """A preset or experiment named as the model is echoed back: `"model":"<base>"` in vLLM's compact JSON
    becomes `"model":"<asked>"` (a string replace per streamed chunk, no parse)."""
    if asked == served:
        return None
    return (
        '"model":' + json.dumps(served, ensure_ascii=False),
        '"model":' + json.dumps(asked, ensure_ascii=False),
    )


def _decorate(response: Any, observation: Observation, asked: str, headers: dict[str, str]) -> Response:
    if not isinstance(response, JSONResponse) or response.status_code >= 400:
        observation.finish("error")
        if isinstance(response, Response):
            response.headers.update(headers)
        return response  # type: ignore[no-any-return]
    body = json.loads(bytes(response.body))
    body["steering"] = observation.finish("success")
    if "model" in body:
        body["model"] = asked
    kept = {k: v for k, v in response.headers.items() if k.lower() not in ("content-length", "content-type")}
    return JSONResponse(body, status_code=response.status_code, headers=kept | headers)


async def _stream(
    kind: str,
    chunks: AsyncIterable[Any],
    observation: Observation,
    asked: str,
    stack: contextlib.AsyncExitStack,
    admitted: Any,
) -> AsyncIterator[str]:
    """vLLM's SSE stream passed through (what it generated is read from the engine outputs, not from here); the
    `steering` object rides on the last event (chat/completions: an extra chunk with no choices before
    `[DONE]`; responses: `response.completed`; messages: `message_delta`). A request a worker could not steer
    ends with an error event instead."""
    state = observation.state
    rename = _rename(state.served_model, asked)
    status = "aborted"
    try:
        async for chunk in chunks:
            text = chunk.decode() if isinstance(chunk, bytes) else str(chunk)
            if rename is not None:
                text = text.replace(*rename)
            if _is_last(kind, text):
                if admitted is not None:
                    try:
                        await state.engine.verify(admitted)
                    except SteeringNotAppliedError as exc:
                        state.metrics.not_steered.inc()
                        observation.finish("not_steered")
                        yield _error_event(kind, exc)
                        return
                status = "success"
                text = _with_steering(kind, text, observation.finish("success"), asked)
            yield text
    finally:
        await stack.aclose()
        observation.finish(status)


def _is_last(kind: str, text: str) -> bool:
    """The event the `steering` object rides on (vLLM yields one event per chunk)."""
    if kind in ("chat", "completions"):
        return text.endswith("data: [DONE]\n\n")
    return text.startswith("event: response.completed" if kind == "responses" else "event: message_delta")


def _with_steering(kind: str, text: str, steering: dict[str, Any], asked: str) -> str:
    if kind in ("chat", "completions"):
        obj = "chat.completion.chunk" if kind == "chat" else "text_completion.chunk"
        last = {"object": obj, "model": asked, "choices": [], "steering": steering}
        return text[: -len("data: [DONE]\n\n")] + f"data: {json.dumps(last)}\n\ndata: [DONE]\n\n"
    head, _, payload = text.rstrip("\n").partition("\ndata: ")
    data = json.loads(payload)
    (data["response"] if kind == "responses" else data)["steering"] = steering
    return f"{head}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _error_event(kind: str, exc: Exception) -> str:
    _, body, _ = api_error_body(kind, exc)
    if kind == "messages":
        return f"event: error\ndata: {json.dumps(body)}\n\n"
    return f"data: {json.dumps(body)}\n\ndata: [DONE]\n\n"
