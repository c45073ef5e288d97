"""Helpers to wait on scheduler jobs from async routes without blocking the event loop."""

from __future__ import annotations

import asyncio
from typing import Any, Iterator

from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool


class JobStreamingResponse(StreamingResponse):
    """A streaming response tied to a scheduler job: however the response ends (done, error, or the
    client going away — the body iterator may be left suspended then), the job is cancelled."""

    def __init__(self, content, handle, **kw):
        super().__init__(content, **kw)
        self.handle = handle

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if not self.handle.done:
                self.handle.cancel()


def next_event(events: Iterator) -> Any:
    """next() for use in a thread: None at the end instead of StopIteration."""
    return next(events, None)


async def wait_result(handle, request: Request, poll: float = 0.25) -> Any:
    """The job's result; the job is cancelled if the HTTP client disconnects first."""
    task = asyncio.ensure_future(run_in_threadpool(handle.result))
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=poll)
            if done:
                return task.result()
            if await request.is_disconnected():
                handle.cancel()
    finally:
        if not handle.done:
            handle.cancel()
