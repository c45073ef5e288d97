"""POST /v1/chat/completions and /v1/completions (OpenAI-compatible, SSE streaming)."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, AsyncIterator

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from edge.chat.request import ChatRequest, fingerprint
from edge.errors import BadRequest, EdgeError
from edge.server.jobs import JobStreamingResponse, job_events, wait_result
from edge.server.schemas import ERROR_RESPONSES, ChatCompletionBody, CompletionBody, SamplingFields

router = APIRouter(responses=ERROR_RESPONSES)


def _messages(body: ChatCompletionBody) -> list[dict[str, Any]]:
    out = []
    for i, m in enumerate(body.messages):
        content = m.content
        if isinstance(content, list):  # OpenAI content parts: keep the text ones
            texts = [p.get("text", "") for p in content if p.get("type") == "text"]
            if len(texts) != len(content):
                raise BadRequest(f"`messages[{i}].content` has non-text parts; this model takes text only.",
                                 param=f"messages[{i}].content")
            content = "".join(texts)
        msg: dict[str, Any] = {"role": m.role, "content": content}
        if m.tool_calls is not None:
            msg["tool_calls"] = m.tool_calls
        if m.tool_call_id is not None:
            msg["tool_call_id"] = m.tool_call_id
        out.append(msg)
    return out


def _schema(body: ChatCompletionBody) -> dict | None:
    rf = body.response_format
    if rf is None or rf.type == "text":
        return None
    if rf.type == "json_object":
        return rf.schema_ or {"type": "object"}
    schema = rf.json_schema.schema_ if rf.json_schema is not None else None
    if not isinstance(schema, dict):
        raise BadRequest("`response_format.json_schema.schema` must be a JSON Schema object.",
                         param="response_format")
    return schema


def _request(body: SamplingFields, messages: list[dict], schema: dict | None, prompt: str | None = None,
             tools: list[dict] | None = None, tool_choice: str | dict | None = None) -> ChatRequest:
    """The body mapped onto the chat request (checked once, by the Runtime)."""
    return ChatRequest(messages=messages, max_tokens=body.max_tokens, max_completion_tokens=body.max_completion_tokens,
                       temperature=body.temperature, top_p=body.top_p, top_k=body.top_k, min_p=body.min_p,
                       seed=body.seed, stop=[body.stop] if isinstance(body.stop, str) else list(body.stop or []),
                       json_schema=schema, repeat_penalty=body.repeat_penalty, n=body.n, prompt=prompt,
                       tools=tools, tool_choice=tool_choice)


def _tools(body: ChatCompletionBody) -> list[dict] | None:
    return None if body.tools is None else [t.model_dump(exclude_none=True) for t in body.tools]



async def _submit(submit, req: ChatRequest, body: SamplingFields):
    """``submit`` (Runtime.chat_job / complete_job) off the event loop: the request's check builds a grammar
    (milliseconds for a large schema) and the model is verified. Errors name the HTTP field."""
    try:
        return await run_in_threadpool(lambda: submit(req, model=body.model, keep_alive=body.keep_alive))
    except BadRequest as e:
        if e.param == "json_schema":  # the HTTP field is response_format
            e.param = "response_format"
        raise


STREAM_DOC = {200: {"description": "The answer; with `stream: true`, server-sent events of chunks ending "
                                   "with `data: [DONE]`.",
                    "content": {"text/event-stream": {"schema": {
                        "type": "object", "description": "one server-sent event",
                        "properties": {"event": {"type": "string"},
                                       "data": {"type": "string", "description": "a JSON chunk (or an OpenAI error "
                                                "object), then `[DONE]`"}},
                        "required": ["data"]}}}}}


@router.post("/v1/chat/completions", responses=STREAM_DOC)
async def chat_completions(body: ChatCompletionBody, request: Request):
    rt = request.app.state.runtime
    req = _request(body, _messages(body), _schema(body), tools=_tools(body), tool_choice=body.tool_choice)
    handle = await _submit(rt.chat_job, req, body)
    model_id = handle.model_id
    cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    head = {"id": cid, "created": created, "model": model_id, "system_fingerprint": fingerprint(req.seed)}
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        toolset = req.toolset if req.toolset is not None and req.toolset.active else None
        return JobStreamingResponse(_sse_chat(handle, head, include_usage, chat=True, toolset=toolset), handle,
                                    media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    res = await wait_result(handle, request)
    message: dict[str, Any] = {"role": "assistant", "content": res.text}
    if res.tool_calls:
        message = {"role": "assistant", "content": None, "tool_calls": res.tool_calls}
    return {**head, "object": "chat.completion",
            "choices": [{"index": 0, "message": message, "finish_reason": res.finish_reason, "logprobs": None}],
            "usage": res.usage()}


@router.post("/v1/completions", responses=STREAM_DOC)
async def completions(body: CompletionBody, request: Request):
    rt = request.app.state.runtime
    req = _request(body, [{"role": "user", "content": body.prompt}], None, prompt=body.prompt)
    handle = await _submit(rt.complete_job, req, body)
    head = {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": handle.model_id,
            "system_fingerprint": fingerprint(req.seed)}
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return JobStreamingResponse(_sse_chat(handle, head, include_usage, chat=False), handle,
                                    media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    res = await wait_result(handle, request)
    return {**head, "object": "text_completion",
            "choices": [{"index": 0, "text": res.text, "finish_reason": res.finish_reason, "logprobs": None}],
            "usage": res.usage()}


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def _sse_chat(handle, head: dict[str, Any], include_usage: bool, *, chat: bool, toolset=None
                    ) -> AsyncIterator[str]:
    """Server-sent events for a chat/completion job. A client that goes away cancels the job.

    With active tools (``toolset``), text that is or may become a call is held back (ToolSet.hold_back: all
    of a required call; under "auto" while it may still be one). At the end a call is sent as OpenAI's
    tool_calls deltas (the id, type and name, then the arguments), anything held back as content."""
    obj = "chat.completion.chunk" if chat else "text_completion"

    def chunk(delta_text: str | None, finish: str | None, first: bool = False, tool_calls: list | None = None
              ) -> dict:
        if chat:
            delta: dict[str, Any] = {"role": "assistant"} if first else {}
            if delta_text:
                delta["content"] = delta_text
            if tool_calls:
                delta["tool_calls"] = tool_calls
            choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        else:
            choice = {"index": 0, "text": delta_text or "", "finish_reason": finish, "logprobs": None}
        return {**head, "object": obj, "choices": [choice]}

    try:
        if chat:
            yield _sse(chunk("", None, first=True))
        held: list[str] | None = [] if toolset is not None else None  # text held back while it may be a call
        async for step in job_events(handle):  # awaited: no thread is held while the job waits
            if step.kind != "token" or not step.data:
                continue
            if held is None:
                yield _sse(chunk(step.data, None))
                continue
            held.append(step.data)
            if not toolset.hold_back("".join(held)):
                yield _sse(chunk("".join(held), None))
                held = None
        try:
            res = await wait_result(handle)
        except EdgeError as e:
            yield _sse(e.to_openai())
            return
        if res.tool_calls:
            for i, call in enumerate(res.tool_calls):
                fn = call["function"]
                yield _sse(chunk(None, None, tool_calls=[{"index": i, "id": call["id"], "type": "function",
                                                          "function": {"name": fn["name"], "arguments": ""}}]))
                yield _sse(chunk(None, None, tool_calls=[{"index": i, "function": {"arguments": fn["arguments"]}}]))
        elif held:
            yield _sse(chunk("".join(held), None))
        yield _sse(chunk(None, res.finish_reason))
        if include_usage:
            yield _sse({**head, "object": obj, "choices": [], "usage": res.usage()})
        yield "data: [DONE]\n\n"
    finally:
        if not handle.done:
            handle.cancel()
