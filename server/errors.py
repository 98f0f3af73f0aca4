"""One error hierarchy, mapped to OpenAI-shaped responses in one place.

Every error body is `{"error": {"message", "type", "param", "code"}}`. Request validation errors and malformed
JSON are 400 (as OpenAI and vLLM answer), never FastAPI's 422.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

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


class ConflictApiError(ApiError):
    status_code = 409
    code = "conflict"


class PayloadTooLargeError(ApiError):
    status_code = 413
    code = "payload_too_large"


class OverloadedError(ApiError):
    status_code = 503
    error_type = "server_error"
    code = "overloaded"


class ServiceUnavailableError(ApiError):
    status_code = 503
    error_type = "server_error"
    code = "service_unavailable"


def error_body(message: str, error_type: str, param: str | None, code: str | int | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def error_response(exc: Exception) -> JSONResponse:
    """The response for any exception this server raises on purpose (else a 500 in the same shape)."""
    if isinstance(exc, ApiError):
        body = error_body(exc.message, exc.error_type, exc.param, exc.code)
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)
    if isinstance(exc, SteeringError):
        return JSONResponse(error_body(exc.message, exc.error_type, exc.param, exc.code), status_code=exc.status_code)
    if isinstance(exc, StoreUnavailableError):
        body = error_body(f"vector registry unavailable: {exc}", "server_error", None, "registry_unavailable")
        return JSONResponse(body, status_code=503, headers={"Retry-After": "1"})
    if isinstance(exc, ConflictError):
        return JSONResponse(error_body(str(exc), "invalid_request_error", None, "conflict"), status_code=409)
    logger.exception("unhandled error", exc_info=exc)
    return JSONResponse(error_body("internal server error", "server_error", None, "internal_error"), status_code=500)


def _validation_param(error: dict[str, Any]) -> str | None:
    loc = [str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path", "header")]
    return ".".join(loc) or None


def install_error_handlers(app: FastAPI) -> None:
    async def on_error(_: Request, exc: Exception) -> JSONResponse:
        return error_response(exc)

    async def on_validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        if first.get("type") == "json_invalid":
            message = f"request body is not valid JSON: {first.get('ctx', {}).get('error', 'parse error')}"
            return JSONResponse(error_body(message, "invalid_request_error", None, "invalid_json"), status_code=400)
        param = _validation_param(first)
        message = "; ".join(f"{_validation_param(e) or 'body'}: {e.get('msg')}" for e in errors[:5])
        return JSONResponse(error_body(message, "invalid_request_error", param, "invalid_request"), status_code=400)

    async def on_http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        error_type = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return JSONResponse(
            error_body(str(exc.detail), error_type, None, code),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    app.add_exception_handler(RequestValidationError, on_validation)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, on_http)  # type: ignore[arg-type]
    for kind in (ApiError, SteeringError, StoreUnavailableError, ConflictError, Exception):
        app.add_exception_handler(kind, on_error)


def openapi_with_our_errors(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """The app's OpenAPI schema with FastAPI's 422 "Validation Error" replaced by what this server really sends:
    a 400 in OpenAI's error shape."""
    from fastapi.openapi.utils import get_openapi

    def build() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            bad_request = {
                "description": "Bad request (also malformed JSON and validation errors)",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
            }
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    responses = operation.get("responses", {})
                    if responses.pop("422", None) is not None:
                        responses.setdefault("400", bad_request)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.pop("HTTPValidationError", None)
            components.pop("ValidationError", None)
            app.openapi_schema = schema
        return app.openapi_schema

    return build
