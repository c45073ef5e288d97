"""The image workload's jobs, behind Runtime.imagine_job / imagine (edge/api.py):

    from edge.api import Runtime
    with Runtime() as rt:
        images = rt.imagine("a lighthouse at dusk", steps=4, seed=7, size="512x512")
        images[0].save("out.png")                                    # or edge.image.png.save_png
        job = rt.imagine_job("a red car", n=2)                       # progress / cancel
        for step in job.events(): print(step.kind, step.index, step.total)
        images = job.result()
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edge.image.options import ImageOptions, available_decoders, image_options
from edge.image.request import ImageRequest
from edge.jobs import JobSpec, Priority

if TYPE_CHECKING:
    from edge.api import Runtime
    from edge.manifest import ImageManifest
    from edge.scheduler import JobHandle


def check_facts(manifest: "ImageManifest", *, ram_budget: int | None,
                options: ImageOptions | None = None) -> dict[str, Any]:
    """ImageRequest.check's keyword arguments from an installed model's manifest: what the engine will
    have once loaded (its decoders and whether it has an image encoder, for the precision it loads)."""
    options = options or image_options(manifest)
    files = manifest.precisions.get(options.precision, {})
    return {"default_size": manifest.default_size, "size_multiple": manifest.size_multiple,
            "decoders": available_decoders(manifest, files), "default_decoder": options.decoder,
            "has_encoder": "vae_encoder" in files or not files,
            "original_steps": int(manifest.scheduler.get("original_inference_steps", 50)),
            "ram_budget": ram_budget}


def imagine_job(rt: "Runtime", req: ImageRequest, *, model: str | None = None, keep_alive: float | None = None,
                priority: Priority = Priority.BATCH) -> "JobHandle[list]":
    """Check ``req`` once against the installed model's manifest, then submit it (batch priority, so chat
    and segmentation stay interactive)."""
    # 1. the model: resolved and installed once; its manifest says what a request may ask
    model_id = rt.model_for(model, task="image")
    # 2. check inputs (fills the size: the init image's or the model's default)
    manifest = rt.manifest(model_id)
    options = rt.image_options(model_id)
    facts = check_facts(manifest, ram_budget=rt.settings.ram_budget, options=options)
    req.check(**facts)
    # 3. submit, with the decode's working set: the scheduler makes room for it before the job starts
    decoder = req.decoder or options.decoder
    return rt.submit(JobSpec(model_id=model_id, work=lambda engine: engine.generate_steps(req),
                             priority=priority, keep_alive=keep_alive, label="image",
                             work_bytes=decode_bytes(req.width, req.height, decoder),
                             meta={"steps": req.steps, "n": req.n}))


def decode_bytes(width: int, height: int, decoder: str) -> int:
    """Peak RAM of one decode at ``width`` x ``height`` beyond the model's weights (SD1.5-class figures of
    edge/image/request.py; the decode runs one image at a time, so ``n`` does not multiply it)."""
    from edge.image.request import BYTES_PER_PIXEL

    return int(width * height * BYTES_PER_PIXEL.get(decoder, BYTES_PER_PIXEL["vae"]))
