"""Steering with the official `openai` client: no re-implementation of completions, two small helpers.

from openai import OpenAI
from clients.openai_steering import steering_body, with_steering

client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="...")
# every request of this copy carries the terms (the X-Steering header: vector[@version][:strength])
down = with_steering(client, {"vector": "reflection", "strength": -1})
down.chat.completions.create(model="steerserve-demo", messages=[...])
# full terms (layers, op, site, positions) or an experiment go in the body
client.completions.create(model="steerserve-demo", prompt="...",
                          extra_body=steering_body({"vector": "reflection", "strength": 0.5, "layers": [3]}))
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from steering.spec import SteeringTerm

Client = TypeVar("Client")
_HEADER_FIELDS = {"vector", "strength"}


def _term(term: SteeringTerm | Mapping[str, Any]) -> SteeringTerm:
    return SteeringTerm.model_validate(term)


def steering_body(*terms: SteeringTerm | Mapping[str, Any], experiment: str | None = None) -> dict[str, Any]:
    """The `extra_body` that steers one request: `{"steering": [...]}` and/or `{"experiment": name}`."""
    body: dict[str, Any] = {}
    if terms:
        body["steering"] = [_term(t).model_dump(mode="json", exclude_none=True) for t in terms]
    if experiment is not None:
        body["experiment"] = experiment
    return body


def steering_header(*terms: SteeringTerm | Mapping[str, Any]) -> str:
    """The `X-Steering` value for terms that name only a vector and a strength."""
    parts = []
    for term in map(_term, terms):
        extra = term.model_fields_set - _HEADER_FIELDS
        if extra:
            raise ValueError(f"X-Steering carries only vector and strength; use steering_body for {sorted(extra)}")
        parts.append(term.vector if term.strength is None else f"{term.vector}:{term.strength!r}")
    if not parts:
        raise ValueError("give at least one term")
    return ",".join(parts)


def with_steering(client: Client, *terms: SteeringTerm | Mapping[str, Any]) -> Client:
    """A copy of an `openai.OpenAI` or `openai.AsyncOpenAI` client whose every request is steered by `terms`."""
    copy: Client = client.with_options(default_headers={"X-Steering": steering_header(*terms)})  # type: ignore[attr-defined]
    return copy
