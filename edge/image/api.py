"""The image part of the Python API (mixed into edge.api.Runtime).

    from edge.api import Runtime
    with Runtime() as rt:
        images = rt.imagine("a lighthouse at dusk", steps=4, seed=7, size="512x512")
        images[0].save("out.png")                                    # or edge.image.pipeline.save_png
        job = rt.imagine_job("a red car", n=2)                       # progress / cancel
        for step in job.events(): print(step.kind, step.index, step.total)
        images = job.result()
"""

from __future__ import annotations

import json
from typing import Any

from edge.errors import BadRequest
from edge.image.pipeline import ImageRequest, check_request, load_image
from edge.jobs import JobSpec, Priority
from edge.scheduler import JobHandle


def parse_size(size: Any, default: int = 512) -> tuple[int, int]:
    """'512x512' / 512 / (w, h) / None -> (width, height)."""
    if size is None:
        return default, default
    if isinstance(size, (tuple, list)) and len(size) == 2:
        w, h = size
    elif isinstance(size, int) and not isinstance(size, bool):
        w = h = size
    elif isinstance(size, str):
        parts = size.lower().replace(" ", "").split("x")
        try:
            w, h = (int(parts[0]), int(parts[1])) if len(parts) == 2 else (int(parts[0]), int(parts[0]))
        except ValueError:
            raise BadRequest(f"`size` {size!r} is not WIDTHxHEIGHT; use e.g. 512x512.", param="size") from None
    else:
        raise BadRequest(f"`size` {size!r} is not WIDTHxHEIGHT; use e.g. 512x512.", param="size")
    return w, h


class ImageAPI:
    """Runtime.imagine / imagine_job. Needs ``self.submit``, ``self.resolve_model``, ``self.store`` and
    ``self.settings`` from RuntimeCore."""

    def _image_manifest(self, model_id: str) -> dict:
        try:
            path = self.store.model_dir(model_id) / "edge-model.json"
            return json.loads(path.read_text()) if path.is_file() else {}
        except (OSError, ValueError):
            return {}

    def imagine_job(self, prompt: str, *, model: str | None = None, size: Any = None, steps: int = 4, n: int = 1,
                    seed: int | None = None, guidance_scale: float = 8.0, init_image: Any = None,
                    strength: float = 0.6, decoder: str | None = None, keep_alive: float | None = None,
                    priority: Priority = Priority.BATCH) -> JobHandle[list]:
        """Submit an image job (batch priority, so chat and segmentation stay interactive).

        The handle's events are Step("text_encode"), Step("image_encode") for img2img, Step("unet")
        per step and Step("decode") per image; ``.result()`` is a list of PIL images whose ``.info``
        holds prompt, seed, steps and model; ``.cancel()`` stops it at the next step.
        """
        # 1. check what can be checked before the model loads
        model_id = self.resolve_model(model, task="image")
        man = self._image_manifest(model_id)
        width, height = parse_size(size, int(man.get("default_size", 512)))
        if init_image is not None:
            init_image = load_image(init_image)
            if size is None:  # keep the init image's size, rounded down to the size multiple
                mult = int(man.get("size_multiple", 8))
                width, height = (max(64, v // mult * mult) for v in init_image.size)
        req = ImageRequest(prompt=prompt, width=width, height=height, steps=steps, n=n, seed=seed,
                           guidance_scale=guidance_scale, init_image=init_image, strength=strength, decoder=decoder)
        decoders = tuple(man.get("decoders", {"vae": {}, "taesd": {}}))
        check_request(req, size_multiple=int(man.get("size_multiple", 8)), decoders=decoders,
                      default_decoder=man.get("default_decoder", "vae"),
                      original_steps=int(man.get("scheduler", {}).get("original_inference_steps", 50)),
                      ram_budget=self.settings.ram_budget)
        # 2. submit
        return self.submit(JobSpec(model_id=model_id, work=lambda engine: engine.generate_steps(req),
                                   priority=priority, keep_alive=keep_alive, label="image",
                                   meta={"steps": steps, "n": n}))

    def imagine(self, prompt: str, **kw) -> list:
        """Generate images; blocks until done. Keyword arguments are those of :meth:`imagine_job`
        (size '512x512', steps 1-8, n, seed, guidance_scale, init_image + strength, decoder 'vae'|'taesd')."""
        handle = self.imagine_job(prompt, **kw)
        try:
            return handle.result()
        finally:
            if not handle.done:
                handle.cancel()
