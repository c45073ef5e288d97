"""The FastAPI app: OpenAI-compatible endpoints + /health, /metrics, and the workload routers.

The trust boundary (Host allow-list, API key, body-size cap) is edge/server/guard.py, applied once to
every route; errors are typed (edge/errors.py) and answered in OpenAI's shape, 5xx without internals.
"""

from __future__ import annotations

import hmac
import logging
import math
import time
import uuid
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from edge import __version__
from edge.engines import WORKLOADS, resolve
from edge.errors import BadRequest, Busy, EdgeError, NotFound
from edge.server.bodies import validation_error
from edge.server.guard import Auth, BodyLimit, HostGuard
from edge.server.schemas import ERROR_RESPONSES

log = logging.getLogger("edge.server")
WORKLOAD_ROUTES = (*(w.routes for w in WORKLOADS.values() if w.routes), "edge.server.progress_routes")
"""The routers served: each workload's (edge/engines.py registers them), then GET /v1/jobs."""
DRAIN_SECONDS = 5.0
"""On SIGTERM: running jobs are cancelled at once, open responses get this long to finish, then exit 0."""


def retry_after(rt) -> float:
    """Seconds until a refused job would likely start: the work queued and running ahead of it times the
    measured compute of one job (the scheduler runs one step at a time per lane, so work adds up)."""
    s = rt.scheduler
    m = s.metrics
    jobs_done = max(1, sum(m.jobs.values()) - s.queue_depth() - s.running_count())
    per_job = sum(m.step_seconds.values()) / jobs_done if m.step_seconds else 1.0
    return max(1.0, (s.queue_depth() + s.running_count()) * per_job)


def _error_response(err: EdgeError, rt=None) -> JSONResponse:
    headers = {}
    if isinstance(err, Busy):
        wait = max(err.retry_after, retry_after(rt) if rt is not None else 0.0)
        headers["Retry-After"] = str(max(1, math.ceil(wait)))
    return JSONResponse(err.to_openai(), status_code=err.http_status, headers=headers)


