"""Error hierarchy of the steering core.

Every error carries the OpenAI error fields (`type`, `param`, `code`) and an HTTP status, so the server maps
the whole hierarchy to responses in one place without knowing each subclass.
"""

from __future__ import annotations


class SteeringError(Exception):
    """Base class: a steering request that cannot be served as asked."""

    status_code: int = 400
    error_type: str = "invalid_request_error"
    code: str = "invalid_steering"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidSteeringError(SteeringError):
    """The steering spec is malformed or violates a limit (400)."""


class UnknownVectorError(SteeringError):
    """A term names a vector (or version) the registry does not hold (404)."""

    status_code = 404
    code = "vector_not_found"


class UnsupportedModelError(SteeringError):
    """The served model or engine mode cannot be steered (400 on a request, error at start-up)."""

    code = "steering_unsupported"


class SteeringNotAppliedError(SteeringError):
    """A worker could not steer a request it was told to steer: the request fails, never passes as steered (500)."""

    status_code = 500
    error_type = "server_error"
    code = "steering_not_applied"
