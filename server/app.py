"""The FastAPI application: wiring, middleware (request ids, body limits, CORS) and lifespan."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server import routes
from server.admin import Admin
from server.auth import KeyPolicy
from server.errors import PayloadTooLargeError, error_response, install_error_handlers, openapi_with_our_errors
from server.experiments import Experiments
from server.metrics import ServerMetrics
from server.reasoning import ReasoningMarkers
from server.serving_chat import ChatServing
from server.settings import ServerSettings
from server.state import ServerState
from server.steering_sources import SteeringSources
from server.workflow_routes import workflow
from steering import __version__
from steering.extract.jobs import ExtractionJobs
from steering.store.base import VectorStore
from steering.store.cache import CachedRegistry

logger = logging.getLogger("steerserve.server")
_METRICS: ServerMetrics | None = None


def shared_metrics() -> ServerMetrics:
    """One set of families per process (prometheus-client refuses duplicates in its default registry)."""
    global _METRICS
    if _METRICS is None:
        _METRICS = ServerMetrics()
    return _METRICS


class RequestContextMiddleware:
    """Pure ASGI (no per-chunk task hop for streams): X-Request-Id echoed or generated; oversized bodies -> 413."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        asked = headers.get(b"x-request-id", b"").decode("latin-1")
        rid = "".join(c for c in asked if c.isalnum() or c in "-_.")[:128] or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        stamp = (b"x-request-id", rid.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), stamp]
            await send(message)

        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_body_bytes:
            response = error_response(PayloadTooLargeError(f"request body over {self.max_body_bytes} bytes"))
            await response(scope, receive, send_with_id)
            return
        await self.app(scope, receive, send_with_id)


def reasoning_markers(settings: ServerSettings, tokenizer: Any) -> ReasoningMarkers | None:
    """The thinking markers to split on: "auto" turns them on when the end marker is one token of the vocab."""
    if settings.reasoning == "off":
        return None
    markers = ReasoningMarkers(settings.reasoning_start, settings.reasoning_end)
    if settings.reasoning == "on":
        return markers
    return markers if len(tokenizer.encode(markers.end, add_special_tokens=False)) == 1 else None


def create_app(settings: ServerSettings, engine: Any, store: VectorStore, served_model: str) -> FastAPI:
    """An app around a started engine and an opened store; both are closed when the app shuts down."""
    registry = CachedRegistry(store)
    experiments = Experiments(store)
    sources = SteeringSources(registry, engine, served_model, experiments)
    metrics = shared_metrics()
    metrics.track_waiting(lambda: float(engine.admission.waiting))
    admin = Admin(registry, sources, engine.shape)
    markers = reasoning_markers(settings, engine.tokenizer)
    state = ServerState(
        settings=settings,
        engine=engine,
        registry=registry,
        serving=ChatServing(engine, sources, metrics, served_model, settings.max_queued_requests, markers, experiments),
        admin=admin,
        metrics=metrics,
        keys=KeyPolicy(settings.api_key, settings.admin_key),
        served_model=served_model,
        experiments=experiments,
        jobs=ExtractionJobs(
            engine, store, admin.fingerprint(), lambda vector_id: registry.invalidate("vector", vector_id)
        ),
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await registry.start()
        try:
            yield
        finally:
            await store.close()

    app = FastAPI(title="steerserve", version=__version__, lifespan=lifespan)
    app.state.steerserve = state
    install_error_handlers(app)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["X-Request-Id", "X-Steering-Config", "X-Steering-Arm"],
        )

    app.add_middleware(RequestContextMiddleware, max_body_bytes=settings.max_vector_bytes)
    app.include_router(routes.public)
    app.include_router(routes.v1)
    app.include_router(routes.admin)
    app.include_router(workflow)
    app.openapi = openapi_with_our_errors(app)  # type: ignore[method-assign]
    return app
