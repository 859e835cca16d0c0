"""The exception tree. Everything the gateway raises on purpose is a GatewayError.

    GatewayError(status, reason, message)
    ├── InvalidArgument      400  bad request shape or value
    ├── Unauthenticated      401  no key, or a key we do not know
    ├── InsufficientCredits  402  the account's balance or a key's spend cap cannot cover it
    ├── PermissionDenied     403  revoked or expired key, model not allowed for the key
    ├── NotFound             404  unknown model or route
    ├── Conflict             409  an Idempotency-Key reused with a different request
    ├── PayloadTooLarge      413  body over the configured limit
    ├── RateLimited          429  per-key limits, or every upstream throttled us
    ├── Internal             500  a bug, or an upstream's own 500
    ├── BadUpstreamAnswer    502  the upstream answered something we could not read
    ├── Unavailable          503  no upstream could serve
    │   └── Maintenance      503  the operator turned maintenance mode on (455 on the task API)
    ├── FeatureDisabled      501  the operator switched the feature off (505 on the task API)
    └── DeadlineExceeded     504  the upstream did not answer in time
        └── StreamCut        504  a stream ran past its deadline or below its minimum rate
    UpstreamError                 raised by adapters only; the router decides what it becomes

`reason` is the Google status name (INVALID_ARGUMENT, ...). Each dialect renders the error in
its own envelope; messages never carry keys or base64 data.
"""

from __future__ import annotations


class GatewayError(Exception):
    status: int = 500
    reason: str = "INTERNAL"

    def __init__(
        self, message: str, *, retry_after: int | None = None, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after
        # The request field at fault, where the dialect's envelope has room for it (OpenAI's).
        self.param = param


class InvalidArgument(GatewayError):
    status, reason = 400, "INVALID_ARGUMENT"


class Unauthenticated(GatewayError):
    status, reason = 401, "UNAUTHENTICATED"


class InsufficientCredits(GatewayError):
    # Google has no 402; RESOURCE_EXHAUSTED is its name for running out. 429 stays for rates.
    status, reason = 402, "RESOURCE_EXHAUSTED"


class PermissionDenied(GatewayError):
    status, reason = 403, "PERMISSION_DENIED"


class NotFound(GatewayError):
    status, reason = 404, "NOT_FOUND"


class Conflict(GatewayError):
    status, reason = 409, "ABORTED"


class PayloadTooLarge(GatewayError):
    status, reason = 413, "INVALID_ARGUMENT"


class RateLimited(GatewayError):
    status, reason = 429, "RESOURCE_EXHAUSTED"


class Internal(GatewayError):
    status, reason = 500, "INTERNAL"


class BadUpstreamAnswer(GatewayError):
    # gRPC's HTTP mapping reads 502 as UNAVAILABLE: another try may get a readable answer.
    status, reason = 502, "UNAVAILABLE"


class Unavailable(GatewayError):
    status, reason = 503, "UNAVAILABLE"


class Maintenance(Unavailable):
    pass


class FeatureDisabled(GatewayError):
    status, reason = 501, "NOT_IMPLEMENTED"


class DeadlineExceeded(GatewayError):
    status, reason = 504, "DEADLINE_EXCEEDED"


class StreamCut(DeadlineExceeded):
    """Raised by the stream the gateway relays (core/pace.py); what was produced is charged."""


# Upstream statuses worth trying elsewhere (DESIGN: connect errors, timeouts, 408, 429 and 5xx).
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


class UpstreamError(Exception):
    """An upstream failed. `status` is the upstream's HTTP status, or 0 for a transport failure.

    `message` is already safe to show a client: adapters strip keys and cap its length.
    """

    def __init__(
        self,
        upstream: str,
        status: int,
        message: str,
        *,
        reason: str | None = None,
        timeout: bool = False,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(f"{upstream}: {status} {message}")
        self.upstream = upstream
        self.status = status
        self.message = message
        self.reason = reason
        self.timeout = timeout
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        # 401/403 from an upstream mean *our* credentials are wrong there: another upstream may
        # still serve the request, and the client did nothing wrong.
        return self.status == 0 or self.status in RETRYABLE_STATUSES or self.status in (401, 403)

    def to_gateway_error(self) -> GatewayError:
        """What the client sees once no upstream is left to try."""
        if self.timeout:
            return DeadlineExceeded(f"The upstream did not answer in time ({self.message}).")
        if self.status == 0:
            return Unavailable(f"The upstream could not be reached ({self.message}).")
        if self.status == 429:
            return RateLimited(
                f"The upstream is rate limiting requests: {self.message}",
                retry_after=self.retry_after,
            )
        if self.status in (401, 403):
            return Unavailable(
                "The gateway's upstream credentials were rejected; the operator must fix them."
            )
        if self.status in (408, 504):
            return DeadlineExceeded(f"The upstream timed out: {self.message}")
        if self.status == 502:
            # Adapters raise 502 for an answer they cannot read (not JSON, no candidates...).
            return BadUpstreamAnswer(f"Bad upstream answer: {self.message}")
        if self.status >= 500:
            cls: type[GatewayError] = Internal if self.status == 500 else Unavailable
            return cls(f"The upstream failed: {self.message}")
        return _ClientFault(self.status, self.reason or _reason_for(self.status), self.message)


class _ClientFault(GatewayError):
    """A 4xx the upstream gave for the request itself: passed on with its own status."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


# Google's canonical status name for each HTTP status its API answers with; clients (the
# google-genai SDK included) read `error.status`, so the name must match the code.
STATUS_NAMES: dict[int, str] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    402: "RESOURCE_EXHAUSTED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    412: "FAILED_PRECONDITION",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def _reason_for(status: int) -> str:
    return STATUS_NAMES.get(status, "FAILED_PRECONDITION")
