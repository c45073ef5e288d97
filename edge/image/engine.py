"""ImageEngine: a loaded LCM image model (ONNX sessions from edge.devices) that the shared scheduler
runs image jobs against. ``generate_steps(request)`` is the step generator (see edge/jobs.py)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from edge.errors import BadRequest, ModelNotInstalled
from edge.image.pipeline import Components, Decoder, ImageRequest, LCMPipeline, OnnxModel
from edge.image.tokenizer import ClipTokenizer
from edge.jobs import StepGen
from edge.manifest import MANIFEST_FILE, ImageManifest

log = logging.getLogger("edge.image")


class LazyModel:
    """An OnnxModel whose session is created on first call (decoders / encoder a request may not use)."""

    def __init__(self, path: Path, threads: int, device: str):
        self.path, self.threads, self.device = path, threads, device
        self._model: OnnxModel | None = None
        self._lock = threading.Lock()

    def __call__(self, **feeds):
        if self._model is None:
            with self._lock:
                if self._model is None:
                    from edge.devices import make_session

                    self._model = OnnxModel(make_session(self.path, threads=self.threads, device=self.device,
                                                         batch=True))
        return self._model(**feeds)

    def close(self) -> None:
        self._model = None


def components_from_manifest(manifest: ImageManifest, folder: Path, *, precision: str | None = None,
                             threads: int = 1, device: str = "auto", default_decoder: str | None = None) -> Components:
    """Components over the ONNX files an lcm export wrote (``precision`` defaults to the manifest's,
    ``default_decoder`` -- the decoder of requests that name none -- too); ``manifest`` is the typed
    manifest (InstalledModel.manifest, edge.manifest.read)."""
    from edge.devices import cpu_backend, make_session

    folder = Path(folder)
    m = manifest
    precision = precision or m.precision or "fp32"
    device = cpu_backend(device, precision).device  # auto: OpenVINO for float graphs where it computes in bf16
    if not m.precisions:
        raise ModelNotInstalled(f"{m.origin or folder}: lists no ONNX files (`precisions`); the folder is not an "
                                "exported LCM model. Export one with `edge-run export lcm ...`.", param="model")
    if precision not in m.precisions:
        raise BadRequest(f"precision {precision!r} is not in this model; it has {', '.join(sorted(m.precisions))}.",
                         param="precision")
    if m.unet.time_cond_proj_dim is None:
        raise BadRequest(f"{m.origin or folder}: `unet.time_cond_proj_dim` is missing; LCM UNets need it. Re-export "
                         "the model (`edge-run export lcm ... --add`).", param=MANIFEST_FILE)
    files = {k: folder / v for k, v in m.precisions[precision].items()}
    missing = [str(p) for k, p in files.items() if not p.exists()]
    if missing:
        raise ModelNotInstalled(f"model files missing: {', '.join(missing)}. Re-install the model (edge-run pull).")

    def eager(name: str) -> OnnxModel:
        return OnnxModel(make_session(files[name], threads=threads, device=device, batch=True))  # image jobs are batch

    vae = m.decoders.get("vae")
    decoders = {"vae": Decoder(LazyModel(files["vae_decoder"], threads, device),
                               vae.scaling_factor if vae else m.vae.scaling_factor)}
    if "taesd_decoder" in files and "taesd" in m.decoders:
        decoders["taesd"] = Decoder(LazyModel(files["taesd_decoder"], threads, device),
                                    m.decoders["taesd"].scaling_factor)
    return Components(
        tokenizer=ClipTokenizer(folder / m.tokenizer),
        text_encoder=eager("text_encoder"),
        unet=eager("unet"),
        decoders=decoders,
        scheduler_config=m.scheduler,
        time_cond_proj_dim=m.unet.time_cond_proj_dim,
        vae_encoder=LazyModel(files["vae_encoder"], threads, device) if "vae_encoder" in files else None,
        vae_scaling_factor=m.vae.scaling_factor,
        vae_scale_factor=m.vae.scale_factor,
        latent_channels=m.vae.latent_channels,
        default_decoder=default_decoder if default_decoder in decoders else m.default_decoder,
        size_multiple=m.size_multiple,
    )


def _ram_budget() -> int | None:
    try:
        from edge.config import Settings

        return Settings.from_env().ram_budget
    except Exception:  # a bad EDGE_* value is reported by the front door, not here
        return None


class ImageEngine:
    """A loaded LCM model. One job at a time (the UNet already uses every thread it is given)."""

    slots: int = 1

    def __init__(self, components: Components, *, model_id: str, manifest: ImageManifest,
                 ram_budget: int | None = None):
        self.components = components
        self.model_id = model_id
        self.manifest = manifest
        self.pipeline = LCMPipeline(components, ram_budget=ram_budget, model_id=model_id)

    @classmethod
    def load(cls, model: Any, *, threads: int, device: str, precision: str | None = None,
             default_decoder: str | None = None, ram_budget: int | None = None) -> "ImageEngine":
        """Open the ONNX sessions of an installed model (edge.registry.InstalledModel, its typed manifest);
        ``precision`` / ``default_decoder``: None = the manifest's (edge.image.api.image_options picks them)."""
        manifest = model.manifest
        if not isinstance(manifest, ImageManifest):
            raise ModelNotInstalled(f"model {model.id!r} has no image {MANIFEST_FILE} (task {manifest.task!r}); the "
                                    "folder is not an exported LCM model. Export one with `edge-run export lcm ...`.",
                                    param="model")
        comps = components_from_manifest(manifest, Path(model.dir), precision=precision, threads=threads,
                                         device=device, default_decoder=default_decoder)
        return cls(comps, model_id=model.id, manifest=manifest,
                   ram_budget=_ram_budget() if ram_budget is None else ram_budget)

    @property
    def default_size(self) -> int:
        return self.manifest.default_size

    def generate_steps(self, request: ImageRequest) -> StepGen[list]:
        """Step generator: Step after text encode, (image encode,) each UNet step and each decode;
        returns a list of PIL images with prompt/seed/steps/model in ``.info``."""
        return self.pipeline.generate_steps(request)

    def close(self) -> None:
        """Release the ONNX sessions now."""
        c = self.components
        for d in c.decoders.values():
            if isinstance(d.model, LazyModel):
                d.model.close()
        if isinstance(c.vae_encoder, LazyModel):
            c.vae_encoder.close()
        c.text_encoder = c.unet = None  # type: ignore[assignment]
        c.decoders = {}
        c.vae_encoder = None
