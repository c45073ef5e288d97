"""The segmentation workload's jobs, behind Runtime.segment_job / embed_job / segment / embed (edge/api.py):

    from edge.api import Runtime
    with Runtime() as rt:
        rt.embed("photo.jpg")                                   # optional: warm the cache
        res = rt.segment("photo.jpg", points=[(320, 240, 1)])   # encoder skipped: cached
        res.mask, res.masks[res.best].score, res.masks[0].bbox
        res2 = rt.segment("photo.jpg", points=[(320, 240, 1), (100, 80, 0)], prev_mask=res)  # refine

A click is a chain of jobs (:func:`segment_stages`), the one place that says how a click runs: decode at
once (interactive) when the image's embedding is cached; otherwise encode it (batch priority: the heavy
encoder must not hold up other clicks or chat tokens) and then decode (interactive).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from edge.jobs import JobChain, JobSpec, Priority, Stage, StepGen
from edge.segment import preprocess as pre
from edge.segment.request import DecodeRequest, EmbeddingMissing, SegmentRequest

if TYPE_CHECKING:
    from edge.api import Runtime
    from edge.segment.postprocess import SegmentResult


def decode_if_cached(engine, req: DecodeRequest) -> "StepGen[SegmentResult | None]":
    """One decoder call, or None (no step, no error) when the image is not in the embedding cache."""
    if req.image_id not in engine.cache:
        return None
    try:
        return (yield from engine.decode_steps(req))
    except EmbeddingMissing:  # evicted since the look above (the decoder's lookup comes before any step)
        return None


def embed_spec(model_id: str, image: "pre.LoadedImage", keep_alive: float | None = None) -> JobSpec:
    """The image encoder as a batch job; its result is (Embedding, encoder_ran)."""
    return JobSpec(model_id=model_id, work=lambda engine: engine.embed_steps(image), priority=Priority.BATCH,
                   keep_alive=keep_alive, label="segment_embed")


def segment_stages(model_id: str, req: SegmentRequest, keep_alive: float | None = None) -> "Stage[SegmentResult]":
    """The jobs of one click (see the module docstring); ``req`` is checked."""
    t0 = time.perf_counter()
    decode = req.decode_request()

    def decode_spec() -> JobSpec:
        return JobSpec(model_id=model_id, work=lambda engine: decode_if_cached(engine, decode),
                       priority=Priority.INTERACTIVE, keep_alive=keep_alive, label="segment_decode")

    # 1. decode at once if the embedding is cached
    result = yield decode_spec()
    encoder_ran = False
    if result is None:
        # 2. otherwise encode the image (batch), then decode (interactive)
        if req.loaded is None:
            raise EmbeddingMissing.for_image(decode.image_id)
        _, encoder_ran = yield embed_spec(model_id, req.loaded, keep_alive)
        result = yield decode_spec()
        if result is None:  # evicted at once: a cache smaller than one embedding
            raise EmbeddingMissing.for_image(decode.image_id)
    result.encoder_ran = encoder_ran
    result.timings["total_s"] = time.perf_counter() - t0
    return result


def segment_job(rt: "Runtime", req: SegmentRequest, *, model: str | None = None,
                keep_alive: float | None = None) -> "JobChain[SegmentResult]":
    """Check ``req`` once (the image is decoded here), then run :func:`segment_stages`."""
    # 1. check inputs, before any model work
    req.check()
    # 2. the model: resolved and installed once per request
    model_id = rt.model_for(model, task="segment")
    # 3. the chain: its first job passes the Runtime's checks, the next ones are queued as each job ends
    stages = segment_stages(model_id, req, keep_alive)
    return JobChain(rt.scheduler.submit, stages, first=rt.submit(next(stages)), model_id=model_id)


def embed_job(rt: "Runtime", image, *, model: str | None = None, keep_alive: float | None = None):
    """Encode ``image`` into the embedding cache (batch priority); the result is (Embedding, encoder_ran)."""
    loaded = pre.load_image(image)  # the image's checks (format, size), once
    model_id = rt.model_for(model, task="segment")
    return rt.submit(embed_spec(model_id, loaded, keep_alive))
