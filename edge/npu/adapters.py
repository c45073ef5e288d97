"""Session adapters for NPU artifacts: they present the interface the engines already use
(``run(output_names, feeds)``, ``get_inputs()``, ``get_outputs()``) over graphs that were changed for the
NPU, so image and segment engines need no NPU-specific code.

- :class:`StaticSession`   checks feeds against the compiled static shapes (a clear BadRequest naming
                           the input, the shape given and the shape the model was compiled for)
- :class:`SamLowResDecoder` MobileSAM's decoder without its shape-dependent tail: the NPU graph returns
                           ``low_res_masks`` and ``iou_predictions``; the upscale to 1024, the crop to
                           the resized image and the resize to the original size (``masks``) run here, in
                           numpy, exactly as the exported graph's two bilinear Resize nodes do. One compiled
                           graph per number of prompt points (static shapes), made on first use.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from edge.errors import BadRequest


@dataclass
class IO:
    """What ``get_inputs()`` / ``get_outputs()`` items look like (name, shape, type)."""

    name: str
    shape: list
    type: str = "tensor(float)"


class StaticSession:
    """Wraps a session whose inputs have fixed shapes; refuses other shapes with a clear message."""

    def __init__(self, session: Any, *, label: str, hint: str = ""):
        self.session = session
        self.label = label
        self.hint = hint
        self.static = {i.name: list(i.shape) for i in session.get_inputs()
                       if all(isinstance(d, int) and d > 0 for d in i.shape)}
        self.placement: dict = getattr(session, "edge_placement", {})

    def get_inputs(self):
        return self.session.get_inputs()

    def get_outputs(self):
        return self.session.get_outputs()

    def get_providers(self):
        return self.session.get_providers()

    def run(self, output_names, feeds, *args, **kw):
        for name, value in feeds.items():
            want = self.static.get(name)
            got = list(np.shape(value))
            if want is not None and got != want:
                raise BadRequest(f"{self.label}: input {name!r} has shape {got} but this NPU model was compiled for "
                                 f"the static shape {want}. {self.hint}".strip(), param=name)
        return self.session.run(output_names, feeds, *args, **kw)


# -- MobileSAM decoder ---------------------------------------------------------------------------

def linear_resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) matrix of onnx Resize(mode=linear, coordinate_transformation_mode=half_pixel)
    along one axis (= torch bilinear, align_corners=False, no antialias)."""
    scale = n_out / n_in
    x = (np.arange(n_out, dtype=np.float64) + 0.5) / scale - 0.5
    x = np.clip(x, 0, n_in - 1)
    x0 = np.floor(x).astype(np.int64)
    x1 = np.minimum(x0 + 1, n_in - 1)
    w1 = x - x0
    m = np.zeros((n_out, n_in), np.float64)
    m[np.arange(n_out), x0] += 1 - w1
    m[np.arange(n_out), x1] += w1
    return m


def sam_masks_from_low_res(low_res: np.ndarray, orig_size: tuple[int, int], img_size: int = 1024) -> np.ndarray:
    """upstream ``SamOnnxModel.mask_postprocessing``: low-res logits (B, C, 256, 256) -> bilinear to
    (img_size, img_size) -> crop to the longest-side-resized image -> bilinear to the original size."""
    h, w = int(orig_size[0]), int(orig_size[1])
    scale = img_size / max(h, w)
    ph, pw = int(np.floor(h * scale + 0.5)), int(np.floor(w * scale + 0.5))
    lh, lw = low_res.shape[-2:]
    ry = linear_resize_matrix(ph, h) @ linear_resize_matrix(lh, img_size)[:ph]      # (h, lh)
    rx = linear_resize_matrix(pw, w) @ linear_resize_matrix(lw, img_size)[:pw]      # (w, lw)
    out = np.einsum("hi,bcij,wj->bchw", ry.astype(np.float32), low_res.astype(np.float32), rx.astype(np.float32),
                    optimize=True)
    return out.astype(np.float32)


