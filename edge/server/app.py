"""The FastAPI app: OpenAI-compatible endpoints + /health, /metrics, and the workload routers."""

from __future__ import annotations

import hmac
import importlib
import logging
import time
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse

from edge import __version__
from edge.errors import BadRequest, Busy, EdgeError, Unauthorized

log = logging.getLogger("edge.server")
WORKLOAD_ROUTES = ("edge.server.chat_routes", "edge.server.image_routes", "edge.server.segment_routes",
                   "edge.server.progress_routes")
OPEN_PATHS = ("/health",)


def _error_response(err: EdgeError) -> JSONResponse:
    headers = {}
    if isinstance(err, Busy):
        headers["Retry-After"] = str(max(1, int(round(err.retry_after))))
    return JSONResponse(err.to_openai(), status_code=err.http_status, headers=headers)


class AuthAndLog:
    """Pure ASGI middleware (BaseHTTPMiddleware would hide client disconnects from streaming
    responses): checks the API key on /v1/ paths and records (method, path, status)."""

    def __init__(self, app, *, api_key: str | None, logbook: list):
        self.app, self.api_key, self.logbook = app, api_key, logbook

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        if self.api_key and path.startswith("/v1/"):
            headers = dict(scope.get("headers") or [])
            given = headers.get(b"authorization", b"").decode("latin-1")
            token = given[7:] if given.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(token.encode(), self.api_key.encode()):
                err = Unauthorized("missing or wrong API key: send `Authorization: Bearer <key>` with the key "
                                   "given to `edge-run serve --api-key`.", code="invalid_api_key")
                self._log(scope, err.http_status)
                return await _error_response(err)(scope, receive, send)
        status = [0]

        async def send_and_record(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                self._log(scope, status[0])
            await send(message)

        await self.app(scope, receive, send_and_record)

    def _log(self, scope, status: int) -> None:
        self.logbook.append((scope.get("method", ""), scope.get("path", ""), status))
        del self.logbook[:-1000]


def create_app(runtime, *, api_key: str | None = None) -> FastAPI:
    """The ASGI app serving ``runtime`` (an edge.api.Runtime)."""
    app = FastAPI(title="edge-run", version=__version__,
                  description="Local, offline, OpenAI-compatible inference: chat, images, segmentation.")
    app.state.runtime = runtime
    app.state.started = time.time()
    app.state.request_log = []  # (method, path, status) of recent requests, for the playground tests

    @app.exception_handler(EdgeError)
    async def _edge_error(request: Request, err: EdgeError):
        return _error_response(err)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, err: RequestValidationError):
        first = err.errors()[0] if err.errors() else {}
        loc = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        msg = f"`{loc}`: {first.get('msg', 'invalid value')}" if loc else first.get("msg", "invalid request body")
        if "input" in first and loc:
            msg += f", got {str(first['input'])[:80]!r}"
        return _error_response(BadRequest(msg + ".", param=loc or None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception):
        log.exception("unexpected error on %s", request.url.path)
        return JSONResponse({"error": {"message": f"internal error: {err.__class__.__name__}: {err}",
                                       "type": "server_error", "param": None, "code": None}}, status_code=500)

    app.add_middleware(AuthAndLog, api_key=api_key, logbook=app.state.request_log)

    @app.get("/health")
    def health():
        rt = app.state.runtime
        return {"status": "ok", "version": __version__, "uptime_seconds": round(time.time() - app.state.started, 1),
                "loaded": [m["id"] for m in rt.ps()], "queue_depth": rt.scheduler.queue_depth()}

    @app.get("/v1/models")
    def models():
        rt = app.state.runtime
        loaded = {m["id"]: m for m in rt.ps()}
        data = []
        for e in rt.catalog:
            row = {"id": e.id, "object": "model", "created": 0, "owned_by": "edge-run", "task": e.task,
                   "format": e.format, "size_bytes": e.size, "license": e.license,
                   "installed": rt.store.is_installed(e), "loaded": e.id in loaded}
            if e.id in loaded:
                m = loaded[e.id]
                row.update(ram_bytes=m["ram_bytes"], running=m["running"], idle_seconds=m["idle_seconds"],
                           expires_in=m["expires_in"], pinned=m["pinned"])
            data.append(row)
        return {"object": "list", "data": data,
                "ram_budget_bytes": rt.settings.ram_budget, "ram_used_bytes": rt.scheduler.ram_used()}

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics():
        return render_metrics(app.state.runtime)

    for module in WORKLOAD_ROUTES:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
            continue
        app.include_router(mod.router)

    web = Path(__file__).resolve().parent.parent / "web"
    if (web / "index.html").is_file():
        from fastapi.staticfiles import StaticFiles

        app.mount("/ui", StaticFiles(directory=web, html=True), name="web")

        @app.get("/", include_in_schema=False)
        def root():  # the playground itself (its assets live under /ui/)
            return FileResponse(web / "index.html", headers={"Cache-Control": "no-cache"})

    return app


def render_metrics(rt) -> str:
    """Prometheus text exposition of the scheduler's counters."""
    s = rt.scheduler
    m = s.metrics
    lines = [
        "# HELP edge_queue_depth Jobs waiting to start.", "# TYPE edge_queue_depth gauge",
        f"edge_queue_depth {s.queue_depth()}",
        "# HELP edge_running_jobs Jobs started and not finished.", "# TYPE edge_running_jobs gauge",
        f"edge_running_jobs {s.running_count()}",
        "# HELP edge_loaded_models Models in memory.", "# TYPE edge_loaded_models gauge",
        f"edge_loaded_models {len(s.loaded())}",
        "# HELP edge_ram_used_bytes Measured footprint of loaded models.", "# TYPE edge_ram_used_bytes gauge",
        f"edge_ram_used_bytes {s.ram_used()}",
        "# HELP edge_ram_budget_bytes RAM budget for loaded models.", "# TYPE edge_ram_budget_bytes gauge",
        f"edge_ram_budget_bytes {s.ram_budget}",
        "# HELP edge_step_seconds Time spent in job steps, by kind.", "# TYPE edge_step_seconds summary",
    ]
    for kind in sorted(m.step_count):
        lines.append(f'edge_step_seconds_sum{{kind="{kind}"}} {m.step_seconds[kind]:.6f}')
        lines.append(f'edge_step_seconds_count{{kind="{kind}"}} {m.step_count[kind]}')
    rate = m.tokens / m.token_seconds if m.token_seconds > 0 else 0.0
    lines += [
        "# HELP edge_tokens_total Chat tokens generated.", "# TYPE edge_tokens_total counter",
        f"edge_tokens_total {m.tokens}",
        "# HELP edge_tokens_per_second Chat tokens per second of decode step time.",
        "# TYPE edge_tokens_per_second gauge", f"edge_tokens_per_second {rate:.3f}",
        "# HELP edge_evictions_total Models unloaded for space or keep-alive.", "# TYPE edge_evictions_total counter",
        f"edge_evictions_total {m.evictions}",
        "# HELP edge_model_loads_total Model loads.", "# TYPE edge_model_loads_total counter",
        f"edge_model_loads_total {m.loads}",
        "# HELP edge_busy_refusals_total Jobs refused because the queue was full.",
        "# TYPE edge_busy_refusals_total counter", f"edge_busy_refusals_total {m.busy_refusals}",
        "# HELP edge_jobs_total Jobs submitted, by kind.", "# TYPE edge_jobs_total counter",
    ]
    for label in sorted(m.jobs):
        lines.append(f'edge_jobs_total{{kind="{label}"}} {m.jobs[label]}')
    return "\n".join(lines) + "\n"


def serve(args) -> int:
    """`edge-run serve`: build the Runtime and run uvicorn until Ctrl-C."""
    import sys

    import uvicorn

    from edge.cli import make_runtime

    rt = make_runtime(args)
    app = create_app(rt, api_key=args.api_key)
    print(f"edge-run {__version__} serving on http://{args.host}:{args.port} (threads={rt.settings.threads}, "
          f"ram budget {rt.settings.ram_budget / 2**30:.1f} GiB)", file=sys.stderr, flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False)
    finally:
        rt.close()
    return 0