class RequestLog:
    """Records (method, path, status) of recent requests (the playground tests read it) and counts
    answers by route and status for /metrics (unknown paths count as "other")."""

    def __init__(self, app, *, logbook: list, counts: dict, routes: set):
        self.app, self.logbook, self.counts, self.routes = app, logbook, counts, routes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        started = False

        def record(status: int) -> None:
            path = scope.get("path", "")
            self.logbook.append((scope.get("method", ""), path, status))
            del self.logbook[:-1000]
            route = getattr(scope.get("route"), "path", None)  # set by the router once matched
            key = (route or (path if path in self.routes else "other"), status)
            self.counts[key] = self.counts.get(key, 0) + 1

        async def send_and_record(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                record(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        except Exception:
            # an unexpected error is answered by Starlette's outermost ServerErrorMiddleware (the
            # Exception handler), which no user middleware wraps: count its 500 here, before it goes on
            if not started:
                record(500)
            raise


def _authorized(request: Request, api_key: str | None) -> bool:
    if not api_key:
        return True
    given = request.headers.get("authorization", "")
    token = given[7:].strip() if given[:7].lower() == "bearer " else ""
    return hmac.compare_digest(token.encode("utf-8", "replace"), api_key.encode())


def create_app(runtime, *, api_key: str | None = None, allowed_hosts: tuple[str, ...] = ()) -> FastAPI:
    """The ASGI app serving ``runtime`` (an edge.api.Runtime).

    ``api_key``: required as a bearer token everywhere but /health (then minimal) and the playground's
    static files. Without one, only loopback Host names and ``allowed_hosts`` are served."""
    app = FastAPI(title="edge-run", version=__version__,
                  description="Local, offline, OpenAI-compatible inference: chat, images, segmentation. Every "
                              "error is OpenAI's `{\"error\": {message, type, param, code}}`; validation errors "
                              "are 400s (never 422).")
    app.state.runtime = runtime
    app.state.started = time.time()
    app.state.request_log = []  # (method, path, status) of recent requests, for the playground tests

    @app.exception_handler(EdgeError)
    async def _edge_error(request: Request, err: EdgeError):
        if err.http_status >= 500:
            log.warning("%s on %s: %s", err.__class__.__name__, request.url.path, err.message)
        return _error_response(err, request.app.state.runtime)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, err: RequestValidationError):
        return _error_response(validation_error(list(err.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException):
        if err.status_code == 404:
            e: EdgeError = NotFound(f"no route {request.method} {request.url.path}; see /docs for the API.",
                                    param="path")
        else:
            e = BadRequest(f"{request.method} {request.url.path}: {err.detail}. See /docs for the API.", param="path",
                           code="method_not_allowed" if err.status_code == 405 else None)
            e.http_status = err.status_code if 400 <= err.status_code < 500 else 400
        return _error_response(e)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception):
        incident = uuid.uuid4().hex[:12]
        log.exception("unexpected error on %s (incident %s)", request.url.path, incident)
        return JSONResponse({"error": {"message": f"internal error (incident {incident}); the details are in the "
                                                  "server log. Please report it.",
                                       "type": "server_error", "param": None, "code": "internal_error"}},
                            status_code=500)

    # outermost first: log, Host allow-list, API key, then the body cap (before anything parses)
    app.add_middleware(BodyLimit)
    app.add_middleware(Auth, api_key=api_key)
    app.add_middleware(HostGuard, api_key=api_key, allowed=allowed_hosts)
    app.state.http_counts = {}  # (route, status) -> answers, for /metrics
    app.state.routes = set()  # filled once the routers are included
    app.add_middleware(RequestLog, logbook=app.state.request_log, counts=app.state.http_counts,
                       routes=app.state.routes)

    @app.get("/health")
    async def health(request: Request):
        """Liveness. Answers in milliseconds under any load (no worker thread, no model). With an API key
        and no (right) key given, it says only that the server is up."""
        if not _authorized(request, api_key):
            return {"status": "ok"}
        rt = app.state.runtime
        return {"status": "ok", "version": __version__, "uptime_seconds": round(time.time() - app.state.started, 1),
                "loaded": [m["id"] for m in rt.ps()], "queue_depth": rt.scheduler.queue_depth()}

    @app.get("/v1/models", responses=ERROR_RESPONSES)
    def models():
        """Every model this runtime knows: the pinned entries (installed or not) and then the recipes not
        exported here yet (``"recipe": true``). A model that is not installed carries ``pull``: the one
        command that installs it (the playground shows it; `serve` itself never downloads)."""
        rt = app.state.runtime
        cat = rt.catalog  # read from the lock files on each access: read once per answer
        loaded = {m["id"]: m for m in rt.ps()}
        data = []
        for e in cat:
            row = {"id": e.id, "object": "model", "created": 0, "owned_by": "edge-run", "task": e.task,
                   "format": e.format, "size_bytes": e.size, "license": e.license,
                   "installed": rt.store.is_installed(e), "loaded": e.id in loaded}
            if e.id in loaded:
                m = loaded[e.id]
                row.update(ram_bytes=m["ram_bytes"], running=m["running"], idle_seconds=m["idle_seconds"],
                           expires_in=m["expires_in"], pinned=m["pinned"])
            if not row["installed"]:
                row["pull"] = f"edge-run pull {e.id}"
            data.append(row)
        for r in cat.recipes.values():
            if r.id not in cat.entries:  # once exported (--add), the entry above stands for it
                data.append({"id": r.id, "object": "model", "created": 0, "owned_by": "edge-run", "task": r.task,
                             "format": r.format, "license": r.license, "installed": False, "loaded": False,
                             "recipe": True, "pull": f"edge-run pull {r.id}"})
        # pull_on_request: `serve --allow-pull` downloads a pinned model (not a recipe) on its first request
        return {"object": "list", "data": data, "pull_on_request": bool(getattr(rt, "auto_pull", False)),
                "ram_budget_bytes": rt.settings.ram_budget, "ram_used_bytes": rt.scheduler.ram_used()}

    @app.get("/metrics", response_class=PlainTextResponse, responses=ERROR_RESPONSES)
    def metrics():
        lines = ["# HELP edge_http_responses_total HTTP answers by route and status.",
                 "# TYPE edge_http_responses_total counter"]
        for (route, status), n in sorted(dict(app.state.http_counts).items()):
            lines.append(f'edge_http_responses_total{{route="{route}",status="{status}"}} {n}')
        return render_metrics(app.state.runtime) + "\n".join(lines) + "\n"

    for module in WORKLOAD_ROUTES:
        app.include_router(resolve(module).router)

    web = Path(__file__).resolve().parent.parent / "web"
    if (web / "index.html").is_file():
        from fastapi.staticfiles import StaticFiles

        app.mount("/ui", StaticFiles(directory=web, html=True), name="web")

        @app.get("/", include_in_schema=False)
        def root():  # the playground itself (its assets live under /ui/)
            return FileResponse(web / "index.html", headers={"Cache-Control": "no-cache"})

    app.state.routes.update(getattr(r, "path", "") for r in app.routes)

    def openapi() -> dict:
        """The schema with the bearer scheme declared (required when the server has a key)."""
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            schema.setdefault("components", {}).setdefault("securitySchemes", {})["bearerAuth"] = {
                "type": "http", "scheme": "bearer",
                "description": "`Authorization: Bearer <key>` when the server runs with --api-key / EDGE_API_KEY; "
                               "/health and the playground's files stay open."}
            for path, ops in schema.get("paths", {}).items():
                for op in ops.values():
                    op.get("responses", {}).pop("422", None)  # validation errors are 400s here
                    if path != "/health":
                        op["security"] = [{"bearerAuth": []}] if api_key else [{"bearerAuth": []}, {}]
            for unused in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(unused, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    app.state.routes.update(openapi()["paths"])  # so answers given before routing count by route too
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
        "# HELP edge_step_threads Threads the last step was given (follows the cores other programs leave free).",
        "# TYPE edge_step_threads gauge", f"edge_step_threads {m.threads_now or s.threads}",
        "# HELP edge_outside_cores Cores other programs keep busy (the scheduler's CPU sampler).",
        "# TYPE edge_outside_cores gauge",
        f"edge_outside_cores {s.cpu_load.outside if s.cpu_load is not None else 0.0:.2f}",
        "# HELP edge_thread_changes_total Changes of the per-step thread count.",
        "# TYPE edge_thread_changes_total counter", f"edge_thread_changes_total {m.thread_changes}",
        "# HELP edge_batch_share_seconds_total Seconds the interactive lane paused for a waiting batch job.",
        "# TYPE edge_batch_share_seconds_total counter", f"edge_batch_share_seconds_total {m.share_waits:.3f}",
        "# HELP edge_jobs_total Jobs submitted, by kind.", "# TYPE edge_jobs_total counter",
    ]
    for label in sorted(m.jobs):
        lines.append(f'edge_jobs_total{{kind="{label}"}} {m.jobs[label]}')
    return "\n".join(lines) + "\n"


def _cancel_all(rt) -> None:
    for h in rt.scheduler.jobs():
        h.cancel()


MALLOC_ARENAS = 2
"""glibc malloc arenas for `edge-run serve` (see bound_malloc_arenas)."""


def bound_malloc_arenas(n: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas at ``n`` for this long-running process; False where that is not glibc.

    glibc gives threads that allocate at once their own arenas (up to 8 per core) and each arena keeps its
    high-water mark; the server's ~35 threads (uvicorn's, the scheduler's workers, onnxruntime's and
    llama.cpp's pools) all touch large buffers. Measured with bench/soak.py (200 clients x 600 s, 2 cores):
    RSS grew +6.4 % after warm-up with glibc's default and +3.2 % with 2 arenas, with as many answers.
    MALLOC_ARENA_MAX in the environment wins (it is read when the process starts)."""
    import ctypes
    import ctypes.util
    import os

    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-8, int(n)))  # M_ARENA_MAX (malloc.h)
    except (OSError, AttributeError):
        return False


def serve(args) -> int:
    """`edge-run serve`: build the Runtime and run uvicorn until Ctrl-C / SIGTERM.

    SIGTERM / Ctrl-C drain: running and queued jobs are cancelled at once (streams end with a
    `cancelled` error event), open responses get DRAIN_SECONDS to finish, models are unloaded, exit 0.
    `serve` never downloads a model unless started with --allow-pull."""
    import os
    import signal
    import sys
    import threading

    import uvicorn

    from edge.api import Runtime
    from edge.config import Settings

    bound_malloc_arenas()  # before the Runtime starts its threads
    api_key = args.api_key or os.environ.get("EDGE_API_KEY") or None
    rt = Runtime(settings=Settings.from_args(args), auto_pull=bool(getattr(args, "allow_pull", False)))
    allowed = tuple(getattr(args, "allow_host", None) or ())
    if args.host not in ("0.0.0.0", "::", ""):
        allowed += (args.host,)
    app = create_app(rt, api_key=api_key, allowed_hosts=allowed)

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            # not here in the signal handler (the main thread may hold the scheduler's lock): a thread
            threading.Thread(target=_cancel_all, args=(rt,), name="edge-drain", daemon=True).start()
            if sig == signal.SIGTERM:  # a drained SIGTERM is a clean exit (uvicorn would re-raise it after)
                self.should_exit = True
                return
            super().handle_exit(sig, frame)

    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False,
                            timeout_graceful_shutdown=DRAIN_SECONDS)
    print(f"edge-run {__version__} serving on http://{args.host}:{args.port} (threads={rt.settings.threads}, "
          f"ram budget {rt.settings.ram_budget / 2**30:.1f} GiB{', API key required' if api_key else ''})",
          file=sys.stderr, flush=True)
    try:
        DrainingServer(config).run()
    finally:
        rt.close()
    return 0
