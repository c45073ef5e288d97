"""The EdgeError tree. Each error knows its HTTP status, OpenAI error type and CLI exit code.

Messages name the argument, show the value and say the fix, e.g.
"`steps` must be between 1 and 8, got 50. LCM models need few steps; use 4."
"""

from __future__ import annotations


class EdgeError(Exception):
    """Base of every error edge-run reports to a user."""

    http_status: int = 500
    error_type: str = "server_error"
    exit_code: int = 1

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code

    def to_openai(self) -> dict:
        """OpenAI's error body: {"error": {"message", "type", "param", "code"}}."""
        return {"error": {"message": self.message, "type": self.error_type, "param": self.param,
                          "code": self.code}}


class BadRequest(EdgeError):
    """The caller gave a value edge-run cannot use."""

    http_status = 400
    error_type = "invalid_request_error"
    exit_code = 2


class ContextTooLong(BadRequest):
    """The prompt does not fit the model's context window."""

    http_status = 400
    code = "context_length_exceeded"


class PayloadTooLarge(BadRequest):
    http_status = 413


class Unauthorized(EdgeError):
    http_status = 401
    error_type = "authentication_error"
    exit_code = 2


class ModelNotFound(EdgeError):
    """No models.lock entry with that id."""

    http_status = 404
    error_type = "invalid_request_error"
    exit_code = 3


class ModelNotInstalled(EdgeError):
    """The model is in models.lock but its files are not in the store (and we may not download)."""

    http_status = 404
    error_type = "invalid_request_error"
    exit_code = 3


class IntegrityError(EdgeError):
    """A file's sha256 or size does not match models.lock."""

    http_status = 500
    error_type = "server_error"
    exit_code = 4


class DownloadError(EdgeError):
    http_status = 502
    error_type = "server_error"
    exit_code = 5


class OfflineError(DownloadError):
    """Network use was forbidden (EDGE_OFFLINE=1 / --offline)."""


class Busy(EdgeError):
    """The scheduler's queue is full; retry after ``retry_after`` seconds."""

    http_status = 503
    error_type = "server_error"
    exit_code = 6

    def __init__(self, message: str, *, retry_after: float = 1.0, **kw):
        super().__init__(message, **kw)
        self.retry_after = retry_after


class Cancelled(EdgeError):
    """The job was cancelled (by its handle, Ctrl-C or a client that went away)."""

    http_status = 499
    error_type = "cancelled"
    exit_code = 130


class OutOfMemory(EdgeError):
    """The model cannot fit the RAM budget even with every idle model evicted."""

    http_status = 507
    error_type = "server_error"
    exit_code = 7


class DeviceError(EdgeError):
    """A requested execution device is missing or cannot run the model."""

    http_status = 400
    error_type = "invalid_request_error"
    exit_code = 8


def check_range(name: str, value: float, lo: float, hi: float, fix: str = "") -> None:
    """Raise BadRequest unless lo <= value <= hi, naming the argument and the value."""
    if not (lo <= value <= hi):
        raise BadRequest(f"`{name}` must be between {lo} and {hi}, got {value}." + (f" {fix}" if fix else ""),
                         param=name)
