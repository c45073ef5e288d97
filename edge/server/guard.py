"""The server's trust boundary, as pure ASGI middlewares applied to every route once:

* :class:`HostGuard` — a DNS-rebinding page (``http://attacker.example`` resolving to 127.0.0.1) must
  not reach the API. Without an API key only loopback Host names (and the names given with
  ``--allow-host``) are served; with a key any Host is (the key is the guard then).
* :class:`Auth` — with an API key, everything but ``/health`` (which then says only "ok") and the
  playground's static files needs ``Authorization: Bearer <key>``: the API, /metrics, /v1/jobs,
  /openapi.json and /docs.
* :class:`BodyLimit` — the body is capped *before* anything parses it: a ``Content-Length`` over the
  route's cap is refused at once, a chunked body as soon as it passes the cap (413). The body read
  here is replayed to the app, so routes still see client disconnects.

Pure ASGI (not BaseHTTPMiddleware) so streaming responses and disconnects pass through untouched.
"""

from __future__ import annotations

import hmac
import ipaddress
from typing import Iterable

from edge.errors import BadRequest, EdgeError, Forbidden, PayloadTooLarge, Unauthorized

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
DEFAULT_BODY_LIMIT = 2 << 20
"""Bytes of request body accepted by default: ~500k tokens of chat text, beyond any context edge-run loads."""
BODY_LIMITS = {"/v1/segment": 72 << 20}
"""Per-route caps: /v1/segment carries a base64 image (up to 4096 px, see edge/segment/preprocess.py)."""
OPEN_PATHS = ("/health",)
OPEN_PREFIXES = ("/ui/",)
"""Served without the key: the minimal health check and the playground's static files (it asks for the key)."""


async def send_error(send, err: EdgeError, headers: dict[str, str] | None = None) -> None:
    """Answer with OpenAI's error body, from outside the FastAPI app."""
    import json

    body = json.dumps(err.to_openai()).encode()
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    hdrs += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": err.http_status, "headers": hdrs})
    await send({"type": "http.response.body", "body": body})


def _header(scope, name: bytes) -> str | None:
    for k, v in scope.get("headers") or ():
        if k.lower() == name:
            return v.decode("latin-1")
    return None


def host_name(host_header: str) -> str:
    """'Example.com:8080' -> 'example.com'; '[::1]:80' -> '::1'."""
    h = host_header.strip().lower()
    if h.startswith("["):
        return h[1:h.find("]")] if "]" in h else h
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


def is_loopback(name: str) -> bool:
    if name in LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class HostGuard:
    def __init__(self, app, *, api_key: str | None, allowed: Iterable[str] = ()):
        self.app, self.api_key = app, api_key
        self.allowed = {a.strip().lower() for a in allowed if a and a.strip()}

    def allows(self, host_header: str | None) -> bool:
        if self.api_key or "*" in self.allowed:
            return True
        if not host_header:  # HTTP/1.0 without Host: only a local program talks like that
            return True
        name = host_name(host_header)
        return is_loopback(name) or name in self.allowed

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and not self.allows(_header(scope, b"host")):
            name = host_name(_header(scope, b"host") or "")[:100]
            return await send_error(send, Forbidden(
                f"Host {name!r} is not served: without --api-key, edge-run answers only loopback names "
                "(localhost, 127.0.0.1, ::1) so a web page cannot reach it through DNS rebinding. Start the "
                f"server with `--allow-host {name}` or with an API key (`--api-key` / EDGE_API_KEY).",
                param="Host"))
        return await self.app(scope, receive, send)


class Auth:
    def __init__(self, app, *, api_key: str | None):
        self.app, self.api_key = app, api_key

    def needs_key(self, path: str) -> bool:
        return bool(self.api_key) and path not in OPEN_PATHS and path != "/" and not path.startswith(OPEN_PREFIXES)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and self.needs_key(scope.get("path", "")):
            given = _header(scope, b"authorization") or ""
            token = given[7:].strip() if given[:7].lower() == "bearer " else ""
            if not hmac.compare_digest(token.encode("utf-8", "replace"), self.api_key.encode()):
                return await send_error(send, Unauthorized(
                    "missing or wrong API key: send `Authorization: Bearer <key>` with the key the server was "
                    "started with (`edge-run serve --api-key` or EDGE_API_KEY).", param="Authorization"),
                    {"WWW-Authenticate": "Bearer"})
        return await self.app(scope, receive, send)


class BodyLimit:
    def __init__(self, app, *, default: int = DEFAULT_BODY_LIMIT, limits: dict[str, int] | None = None):
        self.app, self.default = app, default
        self.limits = dict(BODY_LIMITS if limits is None else limits)

    def limit(self, path: str) -> int:
        return self.limits.get(path, self.default)

    def _too_large(self, size: str, limit: int) -> PayloadTooLarge:
        return PayloadTooLarge(f"the request body is {size} bytes; this route accepts at most {limit:,}. Send less "
                               "text (a shorter conversation) or a smaller image (at most 4096 px on its longest "
                               "side).", param="body")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limit(scope.get("path", ""))
        declared = _header(scope, b"content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                return await send_error(send, BadRequest(f"Content-Length {declared[:40]!r} is not a byte count.",
                                                         param="Content-Length"))
            if int(declared) > limit:
                return await send_error(send, self._too_large(f"{int(declared):,}", limit))
        # read (at most limit + 1 bytes of) the body now, then replay it to the app
        chunks, size, more = [], 0, True
        while more:
            msg = await receive()
            if msg["type"] != "http.request":  # the client went away
                return
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > limit:
                return await send_error(send, self._too_large(f"over {limit:,}", limit))
            chunks.append(chunk)
            more = msg.get("more_body", False)
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)
