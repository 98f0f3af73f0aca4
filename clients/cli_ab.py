"""`steerserve ab run`: an A/B run of steering strengths (plus a random control) over a dataset."""

from __future__ import annotations

import asyncio
import json
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

ab = typer.Typer(help="A/B experiments of steering arms.", no_args_is_help=True)


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x.strip())


@ab.command("run")
def run_ab(
    vector: Annotated[str, typer.Option(help="Vector id whose strengths are compared.")] = "reflection",
    strengths: Annotated[str, typer.Option(help="Comma-separated strengths (0 = baseline, always included).")] = (
        "-1,0,1"
    ),
    random_strengths: Annotated[
        str, typer.Option(help="Strengths of the random equal-norm control direction ('' = none).")
    ] = "-1,1",
    random_control: Annotated[
        str,
        typer.Option(
            help="plain (a Gaussian direction), orthogonal (its component along the vector removed: no chance "
            "overlap, which matters in small models) or both."
        ),
    ] = "plain",
    dataset: Annotated[str, typer.Option(help="'demo' or a JSONL path.")] = "demo",
    format: Annotated[str, typer.Option(help="auto | jsonl | math500 | gsm8k.")] = "auto",
    limit: Annotated[int | None, typer.Option(help="Items to use (demo default: 1000).")] = None,
    samples: Annotated[int, typer.Option(help="Samples per item (k).")] = 1,
    temperature: Annotated[
        float | None, typer.Option(help="Sampling temperature (default: the model's, from its generation config).")
    ] = None,
    top_p: Annotated[float | None, typer.Option(help="Nucleus sampling (default: the model's).")] = None,
    max_tokens: Annotated[
        int | None,
        typer.Option(
            help="Completion cap (truncation is reported). Default: 512, or less where the served context minus "
            "the prompt leaves less."
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of sampling seeds and of the random control.")] = 0,
    concurrency: Annotated[int, typer.Option(help="Requests in flight.")] = 32,
    base_url: Annotated[str, typer.Option(help="Server URL.", envvar="STEERSERVE_URL")] = "http://127.0.0.1:8000",
    model: Annotated[str | None, typer.Option(help="Served model name (default: the server's first model).")] = None,
    api_key: Annotated[str | None, typer.Option(envvar="STEERSERVE_API_KEY")] = None,
    admin_key: Annotated[str | None, typer.Option(envvar="STEERSERVE_ADMIN_KEY", help="To upload the control.")] = None,
    term: Annotated[
        str | None,
        typer.Option(help='JSON of term fields for every steered arm, e.g. \'{"positions": {"tokens": ["\\n\\n"]}}\'.'),
    ] = None,
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("ab-report"),
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Run every arm on every item with common seeds; write report.md, results.jsonl, summary.json, PNGs."""
    from openai import OpenAI
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from clients.ab.datasets import load_items
    from clients.ab.report import write_report
    from clients.ab.runner import RunConfig, config_json, run

    if random_control not in ("plain", "orthogonal", "both"):
        raise typer.BadParameter("plain | orthogonal | both", param_hint="--random-control")
    items = load_items(dataset, format, limit)
    if model is None:
        with OpenAI(base_url=f"{base_url}/v1", api_key=admin_key or api_key or "none", timeout=30) as openai:
            model = openai.models.list().data[0].id
    config = RunConfig(
        base_url=base_url,
        model=str(model),
        vector=vector,
        strengths=_floats(strengths),
        random_strengths=_floats(random_strengths),
        samples=samples,
        temperature=temperature,
        top_p=top_p,
        max_tokens=max_tokens,
        seed=seed,
        concurrency=concurrency,
        api_key=api_key,
        admin_key=admin_key,
        term_fields=tuple(sorted(json.loads(term).items())) if term else (),
        random_controls=("plain", "orthogonal") if random_control == "both" else (random_control,),
    )
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        disable=as_json,
    ) as bar:
        task = bar.add_task("A/B requests", total=None)
        arms, rows = asyncio.run(run(config, items, lambda done, total: bar.update(task, completed=done, total=total)))
    command = "steerserve " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    summary = write_report(out, arms, rows, {**config_json(config), "dataset": dataset, "items": len(items)}, command)
    if as_json:
        typer.echo(json.dumps(summary))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"A/B: {vector} ({len(items)} items x {samples} samples)")
    for column in ("arm", "n", "accuracy", "Δacc", "mean tok", "Δtok %", "reflection", "trunc"):
        table.add_column(column)
    for a in summary["arms"]:
        table.add_row(
            a["name"],
            str(a["n"]),
            f"{a['accuracy']:.3f}",
            f"{a['delta_accuracy']:+.3f}",
            f"{a['mean_tokens']:.1f}",
            f"{a['delta_tokens_pct']:+.1f}",
            f"{a['reflection_rate']:.3f}",
            f"{a['truncation_rate']:.3f}",
        )
    Console().print(table)
    typer.echo(f"report: {out / 'report.md'}")
