"""The chat part of the Python API (mixed into edge.api.Runtime)."""

from __future__ import annotations

from typing import Iterator

from edge.chat.request import ChatRequest, ChatResult
from edge.jobs import JobSpec, Priority
from edge.scheduler import JobHandle


class ChatAPI:
    """Runtime.chat / chat_job. Needs ``self.submit`` and ``self.resolve_model`` from RuntimeCore."""

    def chat_job(self, messages: list[dict], *, model: str | None = None, max_tokens: int | None = None,
                 temperature: float = 0.8, top_p: float = 0.95, top_k: int = 40, min_p: float = 0.05,
                 seed: int | None = None, stop: list[str] | str | None = None, json_schema: dict | None = None,
                 repeat_penalty: float = 1.0, priority: Priority = Priority.INTERACTIVE,
                 keep_alive: float | None = None) -> JobHandle[ChatResult]:
        """Submit a chat turn; the handle's events are Step("prefill") and Step("token", data=text)."""
        req = ChatRequest(messages=messages, max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                          top_k=top_k, min_p=min_p, seed=seed,
                          stop=[stop] if isinstance(stop, str) else list(stop or []),
                          json_schema=json_schema, repeat_penalty=repeat_penalty).check()
        model_id = self.resolve_model(model, task="chat")
        return self.submit(JobSpec(model_id=model_id, work=lambda engine: engine.chat_steps(req),
                                   priority=priority, keep_alive=keep_alive, label="chat"))

    def chat(self, messages: list[dict], *, stream: bool = False, **kw) -> ChatResult | Iterator[str]:
        """Answer a conversation.

        ``stream=False`` returns a ChatResult (``.text``, ``.usage()``, ``.finish_reason``);
        ``stream=True`` returns an iterator of text pieces as they are generated (closing it early
        cancels the job). Keyword arguments are those of :meth:`chat_job`.
        """
        handle = self.chat_job(messages, **kw)
        if stream:
            return stream_text(handle)
        return handle.result()


def stream_text(handle: JobHandle) -> Iterator[str]:
    """Text pieces of a chat job; cancels the job if the consumer stops early."""
    try:
        for step in handle.events():
            if step.kind == "token" and step.data:
                yield step.data
        handle.result()  # re-raise the job's error, if any
    finally:
        if not handle.done:
            handle.cancel()
