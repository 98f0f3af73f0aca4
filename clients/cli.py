"""The `steerserve` command line."""

from __future__ import annotations

import typer

from clients.cli_ab import ab
from clients.cli_chat import chat
from clients.cli_presets import presets
from clients.cli_vectors import vectors

app = typer.Typer(help="steerserve: per-request activation steering on vLLM.", no_args_is_help=True)
app.add_typer(vectors, name="vectors")
app.add_typer(presets, name="presets")
app.add_typer(ab, name="ab")
app.command("chat")(chat)


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
def serve(ctx: typer.Context) -> None:
    """Start the OpenAI-compatible steering server (flags: `steerserve serve --help`)."""
    from server.launch import run
    from server.settings import ServerSettings

    settings = ServerSettings(  # type: ignore[call-arg]
        _cli_parse_args=list(ctx.args),
        _cli_prog_name="steerserve serve",
        _cli_kebab_case=True,
        _cli_implicit_flags=True,
    )
    run(settings)


@app.command()
def version() -> None:
    """Print the steerserve version."""
    from steering import __version__

    typer.echo(__version__)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
