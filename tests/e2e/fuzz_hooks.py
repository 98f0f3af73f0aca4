"""Schemathesis hooks for tests/e2e/test_fuzz.py (loaded through SCHEMATHESIS_HOOKS in the fuzzer's process):
generation lengths are capped so the run stays bounded, every call is counted, and every error answer must be
in OpenAI's shape."""

from __future__ import annotations

import os
import zlib
from typing import Any

import schemathesis

MAX_TOKENS = 8


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    body = case.body
    if isinstance(body, dict) and ("prompt" in body or "messages" in body or "input" in body):
        for key in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
            value = body.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > MAX_TOKENS:
                body[key] = MAX_TOKENS  # valid but long: shortened; invalid values stay to be refused
        limit = "max_output_tokens" if "input" in body else "max_tokens"
        if not any(k in body for k in ("max_tokens", "max_completion_tokens", "max_output_tokens")):
            body[limit] = MAX_TOKENS
        if isinstance(body.get("n"), int) and body["n"] > 2:
            body["n"] = 2
        if "steering" not in body and zlib.crc32(str(body).encode()) % 2:
            body["steering"] = [{"vector": "no-such-vector"}]  # half the bodies also go through steering's checks
    counter = os.environ.get("STEERSERVE_FUZZ_COUNT")
    if counter:
        with open(counter, "a") as out:
            out.write(f"{case.method} {case.path}\n")


@schemathesis.check
def openai_error_shape(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every 4xx/5xx body is {"error": {"message", "type", "param", "code"}} with a message (Anthropic's
    `{"type": "error", "error": {"type", "message"}}` on its Messages route)."""
    if response.status_code < 400:
        return None
    body = response.json()
    if case.path.startswith("/v1/messages") and isinstance(body, dict) and body.get("type") == "error":
        if not (isinstance(body.get("error"), dict) and body["error"].get("type") and body["error"].get("message")):
            raise AssertionError(f"error body not in Anthropic's shape: {body!r}")
        return None
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or set(error) != {"message", "type", "param", "code"} or not error["message"]:
        raise AssertionError(f"error body not in OpenAI's shape: {body!r}")
    return None
