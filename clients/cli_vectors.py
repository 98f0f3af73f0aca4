"""`steerserve vectors`: list, show, push, pull, delete, import, export, and extract (a job on the server)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from clients.ab.datasets import demo_items, load_items
from clients.cli_common import DEFAULT_URL, AdminKey, ApiKey, AsJson, BaseUrl, connect, dump, table
from steering.errors import InvalidSteeringError
from steering.vectors import parse_vector_ref

vectors = typer.Typer(help="Steering vectors.", no_args_is_help=True)


def _lines(path: Path) -> list[Any]:
    rows: list[Any] = []
    for line in path.read_text().splitlines():
        if line.strip():
            rows.append(json.loads(line) if line.lstrip().startswith(("{", '"')) else line)
    return rows


def _texts(path: Path) -> list[str]:
    return [r["text"] if isinstance(r, dict) else str(r) for r in _lines(path)]


@vectors.command("extract")
def extract(
    vector_id: Annotated[str, typer.Option("--id", help="Vector id to store the result under.")],
    traces: Annotated[Path | None, typer.Option(help="JSONL of {prompt, completion} reasoning traces.")] = None,
    problems: Annotated[
        str | None, typer.Option(help="'demo' or a JSONL dataset: the served model writes the traces.")
    ] = None,
    problems_format: Annotated[str, typer.Option(help="auto | jsonl | math500 | gsm8k.")] = "auto",
    limit: Annotated[int | None, typer.Option(help="Problems to use.")] = None,
    positive: Annotated[Path | None, typer.Option(help="Texts with the behaviour (lines or JSONL).")] = None,
    negative: Annotated[Path | None, typer.Option(help="Texts without it (lines or JSONL).")] = None,
    method: Annotated[str, typer.Option(help="diffmean | pca | probe (a condition's gate).")] = "diffmean",
    layers: Annotated[str | None, typer.Option(help="Comma-separated layers to store (default: recommended).")] = None,
    samples: Annotated[int, typer.Option(help="Traces per problem.")] = 1,
    temperature: Annotated[
        float | None, typer.Option(help="Sampling temperature for generated traces (default: the model's).")
    ] = None,
    max_tokens: Annotated[int, typer.Option(help="Length cap of generated traces.")] = 512,
    op: Annotated[str, typer.Option(help="Default op stored with the vector.")] = "project",
    site: Annotated[str, typer.Option(help="Default site stored with the vector.")] = "mlp",
    seed: Annotated[int, typer.Option()] = 0,
    base_url: Annotated[str, typer.Option(envvar="STEERSERVE_URL")] = "http://127.0.0.1:8000",
    admin_key: Annotated[str | None, typer.Option(envvar="STEERSERVE_ADMIN_KEY")] = None,
    wait: Annotated[bool, typer.Option(help="Wait for the job and show progress.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the job as JSON.")] = False,
) -> None:
    """Extract a vector (difference of means or PCA) from the served model's activations; prints the job."""
    from rich.progress import BarColumn, Progress, TimeElapsedColumn

    body: dict[str, Any] = {
        "id": vector_id,
        "method": method,
        "samples_per_problem": samples,
        "temperature": temperature,
        "max_tokens": max_tokens,
        "seed": seed,
        "defaults": {"op": op, "site": site, "strength": 1.0, "positions": "all"},
    }
    if layers:
        body["layers"] = [int(x) for x in layers.split(",")]
    if traces is not None:
        body["traces"] = _lines(traces)
    elif problems == "demo":  # the extraction split of the demo: never the A/B evaluation problems
        body["problems"] = [item.prompt for item in demo_items(limit or 300, "extract", seed)]
    elif problems is not None:
        body["problems"] = [item.prompt for item in load_items(problems, problems_format, limit)]
    elif positive is not None and negative is not None:
        body["positive"], body["negative"] = _texts(positive), _texts(negative)
    else:
        raise typer.BadParameter("give --traces, --problems, or --positive and --negative")
    with connect(base_url, None, admin_key) as client:
        job = client.extract(body)
        if wait:
            with Progress(
                "[progress.description]{task.description}", BarColumn(), TimeElapsedColumn(), disable=as_json
            ) as bar:
                task = bar.add_task("queued", total=1.0)
                job = client.wait_job(
                    job.id, on_progress=lambda j: bar.update(task, description=j.stage, completed=j.progress)
                )
    if as_json:
        typer.echo(job.model_dump_json())
    else:
        typer.echo(json.dumps(job.model_dump(include={"id", "status", "stage", "error"}), indent=2))
        if job.result:
            result = job.result
            typer.echo(f"stored {result['vector']['id']} v{result['vector']['version']} on layers {result['layers']}")
            typer.echo(f"recommended layer {result['recommended_layer']}; counts {result['counts']}")
    if job.status == "failed":
        raise typer.Exit(1)


