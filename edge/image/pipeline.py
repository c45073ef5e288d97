"""Few-step latent-consistency text-to-image and image-to-image over ONNX components, in numpy.

The pipeline is a step generator (see edge/jobs.py): it yields a Step after the text encoder, the
image encoder (img2img), each UNet step and each decoded image, and returns the PIL images.
Same stages and maths as diffusers' LatentConsistencyModel(Img2Img)Pipeline; parity is tested in
tests/image/test_parity.py.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from edge.image.png import png_info, save_png  # noqa: F401  (re-exported until edge/image/cli.py imports edge.image.png)
from edge.image.request import BYTES_PER_PIXEL, ImageRequest, load_init_image
from edge.image.lcm_schedule import LCMScheduler, NoiseSource, guidance_scale_embedding
from edge.image.tokenizer import ClipTokenizer
from edge.jobs import Step, StepGen

log = logging.getLogger("edge.image")

class OnnxModel:
    """A callable over an onnxruntime session: feeds are cast to the input types the graph declares,
    outputs come back as float32 numpy arrays."""

    _TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
              "tensor(int32)": np.int32, "tensor(double)": np.float64}

    def __init__(self, session):
        self.session = session
        self.inputs = {i.name: self._TYPES.get(i.type, np.float32) for i in session.get_inputs()}
        self.outputs = [o.name for o in session.get_outputs()]

    def __call__(self, **feeds: np.ndarray) -> list[np.ndarray]:
        feeds = {k: np.ascontiguousarray(v, dtype=self.inputs[k]) for k, v in feeds.items() if k in self.inputs}
        outs = self.session.run(None, feeds)
        return [o.astype(np.float32, copy=False) if o.dtype != np.float32 else o for o in outs]


@dataclass
class Decoder:
    """A latent -> image decoder (SD VAE or TAESD) and the latent scaling it expects."""

    model: Callable[..., list[np.ndarray]]
    scaling_factor: float


@dataclass
class Components:
    """Everything the pipeline runs. Models are callables taking numpy feeds (OnnxModel in production)."""

    tokenizer: ClipTokenizer
    text_encoder: Callable[..., list[np.ndarray]]
    unet: Callable[..., list[np.ndarray]]
    decoders: dict[str, Decoder]
    scheduler_config: dict
    time_cond_proj_dim: int
    vae_encoder: Callable[..., list[np.ndarray]] | None = None
    vae_scaling_factor: float = 0.18215
    vae_scale_factor: int = 8
    latent_channels: int = 4
    default_decoder: str = "vae"
    size_multiple: int = 8
    bytes_per_pixel: dict[str, float] = field(default_factory=lambda: dict(BYTES_PER_PIXEL))


def check_request(req: ImageRequest, **facts) -> None:
    """Deprecated: ``req.check(**facts)`` (edge/image/request.py); removed once its last caller switches."""
    req.check(**facts)


def numpy_noise(seed: int) -> NoiseSource:
    """A seeded standard-normal noise source (numpy PCG64)."""
    rng = np.random.default_rng(seed)
    return lambda shape: rng.standard_normal(shape, dtype=np.float32)


class LCMPipeline:
    """txt2img / img2img in 1-8 steps. ``generate_steps(request)`` is the step generator."""

    def __init__(self, components: Components, *, ram_budget: int | None = None, model_id: str = ""):
        self.c = components
        self.ram_budget = ram_budget
        self.model_id = model_id

    # ---------------------------------------------------------------- checks
    def check(self, req: ImageRequest) -> None:
        """ImageRequest.check with the loaded components' facts, for callers that run the pipeline directly
        (the Runtime checks its requests once, at the door)."""
        c = self.c
        req.check(size_multiple=c.size_multiple, decoders=tuple(c.decoders), default_decoder=c.default_decoder,
                  has_encoder=c.vae_encoder is not None,
                  original_steps=int(c.scheduler_config.get("original_inference_steps", 50)),
                  ram_budget=self.ram_budget, bytes_per_pixel=c.bytes_per_pixel)

    # ---------------------------------------------------------------- the pipeline
    def generate_steps(self, req: ImageRequest, *, noise: Sequence[NoiseSource] | None = None) -> StepGen[list[Image.Image]]:
        """Step generator: yields after text encode, image encode (img2img), each UNet step and each
        decoded image; returns ``req.n`` PIL images carrying prompt/seed/steps/model in ``.info``.

        ``noise``: one noise source per image (tests pass torch-generator sources for parity);
        by default image i uses numpy PCG64 seeded with ``seed + i``.
        """
        c = self.c
        # 1. check inputs (unless the door did)
        if not req.checked:
            self.check(req)
        init = load_init_image(req.init_image) if req.is_img2img else None
        seed = int(req.seed) if req.seed is not None else secrets.randbelow(2**31)
        n = int(req.n)
        if noise is None:
            noise = [numpy_noise(seed + i) for i in range(n)]
        if len(noise) != n:
            raise ValueError(f"need {n} noise sources, got {len(noise)}")
        decoder = c.decoders[req.decoder or c.default_decoder]
        n_encode = 1 if init is not None else 0
        total = 1 + n_encode + int(req.steps) + n
        done = 0

        def draw(shape: tuple[int, ...]) -> np.ndarray:  # per-image streams, like diffusers' generator lists
            return np.concatenate([src((1, *shape[1:])) for src in noise], axis=0).astype(np.float32)

        # 2. encode the prompt
        ids, _ = c.tokenizer.encode([req.prompt])
        embeds = c.text_encoder(input_ids=ids)[0]
        embeds = np.repeat(embeds, n, axis=0)
        done += 1
        yield Step(kind="text_encode", index=done, total=total)

        # 3. timesteps
        scheduler = LCMScheduler.from_config(c.scheduler_config)
        timesteps = scheduler.set_timesteps(int(req.steps), strength=float(req.strength) if init is not None else 1.0)

        # 4. initial latents
        shape = (n, c.latent_channels, req.height // c.vae_scale_factor, req.width // c.vae_scale_factor)
        if init is None:
            latents = draw(shape) * np.float32(scheduler.init_noise_sigma)
        else:
            pixels = preprocess(init, req.width, req.height)
            mean, std = c.vae_encoder(sample=pixels)[:2]
            mean, std = np.repeat(mean, n, axis=0), np.repeat(std, n, axis=0)
            encoded = (mean + std * draw(mean.shape)) * np.float32(c.vae_scaling_factor)
            latents = scheduler.add_noise(encoded, draw(encoded.shape), int(timesteps[0]))
            done += 1
            yield Step(kind="image_encode", index=done, total=total)

        # 5. guidance-scale embedding (LCM: w = guidance_scale - 1)
        w_emb = guidance_scale_embedding(np.full(n, float(req.guidance_scale) - 1.0), c.time_cond_proj_dim)

        # 6. denoise; one UNet call per image, so image i is the same whatever n is (dynamic int8
        #    quantizes activations per call: a batch would couple the images)
        denoised = latents
        for i, t in enumerate(timesteps):
            tt = np.array([t], dtype=np.int64)
            eps = np.concatenate([c.unet(sample=latents[b:b + 1], timestep=tt, encoder_hidden_states=embeds[b:b + 1],
                                         timestep_cond=w_emb[b:b + 1])[0] for b in range(n)], axis=0)
            latents, denoised = scheduler.step(eps, int(t), latents, noise=draw)
            done += 1
            yield Step(kind="unet", index=done, total=total, data={"step": i + 1, "steps": len(timesteps),
                                                                   "timestep": int(t)})

        # 7. decode, one image at a time (bounds peak RAM)
        images = []
        for i in range(n):
            pixels = decoder.model(latent_sample=denoised[i:i + 1] / np.float32(decoder.scaling_factor))[0]
            img = postprocess(pixels)[0]
            img.info.update({"prompt": req.prompt, "seed": str(seed + i), "steps": str(int(req.steps)),
                             "guidance_scale": f"{float(req.guidance_scale):g}", "model": self.model_id,
                             "decoder": req.decoder or c.default_decoder, "software": "edge-run"})
            if init is not None:
                img.info["strength"] = f"{float(req.strength):g}"
            images.append(img)
            done += 1
            yield Step(kind="decode", index=done, total=total)
        return images


def preprocess(img: Image.Image, width: int, height: int) -> np.ndarray:
    """PIL -> float32 (1, 3, H, W) in [-1, 1], resized with Lanczos like diffusers' VaeImageProcessor."""
    if img.size != (width, height):
        img = img.resize((width, height), resample=Image.LANCZOS)
    arr = np.asarray(img, dtype=np.float32) / np.float32(255.0)
    return (arr.transpose(2, 0, 1)[None] * np.float32(2.0) - np.float32(1.0)).astype(np.float32)


def postprocess(pixels: np.ndarray) -> list[Image.Image]:
    """Decoder output (B, 3, H, W) in [-1, 1] -> PIL images (same rounding as diffusers)."""
    arr = np.clip(pixels / np.float32(2.0) + np.float32(0.5), 0.0, 1.0).transpose(0, 2, 3, 1)
    arr = (arr * 255).round().astype(np.uint8)
    return [Image.fromarray(a) for a in arr]
