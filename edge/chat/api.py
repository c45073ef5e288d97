"""The chat workload's jobs, behind Runtime.chat_job / complete_job / chat (edge/api.py): one checked
ChatRequest becomes one interactive scheduler job."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

from edge.chat.request import ChatRequest, ChatResult
from edge.jobs import JobSpec, Priority

if TYPE_CHECKING:
    from edge.api import Runtime
    from edge.scheduler import JobHandle


def chat_job(rt: "Runtime", req: ChatRequest, *, model: str | None = None, priority: Priority = Priority.INTERACTIVE,
             keep_alive: float | None = None) -> "JobHandle[ChatResult]":
    """Check ``req`` (once: the grammar of a json_schema is built here), install the model if needed, submit.
    A request with ``prompt`` is a raw completion (no chat template), as /v1/completions asks."""
    # 1. check inputs, before the model is touched
    req.check()
    # 2. the model: resolved and installed once per request
    model_id = rt.model_for(model, task="chat")
    # 3. submit
    if req.prompt is not None:
        prompt = req.prompt
        return rt.submit(JobSpec(model_id=model_id, work=lambda engine: engine.complete_steps(prompt, req),
                                 priority=priority, keep_alive=keep_alive, label="completion"))
    return rt.submit(JobSpec(model_id=model_id, work=lambda engine: engine.chat_steps(req),
                             priority=priority, keep_alive=keep_alive, label="chat"))


def stream_text(handle: "JobHandle") -> Iterator[str]:
    """Text pieces of a chat job; cancels the job if the consumer stops early."""
    try:
        for step in handle.events():
            if step.kind == "token" and step.data:
                yield step.data
        handle.result()  # re-raise the job's error, if any
    finally:
        if not handle.done:
            handle.cancel()
