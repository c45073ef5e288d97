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
import time

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from edge.image.png import png_bytes
from edge.image.request import ImageRequest, parse_size
from edge.server.jobs import wait_result
from edge.server.schemas import ERROR_RESPONSES, ImageGenerationBody

router = APIRouter(responses=ERROR_RESPONSES)


def _png_b64(img) -> str:
    return base64.b64encode(png_bytes(img)).decode("ascii")


@router.post("/v1/images/generations")
async def images_generations(body: ImageGenerationBody, request: Request) -> dict:
    rt = request.app.state.runtime
    # 1. types are checked by the typed body; values and ranges by Runtime.imagine_job (one voice), and
    # 2. the job is submitted at batch priority; waiting is awaited (cancelled if the client goes away)
    req = ImageRequest(body.prompt, *parse_size(body.size), steps=body.steps, n=body.n, seed=body.seed,
                       guidance_scale=body.guidance_scale, decoder=body.decoder)
    handle = await run_in_threadpool(lambda: rt.imagine_job(req, model=body.model))
    images = await wait_result(handle, request)
    encoded = await run_in_threadpool(lambda: [_png_b64(img) for img in images])
    return {"created": int(time.time()), "data": [{"b64_json": b, "revised_prompt": None} for b in encoded]}
