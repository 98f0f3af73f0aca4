"""What every `steerserve` client command shares: server options, the client, output as JSON or a table."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from pydantic import BaseModel

from clients.client import SteerClient, SteerError

BaseUrl = Annotated[str, typer.Option("--base-url", help="Server URL.", envvar="STEERSERVE_URL")]
ApiKey = Annotated[str | None, typer.Option("--api-key", help="API key.", envvar="STEERSERVE_API_KEY")]
AdminKey = Annotated[str | None, typer.Option("--admin-key", help="Admin key (writes).", envvar="STEERSERVE_ADMIN_KEY")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
DEFAULT_URL = "http://127.0.0.1:8000"


@contextmanager
def connect(base_url: str, api_key: str | None, admin_key: str | None) -> Iterator[SteerClient]:
    """A client whose API errors become a one-line message and exit code 1."""
    try:
        with SteerClient(base_url, api_key=api_key, admin_key=admin_key) as client:
            yield client
    except SteerError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    except OSError as exc:  # connection refused, DNS, ...
        typer.echo(f"error: cannot reach {base_url}: {exc}", err=True)
        raise typer.Exit(1) from None


def dump(value: Any) -> str:
    if isinstance(value, BaseModel):
        return value.model_dump_json()
    if isinstance(value, list):
        return json.dumps([v.model_dump(mode="json") if isinstance(v, BaseModel) else v for v in value])
    return json.dumps(value)


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    view = Table(title=title)
    for column in columns:
        view.add_column(column)
    for row in rows:
        view.add_row(*(str(cell) for cell in row))
    Console().print(view)
