"""The maas error hierarchy.

Each error carries an HTTP status and a stable machine-readable ``code``; the
API turns them into JSON in exactly one place (``maas.api.errors``) and the CLI
into a one-line message and a non-zero exit code.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import ClassVar


class MaasError(Exception):
    """Base class of every error maas raises on purpose."""

    status: ClassVar[HTTPStatus] = HTTPStatus.INTERNAL_SERVER_ERROR
    code: ClassVar[str] = "internal_error"
    # OpenAI's ``error.type`` family this error belongs to.
    type: ClassVar[str] = "server_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def __str__(self) -> str:
        return self.message


class InvalidRequestError(MaasError):
    status = HTTPStatus.BAD_REQUEST
    code = "invalid_request"
    type = "invalid_request_error"


class UnsafeFormatError(InvalidRequestError):
    """Pickle-based weights were offered while unsafe formats are not allowed."""

    code = "unsafe_format"


class UnauthorizedError(MaasError):
    status = HTTPStatus.UNAUTHORIZED
    code = "unauthorized"
    type = "authentication_error"


class ForbiddenError(MaasError):
    status = HTTPStatus.FORBIDDEN
    code = "forbidden"
    type = "permission_error"


class NotFoundError(MaasError):
    status = HTTPStatus.NOT_FOUND
    code = "not_found"
    type = "not_found_error"


class ConflictError(MaasError):
    status = HTTPStatus.CONFLICT
    code = "conflict"
    type = "invalid_request_error"


class PayloadTooLargeError(MaasError):
    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    code = "payload_too_large"
    type = "invalid_request_error"


class RateLimitedError(MaasError):
    status = HTTPStatus.TOO_MANY_REQUESTS
    code = "rate_limited"
    type = "rate_limit_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        retry_after: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, param=param)
        self.headers = dict(headers or {})
        if retry_after is not None:
            # Whole seconds, rounded up: a client retrying early would be refused again.
            self.headers["Retry-After"] = str(max(1, int(-(-retry_after // 1))))


class QuotaExceededError(RateLimitedError):
    """A monthly token or request quota is used up (OpenAI: ``insufficient_quota``)."""

    code = "insufficient_quota"


class UnavailableError(MaasError):
    status = HTTPStatus.SERVICE_UNAVAILABLE
    code = "unavailable"
    type = "server_error"


class ReplicaLostError(UnavailableError):
    """The model replica running a request went away under it (``maas serve --ray``)."""

    code = "replica_lost"


class IntegrityError(MaasError):
    """Stored bytes no longer match their recorded digest."""

    code = "integrity_error"
