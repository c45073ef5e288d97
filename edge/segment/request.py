"""Segmentation request types and their checks, run once at the door (Runtime.segment_job / embed_job);
the server's pydantic body carries the same limits into OpenAPI."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge.errors import BadRequest
from edge.segment import preprocess as pre

MAX_POINTS = pre.MAX_POINTS
MAX_SIDE = pre.MAX_SIDE
UNBOUNDED = (2**31, 2**31)
"""The image size prompts are checked against when only an ``image_id`` is sent (the engine checks them
against the cached image's size): their shape, numbers and labels are still checked at the door."""


class EmbeddingMissing(BadRequest):
    """The image id is not (or no longer) in the embedding cache."""

    code = "image_not_cached"

    @classmethod
    def for_image(cls, image_id: str) -> "EmbeddingMissing":
        return cls(f"`image_id` {image_id!r} is not in the embedding cache (never sent, or evicted); send the image "
                   "itself again.", param="image_id")


@dataclass
class DecodeRequest:
    """One click: prompts in original-image pixels, for an image already embedded."""

    image_id: str
    points: list | None = None
    box: Any = None
    multimask: bool | None = None       # None = auto: True for a single point without a box
    prev_mask: Any = None

    def wants_multimask(self) -> bool:
        if self.multimask is not None:
            return bool(self.multimask)
        return self.box is None and len(self.points or []) == 1


@dataclass
class SegmentRequest:
    """Masks for point / box prompts on ``image`` (a path, bytes, PIL image, array or LoadedImage) or on a
    previously embedded ``image_id``.

    points: [(x, y, label)] in image pixels, label 1 = object, 0 = background (default 1).
    box: (x0, y0, x1, y1). multimask: three candidate masks (default: only for a single point).
    prev_mask: a previous SegmentResult / Mask, 256x256 logits, an HxW mask, or a mask PNG's bytes, to refine.
    """

    image: Any = None
    image_id: str | None = None
    points: Any = None
    box: Any = None
    multimask: bool | None = None
    prev_mask: Any = None
    loaded: pre.LoadedImage | None = field(default=None, repr=False)  # the decoded image, set by check()

    def check(self) -> "SegmentRequest":
        """Decode the image and check every field before any model work; BadRequest naming the field, the
        value and the fix. Returns self."""
        # 1. an image or the id of an embedded one
        if self.image is None and self.image_id is None:
            raise BadRequest("give `image` (a path, bytes, PIL image or array; over HTTP, send `image` base64) or "
                             "an `image_id` returned by embed() or a previous /v1/segment call.", param="image")
        # 2. the image: refused by its header's size before decoding, huge ones downscaled
        if self.image is not None and self.loaded is None:
            self.loaded = pre.load_image(self.image)
        if self.loaded is not None:
            if self.image_id is not None and self.image_id != self.loaded.image_id:
                raise BadRequest(f"`image_id` {self.image_id!r} does not match the image sent "
                                 f"({self.loaded.image_id}); send one of them.", param="image_id")
            self.image_id = self.loaded.image_id
        # 3. prompts, in the image's pixels
        if self.loaded is not None:
            pre.parse_prompt(self.points, self.box, self.loaded.original_size, self.loaded.scale)
        else:
            pre.parse_prompt(self.points, self.box, UNBOUNDED)
        if self.points is not None:
            self.points = list(self.points)
        # 4. a previous mask sent as PNG bytes (refused by its header's size, like the image)
        if isinstance(self.prev_mask, (bytes, bytearray, memoryview)):
            if not self.prev_mask:
                raise BadRequest("`prev_mask` is empty; send a `png_b64` mask from a previous answer.",
                                 param="prev_mask")
            self.prev_mask = np.asarray(pre.open_checked(bytes(self.prev_mask), "prev_mask").convert("L")) > 127
        return self

    def decode_request(self) -> DecodeRequest:
        """The decoder's part of a checked request."""
        return DecodeRequest(image_id=self.image_id, points=self.points, box=self.box, multimask=self.multimask,
                             prev_mask=self.prev_mask)
