"""steerserve's one error hierarchy.

Every error carries the OpenAI error fields (`type`, `param`, `code`), an HTTP status and any headers, so the
server maps all of them to responses in one place (`server.error_responses.error_parts`) without knowing each subclass.
"""

from __future__ import annotations

from typing import ClassVar


class SteerserveError(Exception):
    """Base class: a request that cannot be served as asked (400 unless a subclass says otherwise)."""

    status_code: int = 400
    error_type: str = "invalid_request_error"
    code: str = "bad_request"
    headers: ClassVar[dict[str, str]] = {}

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class BadRequestError(SteerserveError):
    """A malformed request (400)."""


class AuthenticationError(SteerserveError):
    status_code = 401
    error_type = "authentication_error"
    code = "invalid_api_key"


class PermissionDeniedError(SteerserveError):
    status_code = 403
    error_type = "permission_error"
    code = "admin_key_required"


class NotFoundError(SteerserveError):
    status_code = 404
    code = "not_found"


class ModelNotFoundError(NotFoundError):
    code = "model_not_found"


class ConflictError(SteerserveError):
    """The write conflicts with stored state, e.g. deleting a vector a preset references (409)."""

    status_code = 409
    code = "conflict"


class PayloadTooLargeError(SteerserveError):
    status_code = 413
    code = "payload_too_large"


class StoreUnavailableError(SteerserveError):
    """The backing store cannot be reached: 503 for anything not cached, with a retry hint."""

    status_code = 503
    error_type = "server_error"
    code = "registry_unavailable"
    headers: ClassVar[dict[str, str]] = {"Retry-After": "1"}

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(f"vector registry unavailable: {message}", param=param)


class InvalidSteeringError(SteerserveError):
    """The steering spec is malformed or violates a limit (400)."""

    code = "invalid_steering"


class UnknownVectorError(SteerserveError):
    """A term names a vector (or version) the registry does not hold (404)."""

    status_code = 404
    code = "vector_not_found"


class UnsupportedModelError(SteerserveError):
    """The served model or engine mode cannot be steered (400 on a request, error at start-up)."""

    code = "steering_unsupported"


class SteeringNotAppliedError(SteerserveError):
    """A worker could not steer a request it was told to steer: the request fails, never passes as steered (500)."""

    status_code = 500
    error_type = "server_error"
    code = "steering_not_applied"
