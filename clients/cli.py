"""The `steerserve` command line."""

from __future__ import annotations

import typer

from clients.cli_ab import ab
from clients.cli_chat import chat
from clients.cli_models import models
from clients.cli_presets import presets
from clients.cli_vectors import vectors

app = typer.Typer(help="steerserve: per-request activation steering on vLLM.", no_args_is_help=True)
app.add_typer(vectors, name="vectors")
app.add_typer(presets, name="presets")
app.add_typer(ab, name="ab")
app.add_typer(models, name="models")
app.command("chat")(chat)


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
def serve(ctx: typer.Context) -> None:
    """Start vLLM's OpenAI-compatible server with steering (every `vllm serve` flag; `steerserve serve --help`)."""
    from server.launch import run

    run(list(ctx.args))


@app.command()
def version() -> None:
    """Print the steerserve version."""
    from steering import __version__

    typer.echo(__version__)


def main() -> None:
    """Every command: an error answer from the server is its own message on stderr and exit code 1, never a
    traceback (from steerserve's client or the openai SDK's)."""
    import httpx
    import openai

    from clients.client import SteerError

    try:
        app()
    except SteerError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(1) from None
    except openai.APIStatusError as exc:
        typer.echo(f"error: {exc.status_code} {exc.message}", err=True)
        raise SystemExit(1) from None
    except openai.APIConnectionError as exc:
        typer.echo(f"error: cannot reach the server: {exc}", err=True)
        raise SystemExit(1) from None
    except httpx.TransportError as exc:
        try:
            where = str(exc.request.url)
        except RuntimeError:  # no request attached
            where = "the server"
        typer.echo(f"error: cannot reach {where}: {exc}", err=True)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
