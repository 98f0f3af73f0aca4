"""One error hierarchy, mapped to OpenAI-shaped responses in one place.

Every error body is `{"error": {"message", "type", "param", "code"}}`. Request validation errors and malformed
JSON are 400 (as OpenAI and vLLM answer), never FastAPI's 422.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from vllm.exceptions import GracefulHTTPError

from steering.errors import SteeringError
from steering.store.base import ConflictError, StoreUnavailableError

logger = logging.getLogger("steerserve.server")


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | int | None = None


class ErrorResponse(BaseModel):
    """The body of every error response (declared in the OpenAPI schema)."""

    error: ErrorDetail


class ApiError(Exception):
    status_code = 400
    error_type = "invalid_request_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers or {}


class BadRequestError(ApiError):
    code = "bad_request"


class AuthenticationError(ApiError):
    status_code = 401
    error_type = "authentication_error"
    code = "invalid_api_key"


class PermissionDeniedError(ApiError):
    status_code = 403
    error_type = "permission_error"
    code = "admin_key_required"


class NotFoundError(ApiError):
    status_code = 404
    code = "not_found"


class ModelNotFoundError(NotFoundError):
    code = "model_not_found"


class PayloadTooLargeError(ApiError):
    status_code = 413
    code = "payload_too_large"


def error_body(message: str, error_type: str, param: str | None, code: str | int | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def error_parts(exc: Exception) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(status, body, headers) for any exception this server raises on purpose (else a 500 in the same shape)."""
    if isinstance(exc, ApiError):
        return exc.status_code, error_body(exc.message, exc.error_type, exc.param, exc.code), dict(exc.headers or {})
    if isinstance(exc, SteeringError):
        return exc.status_code, error_body(exc.message, exc.error_type, exc.param, exc.code), {}
    if isinstance(exc, StoreUnavailableError):
        body = error_body(f"vector registry unavailable: {exc}", "server_error", None, "registry_unavailable")
        return 503, body, {"Retry-After": "1"}
    if isinstance(exc, ConflictError):
        return 409, error_body(str(exc), "invalid_request_error", None, "conflict"), {}
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
    """Handlers for steerserve's own errors only: vLLM's app keeps its handlers for validation and HTTP errors
    (the same OpenAI shape)."""

    async def on_error(_: Request, exc: Exception) -> JSONResponse:
        return error_response(exc)

    for kind in (ApiError, SteeringError, StoreUnavailableError, ConflictError):
        app.add_exception_handler(kind, on_error)
