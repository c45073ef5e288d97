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
    code: str | None = "internal_error"
    """OpenAI's machine-readable ``code``; each class declares its own, an instance may narrow it."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:  # None keeps the class's code (an instance attribute would shadow it)
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
    code = "invalid_value"


class ContextTooLong(BadRequest):
    """The prompt does not fit the model's context window."""

    http_status = 400
    code = "context_length_exceeded"


class PayloadTooLarge(BadRequest):
    """The body, an image or a list is larger than edge-run accepts (checked before parsing/decoding)."""

    http_status = 413
    code = "payload_too_large"


class Unauthorized(EdgeError):
    http_status = 401
    error_type = "authentication_error"
    exit_code = 2
    code = "invalid_api_key"


class Forbidden(EdgeError):
    """The request's Host is not one this server answers (DNS-rebinding guard)."""

    http_status = 403
    error_type = "permission_error"
    exit_code = 2
    code = "host_not_allowed"


class NotFound(EdgeError):
    """No such route or resource."""

    http_status = 404
    error_type = "invalid_request_error"
    exit_code = 3
    code = "not_found"


class ModelNotFound(EdgeError):
    """No models.lock entry with that id."""

    http_status = 404
    error_type = "invalid_request_error"
    exit_code = 3
    code = "model_not_found"


class ModelNotInstalled(EdgeError):
    """The model is in models.lock but its files are not in the store (and we may not download)."""

    http_status = 404
    error_type = "invalid_request_error"
    exit_code = 3
    code = "model_not_installed"


class IntegrityError(EdgeError):
    """A file's sha256 or size does not match models.lock."""

    http_status = 500
    error_type = "server_error"
    exit_code = 4
    code = "integrity_error"


class ModelLoadError(EdgeError):
    """A verified model's files could not be loaded by its engine (the library's words go to the log)."""

    http_status = 500
    error_type = "server_error"
    exit_code = 4
    code = "model_load_failed"


class DownloadError(EdgeError):
    http_status = 502
    error_type = "server_error"
    exit_code = 5
    code = "download_failed"


class OfflineError(DownloadError):
    """Network use was forbidden (EDGE_OFFLINE=1 / --offline)."""

    code = "offline"


class Busy(EdgeError):
    """The scheduler's queue is full; retry after ``retry_after`` seconds."""

    http_status = 503
    error_type = "server_error"
    exit_code = 6
    code = "busy"

    def __init__(self, message: str, *, retry_after: float = 1.0, **kw):
        super().__init__(message, **kw)
        self.retry_after = retry_after


class Cancelled(EdgeError):
    """The job was cancelled (by its handle, Ctrl-C or a client that went away)."""

    http_status = 499
    error_type = "cancelled"
    exit_code = 130
    code = "cancelled"


class OutOfMemory(EdgeError):
    """The model cannot fit the RAM budget even with every idle model evicted."""

    http_status = 507
    error_type = "server_error"
    exit_code = 7
    code = "out_of_memory"


class DeviceError(EdgeError):
    """A requested execution device is missing or cannot run the model."""

    http_status = 400
    error_type = "invalid_request_error"
    exit_code = 8
    code = "device_unavailable"


class DiskFull(EdgeError):
    """The disk ran out of space while writing (a pull, an export); nothing half-written is kept."""

    http_status = 507
    error_type = "server_error"
    exit_code = 9
    code = "disk_full"


def check_range(name: str, value: float, lo: float, hi: float, fix: str = "") -> None:
    """Raise BadRequest unless ``value`` is a finite number with lo <= value <= hi, naming the argument
    and the value (NaN and infinities fail every comparison, so they are refused here too)."""
    import math
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Real) \
            or not (isinstance(value, numbers.Integral) or math.isfinite(value)) \
            or not (lo <= value <= hi):
        raise BadRequest(f"`{name}` must be between {lo} and {hi}, got {value}." + (f" {fix}" if fix else ""),
                         param=name)
