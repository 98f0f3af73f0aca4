"""`steerserve presets`: named steering that chat apps pick as a model."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from clients.cli_common import DEFAULT_URL, AdminKey, ApiKey, AsJson, BaseUrl, connect, dump, table

presets = typer.Typer(
    help="Presets: named steering, listed in /v1/models so chat apps can pick them.", no_args_is_help=True
)


def parse_terms(terms: list[str], steering: str | None) -> list[dict[str, Any]]:
    """`--term reflection:0.5` (vector[@version][:strength]) or `--steering '[{...}]'` (full JSON terms)."""
    if steering is not None:
        parsed = json.loads(steering)
        if not isinstance(parsed, list):
            raise typer.BadParameter("--steering takes a JSON list of terms")
        return parsed
    out: list[dict[str, Any]] = []
    for item in terms:
        ref, _, strength = item.partition(":")
        out.append({"vector": ref, **({"strength": float(strength)} if strength else {})})
    if not out:
        raise typer.BadParameter("give --term or --steering")
    return out


@presets.command("list")
def list_presets(
    base_url: BaseUrl = DEFAULT_URL, api_key: ApiKey = None, admin_key: AdminKey = None, as_json: AsJson = False
) -> None:
    """Every preset and its terms."""
    with connect(base_url, api_key, admin_key) as client:
        found = client.list_presets()
    if as_json:
        typer.echo(dump(found))
        return
    rows = [
        (
            p.name,
            ", ".join(f"{t.vector}:{t.strength if t.strength is not None else 'default'}" for t in p.steering),
            p.description[:60],
        )
        for p in found
    ]
    table("presets", ("name", "steering", "description"), rows)


@presets.command("set")
def set_preset(
    name: Annotated[str, typer.Argument(help="Preset name (becomes a model name).")],
    term: Annotated[list[str] | None, typer.Option("--term", help="vector[@version][:strength]; repeatable.")] = None,
    steering: Annotated[str | None, typer.Option(help="JSON list of full terms (layers, op, site, positions).")] = None,
    description: Annotated[str, typer.Option(help="Shown in /v1/models and the playground.")] = "",
    base_url: BaseUrl = DEFAULT_URL,
    api_key: ApiKey = None,
    admin_key: AdminKey = None,
    as_json: AsJson = False,
) -> None:
    """Create or replace a preset (every vector, layer and limit is checked by the server now)."""
    terms = parse_terms(term or [], steering)
    with connect(base_url, api_key, admin_key) as client:
        preset = client.set_preset(name, terms, description)
    typer.echo(dump(preset) if as_json else f"preset {preset.name}: {len(preset.steering)} term(s)")


@presets.command("delete")
def delete_preset(
    name: Annotated[str, typer.Argument(help="Preset name.")],
    base_url: BaseUrl = DEFAULT_URL,
    api_key: ApiKey = None,
    admin_key: AdminKey = None,
) -> None:
    """Delete a preset."""
    with connect(base_url, api_key, admin_key) as client:
        client.delete_preset(name)
    typer.echo(f"deleted {name}", err=True)
