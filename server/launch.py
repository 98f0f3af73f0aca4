"""Start the engine, open the registry and serve HTTP in one event loop."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

import uvicorn

from server.app import create_app
from server.settings import ServerSettings
from steering.store.base import VectorStore

logger = logging.getLogger("steerserve.server")


def resolve_model(settings: ServerSettings) -> str:
    """The model to serve: --model, or the demo model built offline under --data-dir on first start."""
    if settings.model:
        return settings.model
    from steering.models.tiny import TinyModelSpec, build_tiny_model

    path = build_tiny_model(TinyModelSpec(), Path(settings.data_dir) / "models")
    logger.info("no --model given: serving the tiny offline demo model at %s", path)
    return str(path)


def open_store(settings: ServerSettings, namespace: str) -> VectorStore:
    if settings.redis_url:
        from steering.store.redis_store import RedisStore

        return RedisStore(settings.redis_url, namespace)
    from steering.store.embedded import EmbeddedStore

    return EmbeddedStore(Path(settings.data_dir) / "registry.sqlite3", namespace)


def engine_settings(settings: ServerSettings, model: str, served: str) -> object:
    from steering.config import EngineSteeringConfig
    from steering.engine import EngineSettings
    from steering.spec import SteeringLimits

    return EngineSettings(
        model=model,
        served_model_name=served,
        steering=EngineSteeringConfig(
            max_configs=settings.max_steering_configs, limits=SteeringLimits(max_strength=settings.max_strength)
        ),
        dtype=settings.dtype,
        max_model_len=settings.max_model_len,
        enforce_eager=settings.enforce_eager,
        tensor_parallel_size=settings.tensor_parallel_size,
        pipeline_parallel_size=settings.pipeline_parallel_size,
        max_num_seqs=settings.max_num_seqs,
        enable_prefix_caching=settings.enable_prefix_caching,
        seed=settings.seed,
    )


async def serve(settings: ServerSettings) -> None:
    from steering.engine import SteeringEngine

    model = resolve_model(settings)
    served = settings.served_model_name or (settings.model or "steerserve-demo")
    engine = SteeringEngine.create(engine_settings(settings, model, served))  # type: ignore[arg-type]
    store = open_store(settings, settings.registry_namespace or served)
    app = create_app(settings.model_copy(update={"model": model}), engine, store, served)
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level=settings.log_level, timeout_graceful_shutdown=30
    )
    # uvicorn drains on SIGTERM, then re-raises it into the handler that was installed before it started; a no-op
    # there lets the engine shut down and the process exit 0 (what process supervisors expect).
    signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        await uvicorn.Server(config).serve()
    finally:
        engine.shutdown()


def run(settings: ServerSettings) -> None:
    """Serve on uvloop when it is installed (as vLLM's own server does), else on asyncio's default loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(settings))
        return
    uvloop.run(serve(settings))
