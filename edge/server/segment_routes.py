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

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool
from starlette.concurrency import run_in_threadpool

from edge.errors import BadRequest, PayloadTooLarge
from edge.segment.request import MAX_POINTS, MAX_SIDE, SegmentRequest
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
        None, max_length=MAX_POINTS, description="[[x, y, label]]: image pixels; label 1 object, 0 background")
    box: Annotated[list[Coord], Field(min_length=4, max_length=4)] | None = Field(
        None, description="[x0, y0, x1, y1] in image pixels")
    multimask: StrictBool | None = None
    prev_mask: str | None = Field(None, max_length=MAX_IMAGE_B64, description="base64 PNG mask of a previous answer")
    polygons: StrictBool = False
    model: Annotated[str, Field(pattern=MODEL_ID, max_length=128)] | None = None


def _b64(data: str, param: str) -> bytes:
    if len(data) > MAX_IMAGE_B64:
        raise PayloadTooLarge(f"`{param}` is {len(data):,} base64 characters; the limit is {MAX_IMAGE_B64:,}. "
                              f"Downscale the image below {MAX_SIDE} px.", param=param)
    if data.startswith("data:"):
        data = data.partition(",")[2]
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"`{param}` is not valid base64 ({data[:24]!r}...); send the file's bytes base64-encoded.",
                         param=param) from None


@router.post("/v1/segment", openapi_extra=openapi_body(SegmentBody))
async def segment(request: Request) -> dict[str, Any]:
    rt = request.app.state.runtime
    # 1. the body (it may be tens of MB: parsed and validated off the event loop), mapped onto the request
    body = await parse_off_loop(request, SegmentBody, max_values=MAX_JSON_VALUES)
    req = SegmentRequest(image_id=body.image_id, points=body.points, box=body.box, multimask=body.multimask)
    # 2. Runtime.segment_job checks it (decoding the image: off the event loop) and runs the click: the
    #    decoder (interactive) at once if the image is cached, else the encoder (batch) first
    def submit():
        req.image = _b64(body.image, "image") if body.image is not None else None
        req.prev_mask = _b64(body.prev_mask, "prev_mask") if body.prev_mask is not None else None
        return rt.segment_job(req, model=body.model)

    handle = await run_in_threadpool(submit)
    result = await wait_result(handle, request)
    # 3. answer
    out = await run_in_threadpool(result.to_dict, png=True, polygons=body.polygons)
    out["encoder_ran"] = result.encoder_ran
    out["model"] = handle.model_id
    return out
