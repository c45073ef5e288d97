"""The segmentation part of the Python API (mixed into edge.api.Runtime).

    from edge.api import Runtime
    with Runtime() as rt:
        rt.embed("photo.jpg")                                   # optional: warm the cache
        res = rt.segment("photo.jpg", points=[(320, 240, 1)])   # encoder skipped: cached
        res.mask, res.masks[res.best].score, res.masks[0].bbox
        res2 = rt.segment("photo.jpg", points=[(320, 240, 1), (100, 80, 0)], prev_mask=res)  # refine
"""

from __future__ import annotations

import time
from typing import Any, Sequence

from edge.jobs import JobSpec, Priority
from edge.scheduler import JobHandle
from edge.segment import preprocess as pre
from edge.segment.engine import DecodeRequest, EmbeddingMissing
from edge.segment.postprocess import SegmentResult
from edge.errors import BadRequest


class SegmentAPI:
    """Runtime.segment / embed. Needs ``self.submit`` and ``self.resolve_model`` from RuntimeCore."""

    # -- jobs (the server awaits these handles itself) ------------------------------------------
    def embed_job(self, image: Any, *, model: str | None = None, keep_alive: float | None = None) -> JobHandle:
        """Submit the image encoder (batch priority); the result is (Embedding, encoder_ran)."""
        img = pre.load_image(image)
        model_id = self.resolve_model(model, task="segment")
        return self.submit(JobSpec(model_id=model_id, work=lambda engine: engine.embed_steps(img),
                                   priority=Priority.BATCH, keep_alive=keep_alive, label="segment_embed"))

    def decode_job(self, req: DecodeRequest, *, model: str | None = None,
                   keep_alive: float | None = None) -> JobHandle[SegmentResult]:
        """Submit one prompt decode (interactive priority) for an embedded image."""
        model_id = self.resolve_model(model, task="segment")
        return self.submit(JobSpec(model_id=model_id, work=lambda engine: engine.decode_steps(req),
                                   priority=Priority.INTERACTIVE, keep_alive=keep_alive, label="segment_decode"))

    # -- blocking calls -----------------------------------------------------------------------
    def embed(self, image: Any, *, model: str | None = None) -> dict[str, Any]:
        """Encode ``image`` into the embedding cache (no-op if cached). Returns its ``image_id`` (pass it
        to ``segment(image_id=...)``), sizes, and whether the encoder ran."""
        img = pre.load_image(image)
        emb, ran = self.embed_job(img, model=model).result()
        return {"image_id": emb.image_id, "size": list(emb.size), "original_size": list(emb.original_size),
                "scale": emb.scale, "encoder_ran": ran}

    def segment(self, image: Any = None, points: Sequence[Sequence[float]] | None = None,
                box: Sequence[float] | None = None, *, multimask: bool | None = None, prev_mask: Any = None,
                image_id: str | None = None, model: str | None = None) -> SegmentResult:
        """Masks for point / box prompts on ``image`` (a path, bytes, PIL image or array) or on a
        previously embedded ``image_id``.

        points: [(x, y, label)] in image pixels, label 1 = object, 0 = background (default 1).
        box: (x0, y0, x1, y1). multimask: three candidate masks (default: only for a single point).
        prev_mask: a previous SegmentResult / Mask (or 256x256 logits, or an HxW mask) to refine.
        Returns a SegmentResult: ``.masks`` (mask, score, bbox, area, rle()), ``.best``, ``.mask``.
        """
        # 1. check inputs (before any model work)
        if image is None and image_id is None:
            raise BadRequest("give `image` (a path, bytes, PIL image or array) or an `image_id` from embed().",
                             param="image")
        t0 = time.perf_counter()
        img = pre.load_image(image) if image is not None else None
        if img is not None:
            if image_id is not None and image_id != img.image_id:
                raise BadRequest(f"`image_id` {image_id!r} does not match the image sent ({img.image_id}); "
                                 "send one of them.", param="image_id")
            pre.parse_prompt(points, box, img.original_size, img.scale)
            image_id = img.image_id
        req = DecodeRequest(image_id=image_id, points=list(points) if points is not None else None, box=box,
                            multimask=multimask, prev_mask=prev_mask)
        # 2. decode at once if the embedding is cached; otherwise encode (batch) and decode (interactive)
        encoder_ran = False
        try:
            result = self.decode_job(req, model=model).result()
        except EmbeddingMissing:
            if img is None:
                raise
            _, encoder_ran = self.embed_job(img, model=model).result()
            result = self.decode_job(req, model=model).result()
        result.encoder_ran = encoder_ran
        result.timings["total_s"] = time.perf_counter() - t0
        return result

    def segment_stats(self, *, model: str | None = None) -> dict[str, int]:
        """Encoder / decoder call counts and embedding-cache figures of the loaded segment model."""
        model_id = self.resolve_model(model, task="segment")
        return self.submit(JobSpec(model_id=model_id, work=lambda engine: engine.stats_steps(),
                                   priority=Priority.INTERACTIVE, label="segment_stats")).result()
