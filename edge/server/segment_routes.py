"""POST /v1/segment: MobileSAM masks from point / box prompts.

Body: {"image": base64 (or a data: URL) | "image_id": from a previous answer, "points": [[x, y, label]],
"box": [x0, y0, x1, y1], "multimask": bool (default: only for a single point), "prev_mask": base64 PNG
of a previous mask to refine, "polygons": bool, "model": id}
Answer: {"image_id", "size": [h, w], "best": i, "encoder_ran": bool,
"masks": [{"png_b64", "rle": {"size": [h, w], "counts"}, "score", "bbox": [x0, y0, x1, y1], "area"}]}

The encoder runs as a batch-priority job only when the image is not cached; every click is an
interactive-priority decoder job, so it waits at most one step of other (e.g. image-generation) work.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool
from starlette.concurrency import run_in_threadpool

from edge.errors import BadRequest, PayloadTooLarge
from edge.segment import preprocess as pre
from edge.segment.engine import DecodeRequest, EmbeddingMissing
from edge.server.bodies import openapi_body, parse_off_loop
from edge.server.jobs import wait_result
from edge.server.schemas import ERROR_RESPONSES, MODEL_ID

router = APIRouter(responses=ERROR_RESPONSES)
MAX_IMAGE_B64 = 64 << 20  # characters of base64 accepted for one image
MAX_JSON_VALUES = 1024
"""JSON values a segment body may hold (points, box, flags): base64 strings contain no separators."""
Coord = Annotated[float, Field(ge=-1e9, le=1e9, allow_inf_nan=False)]


class SegmentBody(BaseModel):
    """One click (or box) on an image; the image is sent once, later clicks send its `image_id`."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)
    image: str | None = Field(None, max_length=MAX_IMAGE_B64, description="base64 image bytes or a data: URL")
    image_id: str | None = Field(None, pattern=r"^[0-9a-f]{32}$", description="from a previous answer")
    points: list[Annotated[list[Coord], Field(min_length=2, max_length=3)]] | None = Field(
        None, max_length=pre.MAX_POINTS, description="[[x, y, label]]: image pixels; label 1 object, 0 background")
    box: Annotated[list[Coord], Field(min_length=4, max_length=4)] | None = Field(
        None, description="[x0, y0, x1, y1] in image pixels")
    multimask: StrictBool | None = None
    prev_mask: str | None = Field(None, max_length=MAX_IMAGE_B64, description="base64 PNG mask of a previous answer")
    polygons: StrictBool = False
    model: Annotated[str, Field(pattern=MODEL_ID, max_length=128)] | None = None


def _b64(data: str, param: str) -> bytes:
    if len(data) > MAX_IMAGE_B64:
        raise PayloadTooLarge(f"`{param}` is {len(data):,} base64 characters; the limit is {MAX_IMAGE_B64:,}. "
                              f"Downscale the image below {pre.MAX_SIDE} px.", param=param)
    if data.startswith("data:"):
        data = data.partition(",")[2]
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"`{param}` is not valid base64 ({data[:24]!r}...); send the file's bytes base64-encoded.",
                         param=param) from None


def _prev_mask(data: str | None) -> np.ndarray | None:
    """The previous mask, refused by its header's size before decoding (like the image)."""
    if data is None:
        return None
    raw = _b64(data, "prev_mask")
    if not raw:
        raise BadRequest("`prev_mask` is empty; send a `png_b64` mask from a previous answer.", param="prev_mask")
    img = pre.open_checked(raw, "prev_mask")
    return np.asarray(img.convert("L")) > 127


@router.post("/v1/segment", openapi_extra=openapi_body(SegmentBody))
async def segment(request: Request) -> dict[str, Any]:
    rt = request.app.state.runtime
    # 1. check inputs (the body may be tens of MB: parsed and validated off the event loop)
    body = await parse_off_loop(request, SegmentBody, max_values=MAX_JSON_VALUES)
    if body.image is None and body.image_id is None:
        raise BadRequest("send `image` (base64) or an `image_id` returned by a previous /v1/segment call.",
                         param="image")
    img = None
    if body.image is not None:
        img = await run_in_threadpool(lambda: pre.load_image(_b64(body.image, "image")))
        if body.image_id is not None and body.image_id != img.image_id:
            raise BadRequest(f"`image_id` {body.image_id!r} does not match the image sent ({img.image_id}); "
                             "send one of them.", param="image_id")
        pre.parse_prompt(body.points, body.box, img.original_size, img.scale)
    elif not body.points and body.box is None:
        pre.parse_prompt(body.points, body.box, (1, 1))  # names the missing prompt before any work
    prev = await run_in_threadpool(_prev_mask, body.prev_mask)
    model_id = rt.resolve_model(body.model, task="segment")
    req = DecodeRequest(image_id=img.image_id if img is not None else body.image_id, points=body.points,
                        box=body.box, multimask=body.multimask, prev_mask=prev)
    # 2. decode (interactive); encode first (batch) when the embedding is not cached
    encoder_ran = False
    try:
        result = await wait_result(rt.decode_job(req, model=model_id), request)
    except EmbeddingMissing:
        if img is None:
            raise
        _, encoder_ran = await wait_result(rt.embed_job(img, model=model_id), request)
        result = await wait_result(rt.decode_job(req, model=model_id), request)
    result.encoder_ran = encoder_ran
    # 3. answer
    out = await run_in_threadpool(result.to_dict, png=True, polygons=body.polygons)
    out["encoder_ran"] = encoder_ran
    out["model"] = model_id
    return out
