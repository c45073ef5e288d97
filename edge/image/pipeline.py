"""Few-step latent-consistency text-to-image and image-to-image over ONNX components, in numpy.

The pipeline is a step generator (see edge/jobs.py): it yields a Step after the text encoder, the
image encoder (img2img), each UNet step and each decoded image, and returns the PIL images.
Same stages and maths as diffusers' LatentConsistencyModel(Img2Img)Pipeline; parity is tested in
tests/image/test_parity.py.
"""

from __future__ import annotations

import io
import logging
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from edge.errors import BadRequest, check_range
from edge.image.scheduler import LCMScheduler, NoiseSource, guidance_scale_embedding
from edge.image.tokenizer import ClipTokenizer
from edge.jobs import Step, StepGen

log = logging.getLogger("edge.image")

MAX_STEPS = 8
MAX_N = 10
MIN_SIDE, MAX_SIDE = 64, 2048
SEED_LIMIT = 2**63 - MAX_N


@dataclass
class ImageRequest:
    """One image job. ``init_image`` (PIL image, path or PNG/JPEG bytes) turns it into image-to-image."""

    prompt: str
    width: int = 512
    height: int = 512
    steps: int = 4
    n: int = 1
    seed: int | None = None
    guidance_scale: float = 8.0
    init_image: Any = None
    strength: float = 0.6
    decoder: str | None = None  # "vae" | "taesd"; None = the model's default

    @property
    def is_img2img(self) -> bool:
        return self.init_image is not None


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


BYTES_PER_PIXEL = {"vae": 6000.0, "taesd": 1200.0}  # peak decode RAM per output pixel, SD1.5-class (bench/image.py)


def check_request(req: ImageRequest, *, size_multiple: int = 8, decoders: tuple[str, ...] = ("vae", "taesd"),
                  default_decoder: str = "vae", has_encoder: bool = True, original_steps: int = 50,
                  ram_budget: int | None = None, bytes_per_pixel: dict[str, float] | None = None) -> None:
    """Raise BadRequest naming the argument, the value and the fix (front doors call it before submitting;
    the pipeline calls it again with the loaded model's facts)."""
    if not isinstance(req.prompt, str) or not req.prompt.strip():
        raise BadRequest(f"`prompt` is empty ({req.prompt!r}). Describe the image, e.g. \"a lighthouse at dusk\".",
                         param="prompt")
    m = size_multiple
    for name in ("width", "height"):
        v = getattr(req, name)
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
            raise BadRequest(f"`{name}` must be an integer number of pixels, got {v!r}.", param="size")
        if v % m:
            lo, hi = v // m * m, (v // m + 1) * m
            raise BadRequest(f"`{name}` must be a multiple of {m}, got {v}. Use {max(lo, MIN_SIDE)} or {hi}.",
                             param="size")
        if not MIN_SIDE <= v <= MAX_SIDE:
            raise BadRequest(f"`{name}` must be between {MIN_SIDE} and {MAX_SIDE}, got {v}. Use 512.", param="size")
    if not isinstance(req.steps, (int, np.integer)) or isinstance(req.steps, bool):
        raise BadRequest(f"`steps` must be an integer, got {req.steps!r}. Use 4.", param="steps")
    check_range("steps", req.steps, 1, MAX_STEPS, "LCM models need few steps; use 4.")
    if not isinstance(req.n, (int, np.integer)) or isinstance(req.n, bool):
        raise BadRequest(f"`n` must be an integer, got {req.n!r}.", param="n")
    check_range("n", req.n, 1, MAX_N, "Ask for fewer images per request.")
    if not isinstance(req.guidance_scale, (int, float)) or isinstance(req.guidance_scale, bool):
        raise BadRequest(f"`guidance_scale` must be a number, got {req.guidance_scale!r}. Use 8.",
                         param="guidance_scale")
    check_range("guidance_scale", float(req.guidance_scale), 0.0, 30.0, "LCM models work best near 8.")
    if req.seed is not None and (not isinstance(req.seed, (int, np.integer)) or isinstance(req.seed, bool)
                                 or not 0 <= req.seed < SEED_LIMIT):
        raise BadRequest(f"`seed` must be an integer between 0 and {SEED_LIMIT - 1}, got {req.seed!r}.",
                         param="seed")
    decoder = req.decoder or default_decoder
    if decoder not in decoders:
        raise BadRequest(f"`decoder` {decoder!r} is not available for this model; choose one of "
                         f"{', '.join(sorted(decoders))}.", param="decoder")
    if req.is_img2img:
        s = req.strength
        if not isinstance(s, (int, float)) or isinstance(s, bool) or not 0 < s <= 1:
            raise BadRequest(f"`strength` must be in (0, 1], got {s!r}. Use 0.6 to keep the layout of the init "
                             "image.", param="strength")
        if not has_encoder:
            raise BadRequest("this model has no vae_encoder.onnx, so it cannot take an `init_image`; "
                             "re-export it with the lcm recipe.", param="init_image")
        usable = int(original_steps * s)
        if usable < req.steps:
            raise BadRequest(f"`strength` {s} leaves {usable} timesteps for {req.steps} steps. Raise strength to "
                             f"at least {req.steps / original_steps:.2f} or use fewer steps.", param="strength")
    if ram_budget:
        need = req.width * req.height * (bytes_per_pixel or BYTES_PER_PIXEL).get(decoder, 6000.0)
        if need > ram_budget:
            raise BadRequest(f"`size` {req.width}x{req.height} needs about {need / 2**30:.1f} GB to decode with "
                             f"the {decoder} decoder, over the RAM budget of {ram_budget / 2**30:.1f} GB. "
                             "Use a smaller size, --decoder taesd, or raise EDGE_RAM_BUDGET.", param="size")