# ---- registry ---------------------------------------------------------------------------------------------
@vectors.command("list")
def list_vectors(
    base_url: BaseUrl = DEFAULT_URL, api_key: ApiKey = None, admin_key: AdminKey = None, as_json: AsJson = False
) -> None:
    """The stored vectors (latest version of each)."""
    with connect(base_url, api_key, admin_key) as client:
        found = client.list_vectors()
    if as_json:
        typer.echo(dump(found))
        return
    rows = [(v.id, v.version, ",".join(map(str, v.layers)), v.hidden_size, v.description[:60]) for v in found]
    table("vectors", ("id", "version", "layers", "hidden", "description"), rows)


@vectors.command("show")
def show_vector(
    vector_id: Annotated[str, typer.Argument(help="Vector id.")],
    base_url: BaseUrl = DEFAULT_URL,
    api_key: ApiKey = None,
    admin_key: AdminKey = None,
    as_json: AsJson = False,
) -> None:
    """One vector: defaults, provenance and every version."""
    with connect(base_url, api_key, admin_key) as client:
        info = client.get_vector(vector_id)
    if as_json:
        typer.echo(dump(info))
        return
    typer.echo(f"{info.id} v{info.version}  sha256 {info.sha256[:16]}  hidden {info.hidden_size}  layers {info.layers}")
    typer.echo(f"defaults: {info.defaults.model_dump()}")
    if info.description:
        typer.echo(info.description)
    rows = [(v.version, v.sha256[:16], ",".join(map(str, v.layers))) for v in info.versions]
    table("versions", ("version", "sha256", "layers"), rows)


