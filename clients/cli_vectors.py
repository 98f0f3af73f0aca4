"""`steerserve vectors extract`: run an extraction job on a server's model and wait for it."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

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
    method: Annotated[str, typer.Option(help="diffmean | pca.")] = "diffmean",
    layers: Annotated[str | None, typer.Option(help="Comma-separated layers to store (default: recommended).")] = None,
    samples: Annotated[int, typer.Option(help="Traces per problem.")] = 1,
    temperature: Annotated[float, typer.Option(help="Sampling temperature for generated traces.")] = 1.0,
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
    import httpx
    from rich.progress import BarColumn, Progress, TimeElapsedColumn

    from clients.ab.datasets import load_items

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
    elif problems == "demo":  # the extraction split of the toy: never the A/B evaluation problems
        from steering.models.arith import problems as arith_problems

        body["problems"] = [p.text for p in arith_problems(seed, limit or 300, "extract")]
    elif problems is not None:
        body["problems"] = [item.prompt for item in load_items(problems, problems_format, limit)]
    elif positive is not None and negative is not None:
        body["positive"], body["negative"] = _texts(positive), _texts(negative)
    else:
        raise typer.BadParameter("give --traces, --problems, or --positive and --negative")
    headers = {"Authorization": f"Bearer {admin_key}"} if admin_key else {}
    with httpx.Client(base_url=base_url, headers=headers, timeout=60) as client:
        response = client.post("/v1/steering/vectors/extract", json=body)
        if response.status_code >= 400:
            typer.echo(response.text, err=True)
            raise typer.Exit(1)
        job = response.json()
        if wait:
            with Progress(
                "[progress.description]{task.description}", BarColumn(), TimeElapsedColumn(), disable=as_json
            ) as bar:
                task = bar.add_task("queued", total=1.0)
                while job["status"] in ("queued", "running"):
                    time.sleep(1.0)
                    job = client.get(f"/v1/steering/jobs/{job['id']}").raise_for_status().json()
                    bar.update(task, description=job["stage"], completed=job["progress"])
    if as_json:
        typer.echo(json.dumps(job))
    else:
        typer.echo(json.dumps({k: job[k] for k in ("id", "status", "stage", "error")}, indent=2))
        if job.get("result"):
            result = job["result"]
            typer.echo(f"stored {result['vector']['id']} v{result['vector']['version']} on layers {result['layers']}")
            typer.echo(f"recommended layer {result['recommended_layer']}; counts {result['counts']}")
    if job["status"] == "failed":
        raise typer.Exit(1)
