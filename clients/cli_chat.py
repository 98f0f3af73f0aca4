"""`steerserve chat`: a terminal chat whose steering strength can be changed between turns.

Type a message to send it; lines starting with `/` are commands:
  /strength 0.5   set the strength (0 turns steering off)      /vector ID   steer with another vector
  /compare        send the last message again, unsteered        /reset       forget the conversation
  /quit           leave
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer

from clients.cli_common import DEFAULT_URL, ApiKey, BaseUrl
from clients.openai_steering import steering_body


def _reply(client: Any, model: str, messages: list[dict[str, str]], extra: dict[str, Any], max_tokens: int) -> str:
    """Stream one answer to the terminal; print its tokens, time and reflection markers."""
    started = time.perf_counter()
    text: list[str] = []
    usage: Any = None
    steering: dict[str, Any] = {}
    stream = client.chat.completions.create(
        model=model,
        messages=messages,
        max_tokens=max_tokens,
        stream=True,
        stream_options={"include_usage": True},
        extra_body=extra or None,
    )
    for chunk in stream:
        if chunk.choices:
            delta = chunk.choices[0].delta
            reasoning = getattr(delta, "reasoning", None) or getattr(delta, "reasoning_content", None) or ""
            piece = reasoning + (delta.content or "")
            text.append(piece)
            typer.echo(piece, nl=False)
        if chunk.usage is not None:
            usage = chunk.usage
            steering = (chunk.model_extra or {}).get("steering") or {}
    elapsed = time.perf_counter() - started
    markers = (steering.get("reflection") or {}).get("markers", "?")
    tokens = usage.completion_tokens if usage is not None else "?"
    typer.secho(f"\n[{tokens} tokens, {elapsed:.2f} s, reflection markers {markers}]", dim=True)
    return "".join(text)


def chat(
    vector: Annotated[str | None, typer.Option(help="Vector to steer with (default: none until /vector).")] = None,
    strength: Annotated[float, typer.Option(help="Starting strength.")] = 0.0,
    model: Annotated[str | None, typer.Option(help="Model or preset (default: the server's first model).")] = None,
    system: Annotated[str | None, typer.Option(help="System prompt.")] = None,
    max_tokens: Annotated[int, typer.Option(help="Answer length cap.")] = 256,
    base_url: BaseUrl = DEFAULT_URL,
    api_key: ApiKey = None,
) -> None:
    """Chat in the terminal; `/strength X` changes the steering between turns (see /help)."""
    from openai import OpenAI

    client = OpenAI(base_url=base_url.rstrip("/") + "/v1", api_key=api_key or "none")
    model = model or client.models.list().data[0].id
    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    typer.secho(f"chatting with {model}; /help for commands", dim=True)
    last_user: str | None = None
    while True:
        try:
            line = input(f"{vector or '-'}@{strength:+g}> ").strip()
        except EOFError:
            break
        if not line:
            continue
        if line.startswith("/"):
            command, _, arg = line[1:].partition(" ")
            if command in ("quit", "exit"):
                break
            if command == "strength":
                strength = float(arg)
            elif command == "vector":
                vector = arg.strip() or None
            elif command == "reset":
                history, last_user = history[:1] if system else [], None
            elif command == "compare" and last_user is not None:
                typer.secho("unsteered:", dim=True)
                _reply(client, model, [*history[:-2], {"role": "user", "content": last_user}], {}, max_tokens)
            else:
                typer.echo(__doc__.split("\n\n", 1)[1] if __doc__ else "")
            continue
        history.append({"role": "user", "content": line})
        steered = vector is not None and strength != 0.0
        extra = steering_body({"vector": vector, "strength": strength}) if steered else {}
        answer = _reply(client, model, history, extra, max_tokens)
        history.append({"role": "assistant", "content": answer})
        last_user = line
