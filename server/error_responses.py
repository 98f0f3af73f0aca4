"""steerserve's errors (`steering.errors`, one hierarchy) mapped to HTTP responses, in this one place.

Every error body is `{"error": {"message", "type", "param", "code"}}`. Request validation errors and malformed
JSON are vLLM's handlers' (400, the same shape, never FastAPI's 422).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from vllm.exceptions import GracefulHTTPError

from steering.errors import SteerserveError

logger = logging.getLogger("steerserve.server")


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | int | None = None


class ErrorResponse(BaseModel):
    """The body of every error response (declared in the OpenAPI schema)."""

    error: ErrorDetail


def error_body(message: str, error_type: str, param: str | None, code: str | int | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def error_parts(exc: Exception) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(status, body, headers) for any exception this server raises on purpose (else a 500 in the same shape)."""
    if isinstance(exc, SteerserveError):
        return exc.status_code, error_body(exc.message, exc.error_type, exc.param, exc.code), dict(exc.headers)
    if isinstance(exc, GracefulHTTPError):  # vLLM's own refusals (its queue limits), with vLLM's status
        status = int(exc.http_status)
        kind = "server_error" if status >= 500 else "invalid_request_error"
        return status, error_body(exc.message, kind, None, "overloaded" if status == 503 else None), {}
    logger.exception("unhandled error", exc_info=exc)
    return 500, error_body("internal server error", "server_error", None, "internal_error"), {}


def error_response(exc: Exception) -> JSONResponse:
    status, body, headers = error_parts(exc)
    return JSONResponse(body, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """A handler for steerserve's own errors only: vLLM's app keeps its handlers for validation and HTTP errors
    (the same OpenAI shape)."""

    async def on_error(_: Request, exc: Exception) -> JSONResponse:
        return error_response(exc)

    app.add_exception_handler(SteerserveError, on_error)
