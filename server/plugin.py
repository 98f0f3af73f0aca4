"""The `vllm.endpoint_plugins` entry point: steerserve's HTTP side on vLLM's own app.

`attach_router` puts steering on vLLM's generation routes (`server.generation`) and adds steerserve's own
routes (models with presets, the registry, experiments, extraction jobs, the playground); `init_state` builds
their state around vLLM's engine client. Engine-side behaviour is the paired general plugin's
(`steering.worker`); this side reaches the workers only through `steering.engine.SteeringEngine`, which
calls that plugin's RPC methods.
"""

from __future__ import annotations

import logging
import os
from argparse import Namespace
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from starlette.datastructures import State

from server import routes
from server.auth import KeyPolicy
from server.error_responses import install_error_handlers
from server.generation import steer_generation_routes
from server.metrics import ServerMetrics
from server.observe import follow_engine_outputs
from server.state import ServerState
from server.workflow_routes import workflow
from steering.config import ENDPOINT_PLUGIN_NAME
from steering.experiments import Experiments
from steering.extract.jobs import ExtractionJobs
from steering.models import install_model_assets
from steering.reflection import Reasoning
from steering.settings import SteerserveSettings
from steering.sources import SteeringSources
from steering.store.admin import Admin
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


class SteerserveEndpoints:
    """What vLLM's `build_app` / `init_app_state` call (see `vllm/plugins/endpoint_plugins/interface.py`)."""

    name = ENDPOINT_PLUGIN_NAME
    required_tasks = ("generate",)

    def attach_router(self, app: FastAPI) -> None:
        replaced = steer_generation_routes(app)
        logger.info("steerserve: steering on %s", ", ".join(replaced))
        app.include_router(routes.public)
        app.include_router(routes.v1)
        app.include_router(routes.admin)
        app.include_router(workflow)
        install_error_handlers(app)
        # the router's own 404 / 405 (Starlette's exception, which vLLM's handlers miss) in vLLM's error shape
        from starlette.exceptions import HTTPException as StarletteHTTPException
        from vllm.entrypoints.serve.exception_handling.handlers.http import http_exception_handler

        app.add_exception_handler(StarletteHTTPException, http_exception_handler)  # type: ignore[arg-type]

    async def init_state(self, engine_client: Any, state: State, args: Namespace) -> None:
        if engine_client is None:
            raise RuntimeError("steerserve needs an engine (vLLM's render-only server has none)")
        state.steerserve = await build_state(engine_client, state, args, SteerserveSettings())
        follow_engine_outputs(engine_client)  # first-token times of every request, streamed or not
        SERVED_ENGINES.append(engine_client)


SERVED_ENGINES: list[Any] = []  # the engine clients this process served (`steerserve serve` checks them on exit)


def engine_died(engine_client: Any) -> bool:
    """True when an engine core process died by itself (vLLM's process manager records the name of one that
    exited non-zero before a shutdown was asked for)."""
    resources = getattr(getattr(engine_client, "engine_core", None), "resources", None)
    manager = getattr(resources, "engine_manager", None)
    return bool(getattr(manager, "failed_proc_name", None))


def endpoint_plugin() -> SteerserveEndpoints:
    """The entry point (a zero-argument factory)."""
    return SteerserveEndpoints()


async def build_state(
    engine_client: Any,
    app_state: State,
    args: Namespace,
    settings: SteerserveSettings,
    store: VectorStore | None = None,
    engine: Any = None,
) -> ServerState:
    """`engine` and `store` are for tests (a fake engine, a store of their own); else both come from vLLM's
    engine client and the settings."""
    from steering.engine import SteeringEngine

    engine = engine if engine is not None else SteeringEngine.attach(engine_client)
    served = (args.served_model_name or [args.model])[0]
    store = store if store is not None else settings.open_store(settings.registry_namespace or served)
    await install_model_assets(store, Path(args.model), engine.shape.fingerprint())
    registry = CachedRegistry(store)
    await registry.start()
    experiments = Experiments(store)
    vllm_models = getattr(app_state, "openai_serving_models", None)
    sources = SteeringSources(
        registry,
        engine,
        served,
        experiments,
        adapters=lambda: tuple(getattr(vllm_models, "lora_requests", {}) or ()),
        budget=settings.budget_rule(),
    )
    metrics = shared_metrics()
    metrics.track_waiting(lambda: float(engine.admission.waiting))
    metrics.track_registry(lambda: registry.stats)
    admin = Admin(registry, sources, engine.shape)
    return ServerState(
        settings=settings,
        engine=engine,
        registry=registry,
        sources=sources,
        admin=admin,
        metrics=metrics,
        keys=KeyPolicy(list(args.api_key or [k for k in [os.environ.get("VLLM_API_KEY")] if k]), settings.admin_key),
        served_model=served,
        model_path=str(args.model),
        experiments=experiments,
        jobs=ExtractionJobs(
            engine, store, admin.fingerprint(), lambda vector_id: registry.invalidate("vector", vector_id)
        ),
        reasoning=Reasoning.of(getattr(args, "reasoning_parser", None), engine_client),
    )
