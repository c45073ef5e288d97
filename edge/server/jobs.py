"""Waiting on scheduler jobs from async routes without holding a thread.

A waiting request holds no worker thread (anyio has 40; 75 waiting chats used to starve /health of
them): the job's handle wakes the event loop through ``add_listener`` after each step and at the end,
and the route reads the steps with ``take_events``. Client disconnects cancel the job.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

from fastapi import Request
from fastapi.responses import StreamingResponse

DISCONNECT_POLL = 0.25
"""Seconds between checks that a non-streaming client is still there."""


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


def _waker(handle) -> asyncio.Event:
    """An asyncio.Event set (from the scheduler's thread, safely) whenever ``handle`` makes progress."""
    loop = asyncio.get_running_loop()
    ev = asyncio.Event()

    def wake() -> None:
        try:
            loop.call_soon_threadsafe(ev.set)
        except RuntimeError:  # the loop is closed (server shutting down)
            pass

    handle.add_listener(wake)
    return ev


async def job_events(handle) -> AsyncIterator[Any]:
    """The job's steps as they happen, awaited (no thread held); ends when the job ends."""
    ev = _waker(handle)
    while True:
        ev.clear()
        steps, ended = handle.take_events()
        for s in steps:
            yield s
        if ended:
            return
        if not steps:
            await ev.wait()


async def wait_result(handle, request: Request | None = None) -> Any:
    """The job's result (or its error, raised); cancelled if the HTTP client disconnects first."""
    ev = _waker(handle)
    try:
        while not handle.done:
            try:
                await asyncio.wait_for(ev.wait(), timeout=DISCONNECT_POLL)
            except asyncio.TimeoutError:
                if request is not None and await request.is_disconnected():
                    handle.cancel()
            ev.clear()
        return handle.result(timeout=0)
    finally:
        if not handle.done:
            handle.cancel()
