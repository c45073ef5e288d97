"""MobileSAM over onnxruntime (or OpenVINO, edge.devices): encoder.onnx (image -> embeddings; encoder.xml
for the int8-ov precision) and decoder.onnx (embeddings + prompts -> masks). The numeric core the engine,
the export verification and the bench share."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import BadRequest
from edge.segment import postprocess as post
from edge.segment import preprocess as pre
from edge.segment.cache import Embedding

ENCODER_INPUT = "image"
ENCODER_OUTPUT = "image_embeddings"
DECODER_INPUTS = ("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input",
                  "orig_im_size")
DECODER_OUTPUTS = ("masks", "iou_predictions", "low_res_masks")


class OnnxSamPredictor:
    """Runs the two graphs; counts encoder and decoder calls (``encoder_calls``, ``decoder_calls``)."""

    def __init__(self, encoder: Any, decoder: Any, decoder_one_thread: Any = None):
        self.encoder = encoder
        self.decoder = decoder
        self._decoders = {1: decoder_one_thread} if decoder_one_thread is not None else {}
        self._decoder_now = decoder
        self.encoder_calls = 0
        self.decoder_calls = 0
        self._count_lock = threading.Lock()
        names = {i.name for i in decoder.get_inputs()}
        missing = [n for n in DECODER_INPUTS if n not in names]
        if missing or ENCODER_INPUT not in {i.name for i in encoder.get_inputs()}:
            raise BadRequest(f"these ONNX files are not a SAM encoder/decoder pair (decoder lacks {missing}); "
                             "export them with `edge-run export sam`.", param="model")

    @classmethod
    def from_files(cls, encoder: str | Path, decoder: str | Path, *, threads: int = 1,
                   device: str = "auto", encoder_device: str | None = None) -> "OnnxSamPredictor":
        """Sessions over an exported encoder / decoder pair; ``encoder_device`` (default ``device``): the
        encoder's own, e.g. OpenVINO where ``edge.devices.cpu_backend`` picks it for a float encoder."""
        import onnxruntime as ort

        from edge.devices import make_session
        from edge.ov_session import OpenVinoSession

        dec = make_session(decoder, threads=threads, device=device, keep_f32=True)  # masks are logits cut at 0
        one = None
        if threads > 1 and isinstance(dec, (ort.InferenceSession, OpenVinoSession)) and \
                getattr(dec, "edge_placement", {}).get("device", "cpu") in ("cpu", "openvino"):
            one = make_session(decoder, threads=1, device=device, keep_f32=True)  # for when another program takes a core
        return cls(make_session(encoder, threads=threads, device=encoder_device or device, batch=True),  # batch lane
                   dec, one)

    def set_threads(self, n: int) -> None:
        """Clicks run the one-thread decoder while other programs leave one core (onnxruntime's pool
        waits at every operator for a thread that shares its core with them: seconds per click)."""
        self._decoder_now = self._decoders.get(n, self.decoder)

    def close(self) -> None:
        self.encoder = None
        self.decoder = self._decoder_now = None
        self._decoders = {}

    # 1. image -> embedding
    def encode(self, image: pre.LoadedImage) -> Embedding:
        x, _ = pre.encoder_input(image.rgb)
        feats = self.encoder.run([ENCODER_OUTPUT], {ENCODER_INPUT: x})[0]
        with self._count_lock:
            self.encoder_calls += 1
        return Embedding(image_id=image.image_id, features=feats, size=image.size,
                         original_size=image.original_size, scale=image.scale)

    # 2. embedding + prompts -> masks
    def decode(self, emb: Embedding, prompt: pre.Prompt, *, multimask: bool = True,
               mask_input: np.ndarray | None = None) -> tuple[list[post.Mask], int]:
        """Masks at the working image's size and the index of the best (highest predicted IoU)."""
        coords, labels = prompt.onnx_inputs(emb.size)
        has_mask = mask_input is not None
        feeds = {
            "image_embeddings": emb.features,
            "point_coords": coords,
            "point_labels": labels,
            "mask_input": mask_input if has_mask else np.zeros((1, 1, pre.LOW_RES, pre.LOW_RES), np.float32),
            "has_mask_input": np.array([1.0 if has_mask else 0.0], dtype=np.float32),
            "orig_im_size": np.array(emb.size, dtype=np.float32),
        }
        masks, scores, low_res = self._decoder_now.run(list(DECODER_OUTPUTS), feeds)
        with self._count_lock:
            self.decoder_calls += 1
        out = [post.Mask(mask=post.threshold(m), score=s, low_res=lr)
               for m, s, lr in post.select_masks(masks, scores, low_res, multimask)]
        best = int(np.argmax([m.score for m in out]))
        return out, best

    # 3. both, without a cache (export verification, bench)
    def segment(self, image: Any, points=None, box=None, *, multimask: bool = True,
                prev_mask: Any = None) -> post.SegmentResult:
        t0 = time.perf_counter()
        img = pre.load_image(image)
        prompt = pre.parse_prompt(points, box, img.original_size, img.scale)
        emb = self.encode(img)
        t1 = time.perf_counter()
        masks, best = self.decode(emb, prompt, multimask=multimask, mask_input=pre.mask_input(prev_mask, emb.size))
        t2 = time.perf_counter()
        return post.SegmentResult(image_id=img.image_id, masks=masks, best=best, size=img.size,
                                  original_size=img.original_size, scale=img.scale, encoder_ran=True,
                                  timings={"encode_s": t1 - t0, "decode_s": t2 - t1})
