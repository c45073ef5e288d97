"""Request-body parsing errors in one voice, and parsing off the event loop for large bodies.

FastAPI parses JSON bodies on the event loop; that is fine for the small chat bodies (capped at 2 MB
by guard.BodyLimit) but not for /v1/segment, whose body may be tens of MB: a million points took the
loop for over a second, and /health with it. Such routes take ``request`` and call
:func:`parse_off_loop`, which parses and validates in a worker thread with the same error messages.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from edge.errors import BadRequest, PayloadTooLarge

M = TypeVar("M", bound=BaseModel)


def malformed_json(pos: int | None = None, detail: str = "") -> BadRequest:
    where = f" near byte {pos}" if pos is not None else ""
    why = f" ({detail})" if detail else ""
    return BadRequest(f"the request body is not valid JSON{where}{why}. Send one JSON object with "
                      "`Content-Type: application/json`.", param="body", code="invalid_json")


def validation_error(errors: list[dict[str, Any]]) -> BadRequest:
    """The first pydantic/FastAPI validation error as a BadRequest naming the field, the value and the rule."""
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        loc = first.get("loc") or ()
        pos = loc[-1] if loc and isinstance(loc[-1], int) else None
        return malformed_json(pos, str((first.get("ctx") or {}).get("error", "")))
    loc = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    msg = first.get("msg", "invalid value")
    if not loc:
        return BadRequest(f"the request body is not usable: {msg}. Send one JSON object with the documented fields "
                          "(see /docs).", param="body")
    text = f"`{loc}`: {msg}"
    if "input" in first and first.get("type") != "missing":
        shown = repr(first["input"])
        text += f", got {shown[:80]}{'...' if len(shown) > 80 else ''}"
    return BadRequest(text + ". See /docs for the field's type and range.", param=loc)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_model(raw: bytes, model: type[M], max_values: int | None = None) -> M:
    """Parse and validate a JSON body; BadRequest naming what is wrong (never a 422, never a 500).

    ``max_values`` bounds the JSON values (counted by their separators, before parsing: json.loads
    holds the GIL, so even in a worker thread a huge array would stall the event loop)."""
    if max_values is not None:
        n = raw.count(b",") + raw.count(b"[") + raw.count(b"{")
        if n > max_values:
            raise PayloadTooLarge(f"the request body holds about {n:,} JSON values; this route accepts at most "
                                  f"{max_values:,} (e.g. `points` takes at most 64 points). Send fewer.", param="body")
    try:
        obj = json.loads(raw, parse_constant=_no_constant) if raw else None
    except RecursionError:
        raise malformed_json(detail="nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, NaN/Infinity
        raise malformed_json(getattr(e, "pos", None), getattr(e, "msg", None) or str(e)[:80]) from None
    if not isinstance(obj, dict):
        raise BadRequest(f"the request body must be a JSON object, got {type(obj).__name__ if obj is not None else 'nothing'}."
                         " See /docs for its fields.", param="body")
    try:
        return model.model_validate(obj)
    except ValidationError as e:
        raise validation_error(e.errors(include_url=False)) from None


async def parse_off_loop(request: Request, model: type[M], max_values: int | None = None) -> M:
    """``model`` from the request's JSON body, parsed and validated in a worker thread."""
    raw = await request.body()
    return await run_in_threadpool(parse_model, raw, model, max_values)


def openapi_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` that documents ``model`` as the JSON body of a route that parses it itself."""
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": model.model_json_schema(ref_template="#/components/schemas/{model}")}}}}
