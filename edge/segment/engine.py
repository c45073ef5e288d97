"""SegmentEngine: MobileSAM (encoder.onnx + decoder.onnx) behind the shared scheduler.

Two step generators, submitted as separate jobs so each gets its own priority:
  embed_steps   Step("image_encode")  batch priority: the heavy encoder, skipped on a cache hit
  decode_steps  Step("mask_decode")   interactive priority: one decoder call per click
The embedding cache (LRU by image content hash) lives here, so a second click on the same image
runs only the decoder; ``encoder_calls`` counts real encoder runs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from edge.devices import cpu_backend
from edge.errors import BadRequest
from edge.jobs import Step, StepGen
from edge.manifest import SegmentManifest
from edge.segment import postprocess as post
from edge.segment import preprocess as pre
from edge.segment.cache import Embedding, EmbeddingCache
from edge.segment.predictor import OnnxSamPredictor
from edge.segment.request import DecodeRequest, EmbeddingMissing

DEFAULT_CACHE_BYTES = 256 << 20  # 64 embeddings of 4 MiB
FILES = ("encoder.onnx", "decoder.onnx")
IR_ENCODER = "encoder.xml"  # int8-ov exports (NNCF int8, OpenVINO IR + encoder.bin) have it instead of encoder.onnx


def encoder_precision(manifest: Any, encoder: Path) -> str | None:
    """The precision of a SAM model's encoder file: the manifest's per-component one, else the model's; the
    int8-ov IR is int8 whatever it says; None when unknown (no manifest)."""
    if encoder.suffix == ".xml":
        return "int8-ov"
    if not isinstance(manifest, SegmentManifest):
        return None
    return manifest.components.get("encoder") or manifest.precision


def cache_budget(ram_budget: int | None = None) -> int:
    """Embedding-cache size: 1/16 of the RAM budget, between 16 MiB and 512 MiB."""
    if ram_budget is None:
        try:
            from edge.config import Settings

            ram_budget = Settings.from_env().ram_budget
        except Exception:  # noqa: BLE001 - a bad env var is reported elsewhere; use the default here
            return DEFAULT_CACHE_BYTES
    return int(min(512 << 20, max(16 << 20, ram_budget // 16)))


class SegmentEngine:
    """A loaded MobileSAM. ``slots`` > 1: clicks from several clients may interleave (the scheduler
    runs one step at a time, and the cache is thread-safe)."""

    slots: int = 4

    def __init__(self, predictor: OnnxSamPredictor, *, model_id: str = "", manifest: SegmentManifest | None = None,
                 cache_bytes: int | None = None):
        self.predictor = predictor
        self.model_id = model_id
        self.manifest = manifest or SegmentManifest()
        self.cache = EmbeddingCache(cache_budget() if cache_bytes is None else cache_bytes)

    @classmethod
    def load(cls, model, *, threads: int, device: str = "auto", cache_bytes: int | None = None,
             ram_budget: int | None = None, **_: Any) -> "SegmentEngine":
        paths = {}
        for name in FILES:
            p = model.files.get(name) if getattr(model, "files", None) else None
            if name == "encoder.onnx" and not p and getattr(model, "files", None) and model.files.get(IR_ENCODER):
                p = model.files[IR_ENCODER]  # the int8-ov precision: an OpenVINO IR encoder
            p = Path(p) if p else Path(model.dir) / name
            if not p.is_file():
                raise BadRequest(f"model {model.id!r} has no {name} (looked in {model.dir}); export it with "
                                 "`edge-run export sam ... --add`.", param="model")
            paths[name] = p
        manifest = getattr(model, "manifest", None)
        encoder_device = cpu_backend(device, encoder_precision(manifest, paths["encoder.onnx"])).device
        predictor = OnnxSamPredictor.from_files(paths["encoder.onnx"], paths["decoder.onnx"], threads=threads,
                                                device=device, encoder_device=encoder_device)
        if cache_bytes is None and ram_budget is not None:
            cache_bytes = cache_budget(ram_budget)
        return cls(predictor, model_id=model.id, manifest=manifest if isinstance(manifest, SegmentManifest) else None,
                   cache_bytes=cache_bytes)

    @classmethod
    def from_folder(cls, folder: str | Path, *, threads: int = 1, device: str = "auto",
                    cache_bytes: int | None = None) -> "SegmentEngine":
        """An engine straight from an exported folder (no store), for scripts and benchmarks."""
        folder = Path(folder)
        encoder = folder / IR_ENCODER if (folder / IR_ENCODER).is_file() else folder / "encoder.onnx"
        predictor = OnnxSamPredictor.from_files(encoder, folder / "decoder.onnx",
                                                threads=threads, device=device)
        return cls(predictor, model_id=folder.name, cache_bytes=cache_bytes)

    def close(self) -> None:
        self.cache.clear()
        self.predictor.close()

    def set_threads(self, n: int) -> None:
        """The scheduler's thread count for the next step (what the CPU can give now)."""
        self.predictor.set_threads(n)

    @property
    def encoder_calls(self) -> int:
        return self.predictor.encoder_calls

    @property
    def decoder_calls(self) -> int:
        return self.predictor.decoder_calls

    def stats(self) -> dict[str, int]:
        return {"encoder_calls": self.encoder_calls, "decoder_calls": self.decoder_calls,
                "cache_entries": len(self.cache), "cache_bytes": self.cache.nbytes,
                "cache_max_bytes": self.cache.max_bytes, "cache_hits": self.cache.hits,
                "cache_misses": self.cache.misses}

    # -- step generators ----------------------------------------------------------------------
    def embed_steps(self, image: pre.LoadedImage) -> StepGen[tuple[Embedding, bool]]:
        """Encode ``image`` unless its embedding is cached. Returns (embedding, encoder_ran)."""
        cached = self.cache.get(image.image_id)
        if cached is not None:
            yield Step(kind="image_encode", index=1, total=1, data={"image_id": image.image_id, "cached": True})
            return cached, False
        emb = self.predictor.encode(image)
        self.cache.put(emb)
        yield Step(kind="image_encode", index=1, total=1, data={"image_id": image.image_id, "cached": False})
        return emb, True

    def decode_steps(self, req: DecodeRequest) -> StepGen[post.SegmentResult]:
        """One decoder call for a cached image (EmbeddingMissing if it is not cached)."""
        # 1. find the embedding
        emb = self.cache.get(req.image_id)
        if emb is None:
            raise EmbeddingMissing.for_image(req.image_id)
        # 2. check prompts against the image's original size
        prompt = pre.parse_prompt(req.points, req.box, emb.original_size, emb.scale)
        mask_in = pre.mask_input(req.prev_mask, emb.size)
        # 3. decode
        t0 = time.perf_counter()
        masks, best = self.predictor.decode(emb, prompt, multimask=req.wants_multimask(), mask_input=mask_in)
        dt = time.perf_counter() - t0
        yield Step(kind="mask_decode", index=1, total=1)
        return post.SegmentResult(image_id=emb.image_id, masks=masks, best=best, size=emb.size,
                                  original_size=emb.original_size, scale=emb.scale, encoder_ran=False,
                                  timings={"decode_s": dt})

    def stats_steps(self) -> StepGen[dict[str, int]]:
        """Counters, through the scheduler (no compute)."""
        if False:  # pragma: no cover - makes this a generator
            yield Step(kind="stats")
        return self.stats()
