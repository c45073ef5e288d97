"""The image request type and its checks, run once at the door (Runtime.imagine_job) with the model's
facts; the server's pydantic body (edge/server/schemas.py) carries the same ranges into OpenAPI."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from edge.errors import BadRequest, check_range

MAX_STEPS = 8
MAX_PROMPT_CHARS = 4000
"""Characters of prompt accepted (the CLIP tokenizer keeps 77 tokens of it; longer text is cut with a warning)."""
MAX_N = 10
MIN_SIDE, MAX_SIDE = 64, 2048
SEED_LIMIT = 2**63 - MAX_N
DEFAULT_SIZE = 512
SIZE_MULTIPLE = 8
GUIDANCE_SCALE = (0.0, 30.0)
BYTES_PER_PIXEL = {"vae": 6000.0, "taesd": 1200.0}  # peak decode RAM per output pixel, SD1.5-class (bench/image.py)


def parse_size(size: Any) -> tuple[int | None, int | None]:
    """'512x512' / '512' / 512 / (w, h) -> (width, height); None -> (None, None): the model's default."""
    if size is None:
        return None, None
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


def load_init_image(value: Any, param: str = "init_image") -> Image.Image:
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


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


@dataclass
class ImageRequest:
    """One image job. ``init_image`` (PIL image, path or PNG/JPEG bytes) turns it into image-to-image.
    ``width``/``height`` None: the init image's size, else the model's default size (filled by check())."""

    prompt: str
    width: int | None = None
    height: int | None = None
    steps: int = 4
    n: int = 1
    seed: int | None = None
    guidance_scale: float = 8.0
    init_image: Any = None
    strength: float = 0.6
    decoder: str | None = None  # "vae" | "taesd"; None = the model's default
    checked: bool = field(default=False, repr=False, compare=False)  # set by check()

    @property
    def is_img2img(self) -> bool:
        return self.init_image is not None

    def check(self, *, default_size: int = DEFAULT_SIZE, size_multiple: int = SIZE_MULTIPLE,
              decoders: tuple[str, ...] = ("vae", "taesd"), default_decoder: str = "vae", has_encoder: bool = True,
              original_steps: int = 50, ram_budget: int | None = None,
              bytes_per_pixel: dict[str, float] | None = None) -> "ImageRequest":
        """Check every field against the model's facts (keyword arguments) and fill the defaults; raise
        BadRequest naming the argument, the value and the fix. Returns self."""
        # 1. the prompt
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise BadRequest(f"`prompt` is empty ({self.prompt!r}). Describe the image, e.g. \"a lighthouse at "
                             "dusk\".", param="prompt")
        if len(self.prompt) > MAX_PROMPT_CHARS:
            raise BadRequest(f"`prompt` is {len(self.prompt):,} characters; at most {MAX_PROMPT_CHARS:,} are accepted "
                             "(the model reads its first 77 tokens). Shorten it.", param="prompt")
        # 2. the init image (decoded once, here) and the size: the init image's, rounded down to the size
        #    multiple, or the model's default
        if self.is_img2img:
            self.init_image = load_init_image(self.init_image)
        if self.width is None and self.height is None:
            if self.is_img2img:
                self.width, self.height = (max(MIN_SIDE, v // size_multiple * size_multiple)
                                           for v in self.init_image.size)
            else:
                self.width = self.height = default_size
        m = size_multiple
        for name in ("width", "height"):
            v = getattr(self, name)
            if not _is_int(v):
                raise BadRequest(f"`{name}` must be an integer number of pixels, got {v!r}.", param="size")
            if v % m:
                lo, hi = v // m * m, (v // m + 1) * m
                raise BadRequest(f"`{name}` must be a multiple of {m}, got {v}. Use {max(lo, MIN_SIDE)} or {hi}.",
                                 param="size")
            if not MIN_SIDE <= v <= MAX_SIDE:
                raise BadRequest(f"`{name}` must be between {MIN_SIDE} and {MAX_SIDE}, got {v}. Use 512.",
                                 param="size")
        # 3. numbers
        if not _is_int(self.steps):
            raise BadRequest(f"`steps` must be an integer, got {self.steps!r}. Use 4.", param="steps")
        check_range("steps", self.steps, 1, MAX_STEPS, "LCM models need few steps; use 4.")
        if not _is_int(self.n):
            raise BadRequest(f"`n` must be an integer, got {self.n!r}.", param="n")
        check_range("n", self.n, 1, MAX_N, "Ask for fewer images per request.")
        if not isinstance(self.guidance_scale, (int, float)) or isinstance(self.guidance_scale, bool):
            raise BadRequest(f"`guidance_scale` must be a number, got {self.guidance_scale!r}. Use 8.",
                             param="guidance_scale")
        check_range("guidance_scale", float(self.guidance_scale), *GUIDANCE_SCALE, "LCM models work best near 8.")
        if self.seed is not None and (not _is_int(self.seed) or not 0 <= self.seed < SEED_LIMIT):
            raise BadRequest(f"`seed` must be an integer between 0 and {SEED_LIMIT - 1}, got {self.seed!r}.",
                             param="seed")
        # 4. the decoder
        decoder = self.decoder or default_decoder
        if decoder not in decoders:
            raise BadRequest(f"`decoder` {decoder!r} is not available for this model; choose one of "
                             f"{', '.join(sorted(decoders))}.", param="decoder")
        # 5. image-to-image
        if self.is_img2img:
            s = self.strength
            if not isinstance(s, (int, float)) or isinstance(s, bool) or not 0 < s <= 1:
                raise BadRequest(f"`strength` must be in (0, 1], got {s!r}. Use 0.6 to keep the layout of the init "
                                 "image.", param="strength")
            if not has_encoder:
                raise BadRequest("this model has no vae_encoder.onnx, so it cannot take an `init_image`; "
                                 "re-export it with the lcm recipe.", param="init_image")
            usable = int(original_steps * s)
            if usable < self.steps:
                raise BadRequest(f"`strength` {s} leaves {usable} timesteps for {self.steps} steps. Raise strength "
                                 f"to at least {self.steps / original_steps:.2f} or use fewer steps.",
                                 param="strength")
        # 6. the decode must fit the RAM budget
        if ram_budget:
            need = self.width * self.height * (bytes_per_pixel or BYTES_PER_PIXEL).get(decoder, 6000.0)
            if need > ram_budget:
                raise BadRequest(f"`size` {self.width}x{self.height} needs about {need / 2**30:.1f} GB to decode "
                                 f"with the {decoder} decoder, over the RAM budget of {ram_budget / 2**30:.1f} GB. "
                                 "Use a smaller size, --decoder taesd, or raise EDGE_RAM_BUDGET.", param="size")
        self.checked = True
        return self