def numpy_noise(seed: int) -> NoiseSource:
    """A seeded standard-normal noise source (numpy PCG64)."""
    rng = np.random.default_rng(seed)
    return lambda shape: rng.standard_normal(shape, dtype=np.float32)


def load_image(value: Any, param: str = "init_image") -> Image.Image:
    """A PIL RGB image from a PIL image, a path or encoded bytes; BadRequest if unreadable."""
    if isinstance(value, Image.Image):
        return value.convert("RGB")
    try:
        if isinstance(value, (bytes, bytearray)):
            img = Image.open(io.BytesIO(value))
        else:
            img = Image.open(Path(value))
        img.load()
        return img.convert("RGB")
    except (OSError, ValueError, TypeError) as e:
        shown = f"{len(value)} bytes" if isinstance(value, (bytes, bytearray)) else repr(str(value))
        raise BadRequest(f"`{param}` {shown} is not a readable image ({e.__class__.__name__}: {e}). "
                         "Give a PNG or JPEG file.", param=param) from None


class LCMPipeline:
    """txt2img / img2img in 1-8 steps. ``generate_steps(request)`` is the step generator."""

    def __init__(self, components: Components, *, ram_budget: int | None = None, model_id: str = ""):
        self.c = components
        self.ram_budget = ram_budget
        self.model_id = model_id

    # ---------------------------------------------------------------- checks
    def check(self, req: ImageRequest) -> None:
        """Raise BadRequest naming the argument, the value and the fix."""
        c = self.c
        check_request(req, size_multiple=c.size_multiple, decoders=tuple(c.decoders), default_decoder=c.default_decoder,
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
        # 1. check inputs
        self.check(req)
        init = load_image(req.init_image) if req.is_img2img else None
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


def png_info(img: Image.Image):
    """PngInfo with the text chunks the pipeline put in ``img.info`` (prompt, seed, steps, model ...)."""
    from PIL.PngImagePlugin import PngInfo

    meta = PngInfo()
    for key in ("prompt", "seed", "steps", "guidance_scale", "strength", "model", "decoder", "software"):
        if key in img.info:
            meta.add_itxt(key, str(img.info[key]))
    return meta


def save_png(img: Image.Image, path: str | Path) -> Path:
    """Write ``img`` as PNG with its metadata text chunks, atomically (temp file + rename)."""
    import os
    import tempfile

    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            img.save(f, format="PNG", pnginfo=png_info(img))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