class SamLowResDecoder:
    """The MobileSAM decoder interface (edge.segment.predictor) over an NPU artifact's two graphs: the
    fp32 prompt-encoder ``head`` (CPU) -> prompt_tokens, dense_embeddings; the QDQ body (NPU) ->
    iou_predictions, low_res_masks; then ``masks`` at the original size in numpy. ``open_for(n)``
    returns a body session compiled for ``n`` prompt tokens (5 + points)."""

    INPUTS = ("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input", "orig_im_size")
    HEAD_INPUTS = ("point_coords", "point_labels", "mask_input", "has_mask_input")
    OUTPUTS = ("masks", "iou_predictions", "low_res_masks")

    def __init__(self, head: Any, open_for: Callable[[int], Any], *, img_size: int = 1024, max_tokens: int = 21):
        self.head = head
        self.open_for = open_for
        self.img_size = img_size
        self.max_tokens = max_tokens
        self._sessions: dict[int, Any] = {}
        self._lock = threading.Lock()
        self.placement: dict = {}

    def session(self, n: int):
        if n < 6 or n > self.max_tokens:
            raise BadRequest(f"this NPU SAM decoder takes up to {self.max_tokens - 5} prompt points (a box counts as "
                             f"2, a lone point brings a padding point), got {n - 5}. Use fewer points or --device cpu.",
                             param="points")
        with self._lock:
            if n not in self._sessions:
                self._sessions[n] = self.open_for(n)
                self.placement[n - 5] = getattr(self._sessions[n], "edge_placement", {})
            return self._sessions[n]

    def get_inputs(self):
        return [IO("image_embeddings", [1, 256, 64, 64]), IO("point_coords", [1, "num_points", 2]),
                IO("point_labels", [1, "num_points"]), IO("mask_input", [1, 1, 256, 256]),
                IO("has_mask_input", [1]), IO("orig_im_size", [2])]

    def get_outputs(self):
        return [IO("masks", [1, 4, "height", "width"]), IO("iou_predictions", [1, 4]),
                IO("low_res_masks", [1, 4, 256, 256])]

    def get_providers(self):
        provs: list[str] = []
        for s in [self.head, *self._sessions.values()]:
            provs += [p for p in s.get_providers() if p not in provs]
        return provs

    def run(self, output_names, feeds, *args, **kw):
        missing = [n for n in self.INPUTS if n not in feeds]
        if missing:
            raise BadRequest(f"SAM decoder inputs missing: {missing}", param="feeds")
        tokens, dense = self.head.run(["prompt_tokens", "dense_embeddings"], {k: feeds[k] for k in self.HEAD_INPUTS})
        body = self.session(int(tokens.shape[1]))
        iou, low = body.run(["iou_predictions", "low_res_masks"], {"image_embeddings": feeds["image_embeddings"],
                                                                    "prompt_tokens": tokens,
                                                                    "dense_embeddings": dense})
        out = {"iou_predictions": iou, "low_res_masks": low}
        names = list(output_names) if output_names else list(self.OUTPUTS)
        if "masks" in names:
            size = np.asarray(feeds["orig_im_size"]).astype(np.int64)
            out["masks"] = sam_masks_from_low_res(low, (size[0], size[1]), self.img_size)
        return [out[n] for n in names]

    def close(self) -> None:
        self._sessions.clear()
        self.head = None


# -- decoder-with-past chat models -----------------------------------------------------------------

class StaticKVDecoder:
    """The dynamic decoder-with-past interface (edge.chat.onnx_engine: input_ids 1xk, attention_mask,
    position_ids, past_key_values.* 1 x kv x P x d -> logits, present.* 1 x kv x (P+k) x d) over a graph
    compiled for ONE new token after a FIXED past of ``context`` positions. Unused past positions are
    zeros with attention_mask 0 (attention ignores them; keys carry their own rotary positions), and
    each step's new key/value is the last position of ``present``. k new tokens = k steps."""

    def __init__(self, session: Any, *, context: int, label: str = "model.onnx"):
        self.session = session
        self.context = int(context)
        self.label = label
        self.placement: dict = getattr(session, "placement", {}) or getattr(session, "edge_placement", {})
        self._in = [i.name for i in session.get_inputs()]
        self._out = [o.name for o in session.get_outputs()]
        self._past = [n for n in self._in if n.startswith("past_key_values.")]
        self._present = [n.replace("past_key_values.", "present.") for n in self._past]

    def get_inputs(self):
        return [IO(i.name, [1, "sequence"] if not i.name.startswith("past") else [1, i.shape[1], "past", i.shape[3]],
                   i.type) for i in self.session.get_inputs()]

    def get_outputs(self):
        return self.session.get_outputs()

    def get_providers(self):
        return self.session.get_providers()

    def run(self, output_names, feeds, *args, **kw):
        ids = np.asarray(feeds["input_ids"])
        pos = np.asarray(feeds["position_ids"])
        past = {n: np.asarray(feeds[n]) for n in self._past}
        p = int(next(iter(past.values())).shape[2]) if past else 0
        k = ids.shape[1]
        if p + k > self.context:
            raise BadRequest(f"this NPU chat model was compiled for a context of {self.context} tokens (static "
                             f"shapes); the conversation needs {p + k}. Shorten it (/reset), or re-export with "
                             "`edge-run export npu ... --context N`.", param="messages")
        L = self.context
        buf = {n: np.zeros((v.shape[0], v.shape[1], L, v.shape[3]), np.float32) for n, v in past.items()}
        for n, v in past.items():
            buf[n][:, :, :p] = v
        mask = np.zeros((1, L + 1), np.int64)
        mask[0, :p] = 1
        mask[0, L] = 1
        logits = None
        for j in range(k):
            res = self.session.run(None, {"input_ids": ids[:, j:j + 1], "position_ids": pos[:, j:j + 1],
                                          "attention_mask": mask, **buf})
            out = dict(zip(self._out, res))
            logits = out["logits"]
            for n, pres in zip(self._past, self._present):
                buf[n][:, :, p + j] = out[pres][:, :, L]
            mask[0, p + j] = 1
        result = {"logits": logits}
        for n, pres in zip(self._past, self._present):
            result[pres] = np.ascontiguousarray(buf[n][:, :, :p + k])
        names = list(output_names) if output_names else self._out
        return [result[n] for n in names]
