"""GET /v1/jobs: what the shared scheduler is doing right now, for progress indicators.

Answer: {"object": "list", "data": [{"id", "label", "model", "state": "queued"|"running", "priority":
"interactive"|"batch", "steps_done", "steps_total" (null when unknown), "seconds", "cancelled"}]}

The playground polls it while POST /v1/images/generations (which answers only when the image is
done) is pending, to show one tick per UNet step. An image job's total is known from its request:
text encode + one UNet call per step + one decode per image.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request

from edge.jobs import Priority
from edge.server.schemas import ERROR_RESPONSES

router = APIRouter(responses=ERROR_RESPONSES)


def _steps_total(spec) -> int | None:
    meta = spec.meta or {}
    if spec.label == "image" and isinstance(meta.get("steps"), int) and isinstance(meta.get("n"), int):
        return 1 + meta["steps"] + meta["n"]
    return None


def job_rows(rt) -> list[dict[str, Any]]:
    """A snapshot of the runtime's queued and running jobs, oldest first."""
    now = time.monotonic()
    rows = []
    for h in rt.jobs():
        total = _steps_total(h.spec)
        rows.append({"id": h.id, "label": h.spec.label or "job", "model": h.spec.model_id,
                     "state": h.state if h.state in ("queued", "running") else "running",
                     "priority": "interactive" if h.spec.priority == Priority.INTERACTIVE else "batch",
                     "steps_done": h.steps if total is None else min(h.steps, total), "steps_total": total,
                     "seconds": round(now - h.submitted, 2), "cancelled": h.cancelled})
    return rows


@router.get("/v1/jobs")
def jobs(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": job_rows(request.app.state.runtime)}