@vectors.command("pull")
def pull_vector(
    vector_id: Annotated[str, typer.Argument(help="Vector id[@version].")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Bundle to write (JSON).")],
    base_url: BaseUrl = DEFAULT_URL,
    api_key: ApiKey = None,
    admin_key: AdminKey = None,
) -> None:
    """Save a vector with its defaults, description and provenance as a bundle that `push` stores again."""
    name, pinned = _vector_ref(vector_id)
    with connect(base_url, api_key, admin_key) as client:
        info = client.get_vector(name)
        if pinned is not None:
            chosen = [v for v in info.versions if v.version == pinned]
            if not chosen:
                raise typer.BadParameter(f"{name} has no version {pinned}", param_hint="VECTOR_ID")
            info = chosen[0]
        data = client.export_vector(name, "safetensors", info.version)
    layers = {str(k): base64.b64encode(v.astype("<f4").tobytes()).decode() for k, v in _tensor_layers(data).items()}
    source = {"url": base_url, "version": info.version, "sha256": info.sha256}
    bundle = {
        "id": info.id,
        "layers": layers,
        "defaults": info.defaults.model_dump(),
        "description": info.description,
        "provenance": {**info.provenance, "pulled_from": source},
    }
    out.write_text(json.dumps(bundle, indent=1) + "\n")
    typer.echo(f"{info.id} v{info.version} -> {out}", err=True)


@vectors.command("push")
def push_vector(
    bundle: Annotated[Path, typer.Argument(help="A bundle written by `pull` (the body of POST /v1/steering/vectors).")],
    vector_id: Annotated[str | None, typer.Option("--id", help="Store under another id.")] = None,
    base_url: BaseUrl = DEFAULT_URL,
    api_key: ApiKey = None,
    admin_key: AdminKey = None,
    as_json: AsJson = False,
) -> None:
    """Store a bundle as a new version (on this server or another one)."""
    body = json.loads(bundle.read_text())
    raw = {int(k): np.frombuffer(base64.b64decode(v), dtype="<f4") for k, v in body["layers"].items()}
    with connect(base_url, api_key, admin_key) as client:
        created = client.push_vector(
            vector_id or body["id"], raw, body.get("defaults"), body.get("description", ""), body.get("provenance")
        )
    typer.echo(dump(created) if as_json else f"stored {created.id} v{created.version} (sha256 {created.sha256[:16]})")


@vectors.command("import")
def import_vector(
    file: Annotated[Path, typer.Argument(help="safetensors, GGUF control vector (llama.cpp/repeng) or .npy.")],
    vector_id: Annotated[str, typer.Option("--id", help="Vector id to store it under.")],
    fmt: Annotated[str | None, typer.Option("--format", help="safetensors | gguf | npy (default: detected).")] = None,
    layer: Annotated[int | None, typer.Option(help="The layer of a 1-D .npy array.")] = None,
    defaults: Annotated[str | None, typer.Option(help="JSON: op, site, positions, strength, layers.")] = None,
    base_url: BaseUrl = DEFAULT_URL,
    api_key: ApiKey = None,
    admin_key: AdminKey = None,
    as_json: AsJson = False,
) -> None:
    """Import a vector file; GGUF `direction.N` becomes layer N (the output of decoder block N)."""
    parsed = json.loads(defaults) if defaults else None
    with connect(base_url, api_key, admin_key) as client:
        created = client.import_vector(vector_id, file, fmt, layer, parsed)
    typer.echo(dump(created) if as_json else f"stored {created.id} v{created.version} on layers {created.layers}")


@vectors.command("export")
def export_vector(
    vector_id: Annotated[str, typer.Argument(help="Vector id[@version].")],
    out: Annotated[Path, typer.Option("-o", "--out", help="File to write.")],
    fmt: Annotated[str, typer.Option("--format", help="safetensors | gguf | npy.")] = "safetensors",
    base_url: BaseUrl = DEFAULT_URL,
    api_key: ApiKey = None,
    admin_key: AdminKey = None,
) -> None:
    """Write a vector as safetensors, a GGUF control vector (for llama.cpp: --control-vector) or .npy."""
    name, version = _vector_ref(vector_id)
    with connect(base_url, api_key, admin_key) as client:
        data = client.export_vector(name, fmt, version)
    out.write_bytes(data)
    typer.echo(f"{vector_id} -> {out} ({len(data)} bytes, {fmt})", err=True)


@vectors.command("delete")
def delete_vector(
    vector_id: Annotated[str, typer.Argument(help="Vector id (every version).")],
    base_url: BaseUrl = DEFAULT_URL,
    api_key: ApiKey = None,
    admin_key: AdminKey = None,
) -> None:
    """Delete a vector (refused while requests in flight use it)."""
    with connect(base_url, api_key, admin_key) as client:
        client.delete_vector(vector_id)
    typer.echo(f"deleted {vector_id}", err=True)


def _vector_ref(ref: str) -> tuple[str, int | None]:
    try:
        return parse_vector_ref(ref)
    except InvalidSteeringError as exc:
        raise typer.BadParameter(str(exc), param_hint="VECTOR_ID") from None


def _tensor_layers(data: bytes) -> dict[int, np.ndarray]:
    from safetensors.numpy import load

    return {int(name.split(".")[1]): array for name, array in load(data).items()}
