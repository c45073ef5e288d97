"""POST /v1/images/generations — OpenAI's images API shape, served by the LCM image engine.

Body: {"prompt", "n": 1, "size": "512x512", "response_format": "b64_json", "model": id,
       extra: "steps": 4, "seed": int, "guidance_scale": 8.0, "decoder": "vae"|"taesd"}
Answer: {"created": unix time, "data": [{"b64_json": PNG base64 (prompt/seed/steps/model in text chunks),
         "revised_prompt": null}]}

The job runs at batch priority, so chat tokens and segmentation clicks stay interactive while an
image renders; a client that disconnects cancels its job.
"""

from __future__ import annotations

import base64
import io
import time
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool

from edge.errors import BadRequest
from edge.image.pipeline import png_info
from edge.server.jobs import wait_result

router = APIRouter()


class ImageGenerationBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    prompt: Any = None
    n: Any = 1
    size: Any = None
    response_format: Any = "b64_json"
    model: str | None = None
    steps: Any = 4
    seed: Any = None
    guidance_scale: Any = 8.0
    decoder: Any = None


def _png_b64(img) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG", pnginfo=png_info(img))
    return base64.b64encode(buf.getvalue()).decode("ascii")


@router.post("/v1/images/generations")
async def images_generations(body: ImageGenerationBody, request: Request) -> dict:
    rt = request.app.state.runtime
    # 1. check the OpenAI-level fields (the rest is checked by Runtime.imagine_job)
    if body.response_format not in (None, "b64_json"):
        raise BadRequest(f"`response_format` {body.response_format!r} is not supported; edge-run serves no image "
                         "URLs. Use \"b64_json\".", param="response_format")
    if body.prompt is None or not isinstance(body.prompt, str):
        raise BadRequest(f"`prompt` must be a string, got {body.prompt!r}.", param="prompt")
    for name in ("n", "steps", "seed"):
        v = getattr(body, name)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool)):
            raise BadRequest(f"`{name}` must be an integer, got {v!r}.", param=name)
    if body.guidance_scale is not None and (not isinstance(body.guidance_scale, (int, float))
                                            or isinstance(body.guidance_scale, bool)):
        raise BadRequest(f"`guidance_scale` must be a number, got {body.guidance_scale!r}.", param="guidance_scale")
    if body.decoder not in (None, "vae", "taesd"):
        raise BadRequest(f"`decoder` {body.decoder!r} must be \"vae\" or \"taesd\".", param="decoder")
    # 2. submit at batch priority and wait (cancelled if the client goes away)
    handle = rt.imagine_job(body.prompt, model=body.model, size=body.size, steps=body.steps,
                            n=body.n if body.n is not None else 1, seed=body.seed,
                            guidance_scale=float(body.guidance_scale if body.guidance_scale is not None else 8.0),
                            decoder=body.decoder)
    images = await wait_result(handle, request)
    encoded = await run_in_threadpool(lambda: [_png_b64(img) for img in images])
    return {"created": int(time.time()), "data": [{"b64_json": b, "revised_prompt": None} for b in encoded]}
