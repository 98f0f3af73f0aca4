"""The FastAPI application: wiring, middleware (request ids, body limits, CORS) and lifespan."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.middleware.cors import CORSMiddleware

from server import routes
from server.admin import Admin
from server.auth import KeyPolicy
from server.errors import PayloadTooLargeError, error_response, install_error_handlers
from server.metrics import ServerMetrics
from server.serving import OpenAIServing
from server.settings import ServerSettings
from server.state import ServerState
from server.steering_sources import SteeringSources
from steering import __version__
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


def create_app(settings: ServerSettings, engine: Any, store: VectorStore, served_model: str) -> FastAPI:
    """An app around a started engine and an opened store; both are closed when the app shuts down."""
    registry = CachedRegistry(store)
    sources = SteeringSources(registry, engine, served_model)
    metrics = shared_metrics()
    metrics.track_waiting(lambda: float(engine.admission.waiting))
    state = ServerState(
        settings=settings,
        engine=engine,
        registry=registry,
        serving=OpenAIServing(engine, sources, metrics, served_model, settings.max_queued_requests),
        admin=Admin(registry, sources, engine.shape),
        metrics=metrics,
        keys=KeyPolicy(settings.api_key, settings.admin_key),
        served_model=served_model,
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
            expose_headers=["X-Request-Id", "X-Steering-Config"],
        )

    @app.middleware("http")
    async def request_context(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        rid = request.headers.get("x-request-id") or uuid.uuid4().hex
        request.state.request_id = "".join(c for c in rid if c.isalnum() or c in "-_.")[:128] or uuid.uuid4().hex
        length = request.headers.get("content-length")
        response: Response
        if length is not None and length.isdigit() and int(length) > settings.max_vector_bytes:
            response = error_response(PayloadTooLargeError(f"request body over {settings.max_vector_bytes} bytes"))
        else:
            response = await call_next(request)
        response.headers["X-Request-Id"] = request.state.request_id
        return response

    app.include_router(routes.public)
    app.include_router(routes.v1)
    app.include_router(routes.admin)
    return app
