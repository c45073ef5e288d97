"""Image loading and SAM preprocessing in numpy/PIL (no torch).

The transform matches upstream MobileSAM's ``ResizeLongestSide`` + ``Sam.preprocess`` exactly:
PIL bilinear resize of the longest side to 1024, per-channel normalisation, zero padding to a
1024x1024 square (bottom and right).
"""

from __future__ import annotations

import hashlib
import io
import math
from struct import error as struct_error
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from edge.errors import BadRequest, PayloadTooLarge

IMG_SIZE = 1024                       # the encoder's square input
LOW_RES = 256                         # the decoder's mask_input / low_res_masks size
PIXEL_MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)
PIXEL_STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)
MAX_SIDE = 4096
"""Images whose longest side exceeds this are downscaled to it before segmentation (masks are then
returned at the downscaled size; ``LoadedImage.scale`` says by how much). SAM sees 1024 px anyway."""
MAX_PIXELS = 8192 * 8192
"""Images with more pixels than this are refused by their header, before decoding (decompression-bomb
guard): twice MAX_SIDE on each side is plenty for an image that is downscaled to MAX_SIDE anyway."""
MAX_POINTS = 64
"""Point prompts accepted in one request (a click session rarely has ten)."""
LABELS = {0: "background", 1: "foreground"}
MASK_INPUT_LOGIT = 10.0
"""A binary previous mask becomes low-res logits of +/- this value."""


@dataclass
class LoadedImage:
    """An RGB uint8 image ready for SAM, plus where it came from."""

    rgb: np.ndarray                   # H x W x 3 uint8 (the working image)
    original_size: tuple[int, int]    # (H, W) as given, before any downscale
    scale: float                      # working size / original size (1.0 unless the image was huge)
    converted_from: str               # the source mode ("RGB", "RGBA", "I;16", "L" ...)
    image_id: str                     # content hash of ``rgb``

    @property
    def size(self) -> tuple[int, int]:
        return int(self.rgb.shape[0]), int(self.rgb.shape[1])


def content_hash(rgb: np.ndarray) -> str:
    """A stable id for image content: blake2b over shape and pixels (32 hex chars)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(np.asarray(rgb.shape, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(rgb).data)
    return h.hexdigest()


# 1. loading and conversion ----------------------------------------------------------------------

def load_image(src: Any, *, max_side: int = MAX_SIDE, name: str = "image") -> LoadedImage:
    """Load a path, bytes, PIL image or numpy array as an RGB uint8 array.

    Grayscale, palette, RGBA (composited on white), 16-bit and float inputs are converted; images
    larger than ``max_side`` on their longest side are downscaled to it. Bad input raises BadRequest
    naming ``name``.
    """
    if isinstance(src, LoadedImage):
        return src
    if isinstance(src, np.ndarray):
        rgb, mode = _array_to_rgb(src, name)
    else:
        img = _open_pil(src, name)
        mode = img.mode
        rgb = _pil_to_rgb(img, name)
    h, w = rgb.shape[:2]
    if h < 1 or w < 1:
        raise BadRequest(f"`{name}` is empty ({w}x{h} pixels); send an image of at least 1x1.", param=name)
    scale = 1.0
    if max(h, w) > max_side:
        scale = max_side / max(h, w)
        nw, nh = max(1, int(w * scale + 0.5)), max(1, int(h * scale + 0.5))
        rgb = np.asarray(Image.fromarray(rgb).resize((nw, nh), Image.Resampling.BILINEAR))
    rgb = np.ascontiguousarray(rgb)
    return LoadedImage(rgb=rgb, original_size=(h, w), scale=scale, converted_from=mode,
                       image_id=content_hash(rgb))


def _open_pil(src: Any, name: str) -> Image.Image:
    if isinstance(src, Image.Image):
        img = src
    else:
        if isinstance(src, (str, Path)):
            path = Path(src)
            if not path.is_file():
                raise BadRequest(f"`{name}` file {str(path)!r} does not exist or is not a file.", param=name)
            data = path.read_bytes()
        elif isinstance(src, (bytes, bytearray, memoryview)):
            data = bytes(src)
        else:
            raise BadRequest(f"`{name}` must be a file path, image bytes, a PIL image or a numpy array, "
                             f"got {type(src).__name__}.", param=name)
        if not data:
            raise BadRequest(f"`{name}` is empty (0 bytes); send PNG, JPEG, WebP or BMP bytes.", param=name)
        img = open_checked(data, name)
    if img.width * img.height > MAX_PIXELS:
        raise PayloadTooLarge(f"`{name}` is {img.width}x{img.height} = {img.width * img.height:,} pixels, "
                              f"over the {MAX_PIXELS:,} limit. Downscale it below {MAX_SIDE} px.", param=name)
    try:
        return ImageOps.exif_transpose(img)  # phone photos: points are given in the displayed frame
    except Exception:  # a broken EXIF block must not make a readable image unusable
        return img


def open_checked(data: bytes, name: str = "image", max_pixels: int | None = None) -> Image.Image:
    """Decode image bytes, refusing by the header's size *before* decoding: a 65 KB PNG can claim
    16000x12500 pixels and take gigabytes once decoded. PIL's global bomb limit is never changed
    (other threads decode too): ours is below it, and its DecompressionBombError becomes PayloadTooLarge."""
    limit = MAX_PIXELS if max_pixels is None else max_pixels
    try:
        img = Image.open(io.BytesIO(data))  # reads the header only
        w, h = img.size
        if w * h > limit:
            raise PayloadTooLarge(f"`{name}` is {w}x{h} = {w * h:,} pixels by its header, over the {limit:,} "
                                  f"edge-run decodes. Downscale it below {MAX_SIDE} px on the longest side "
                                  "(it would be downscaled to that anyway).", param=name)
        img.load()
    except Image.DecompressionBombError as e:  # PIL's own limit (above ours), raised inside open()
        import re

        m = re.search(r"\((\d+) pixels\)", str(e))
        size = f"{int(m.group(1)):,} pixels" if m else f"more than {limit:,} pixels"
        raise PayloadTooLarge(f"`{name}` is {size} by its header, over the {limit:,} edge-run decodes. Downscale "
                              f"it below {MAX_SIDE} px on the longest side (it would be downscaled to that anyway).",
                              param=name) from None
    except PayloadTooLarge:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError,
            KeyError, struct_error, ZeroDivisionError, MemoryError) as e:
        raise BadRequest(f"`{name}` is not a readable image ({len(data)} bytes starting "
                         f"{data[:8]!r}: {e.__class__.__name__}); send PNG, JPEG, WebP or BMP.",
                         param=name) from None
    return img


def _pil_to_rgb(img: Image.Image, name: str) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return _array_to_rgb(np.asarray(img), name, sixteen_bit=mode.startswith("I"))[0]
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.asarray(img.convert("RGB"))


def _array_to_rgb(a: np.ndarray, name: str, sixteen_bit: bool = False) -> tuple[np.ndarray, str]:
    mode = f"array {a.dtype}{list(a.shape)}"
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise BadRequest(f"`{name}` array must be HxW, HxWx1, HxWx3 or HxWx4, got shape {list(a.shape)}.",
                         param=name)
    if a.dtype == np.uint8:
        out = a
    elif a.dtype == bool:
        out = a.astype(np.uint8) * 255
    elif a.dtype == np.uint16 or sixteen_bit or (np.issubdtype(a.dtype, np.integer) and a.max(initial=0) > 255):
        if a.min(initial=0) < 0 or a.max(initial=0) > 65535:
            raise BadRequest(f"`{name}` integer pixels must be in 0..65535, got {a.min()}..{a.max()}.",
                             param=name)
        out = np.round(a.astype(np.float64) / 257.0).astype(np.uint8)   # 16-bit -> 8-bit
    elif np.issubdtype(a.dtype, np.integer):
        if a.min(initial=0) < 0:
            raise BadRequest(f"`{name}` pixels must not be negative, got min {a.min()}.", param=name)
        out = a.astype(np.uint8)
    elif np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all() or a.min(initial=0) < 0 or a.max(initial=0) > 1:
            raise BadRequest(f"`{name}` float pixels must be finite and in [0, 1]; got "
                             f"{np.nanmin(a):.3g}..{np.nanmax(a):.3g}. Scale to [0, 1] or pass uint8.", param=name)
        out = np.round(a * 255.0).astype(np.uint8)
    else:
        raise BadRequest(f"`{name}` array dtype {a.dtype} is not an image type; use uint8.", param=name)
    if out.ndim == 2:
        out = np.repeat(out[..., None], 3, axis=2)
    elif out.shape[2] == 4:
        alpha = out[..., 3:4].astype(np.float32) / 255.0
        out = np.round(out[..., :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    return np.ascontiguousarray(out), mode


# 2. SAM transform --------------------------------------------------------------------------------

def preprocess_shape(h: int, w: int, long_side: int = IMG_SIZE) -> tuple[int, int]:
    """(new_h, new_w) with the longest side ``long_side`` (upstream's rounding)."""
    scale = long_side * 1.0 / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def resize_longest(rgb: np.ndarray, long_side: int = IMG_SIZE) -> np.ndarray:
    """PIL bilinear resize so the longest side is ``long_side`` (same pixels as upstream)."""
    nh, nw = preprocess_shape(rgb.shape[0], rgb.shape[1], long_side)
    return np.asarray(Image.fromarray(rgb).resize((nw, nh), Image.Resampling.BILINEAR))


def normalize_pad(resized: np.ndarray, size: int = IMG_SIZE) -> np.ndarray:
    """HxWx3 uint8 -> 1x3xSxS float32: (x - mean) / std, zero-padded bottom/right."""
    x = (resized.astype(np.float32) - PIXEL_MEAN) / PIXEL_STD
    h, w = x.shape[:2]
    out = np.zeros((1, 3, size, size), dtype=np.float32)
    out[0, :, :h, :w] = x.transpose(2, 0, 1)
    return out


def encoder_input(rgb: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """The encoder's input tensor and the resized (pre-padding) size."""
    resized = resize_longest(rgb)
    return normalize_pad(resized), (int(resized.shape[0]), int(resized.shape[1]))


def apply_coords(coords: np.ndarray, size: tuple[int, int], long_side: int = IMG_SIZE) -> np.ndarray:
    """Pixel (x, y) in an image of ``size`` (H, W) -> the 1024 input frame."""
    h, w = size
    nh, nw = preprocess_shape(h, w, long_side)
    out = np.array(coords, dtype=np.float64, copy=True)
    out[..., 0] *= nw / w
    out[..., 1] *= nh / h
    return out


# 3. prompts -------------------------------------------------------------------------------------

@dataclass
class Prompt:
    """Validated prompts in working-image pixels."""

    coords: np.ndarray          # N x 2 float64 (x, y)
    labels: np.ndarray          # N int (1 fg, 0 bg)
    box: np.ndarray | None      # 4 float64 (x0, y0, x1, y1) or None

    def onnx_inputs(self, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """point_coords (1xMx2 float32) and point_labels (1xM float32) for the decoder graph: the
        points, then the box as two corners labelled 2/3, or a padding point labelled -1 when there is
        no box (as upstream's prompt encoder does)."""
        coords = [apply_coords(self.coords, size)] if len(self.coords) else []
        labels = [self.labels.astype(np.float32)] if len(self.labels) else []
        if self.box is not None:
            coords.append(apply_coords(self.box.reshape(2, 2), size))
            labels.append(np.array([2, 3], dtype=np.float32))
        else:
            coords.append(np.zeros((1, 2)))
            labels.append(np.array([-1], dtype=np.float32))
        return (np.concatenate(coords).astype(np.float32)[None],
                np.concatenate(labels).astype(np.float32)[None])


def _number(v: Any, what: str, param: str) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise BadRequest(f"{what} must be a number, got {v!r}.", param=param) from None
    if not math.isfinite(f):
        raise BadRequest(f"{what} must be a finite number, got {v!r}.", param=param)
    return f


def parse_prompt(points: Iterable[Sequence[Any]] | None, box: Sequence[Any] | None,
                 original_size: tuple[int, int], scale: float = 1.0) -> Prompt:
    """Check points [(x, y[, label])] and box (x0, y0, x1, y1), given in ORIGINAL image pixels, and
    return them in working-image pixels (``scale`` = working / original)."""
    h, w = original_size
    if points is not None and (isinstance(points, (str, bytes, dict)) or not hasattr(points, "__len__")):
        raise BadRequest(f"`points` must be a list of (x, y, label) points, got {str(points)[:40]!r}.",
                         param="points")
    if points is not None and len(points) > MAX_POINTS:
        raise PayloadTooLarge(f"`points` has {len(points):,} points; at most {MAX_POINTS} are accepted. Send the "
                              "clicks of one object (refine with `prev_mask`).", param="points")
    pts = list(points) if points is not None else []
    if not pts and box is None:
        raise BadRequest("no prompt given: pass at least one point (x, y, label) with label 1 = object, "
                         "0 = background, or a box (x0, y0, x1, y1).", param="points")
    coords, labels = [], []
    for i, p in enumerate(pts):
        if isinstance(p, (str, bytes)) or not hasattr(p, "__len__") or len(p) not in (2, 3):
            raise BadRequest(f"point {i} must be (x, y) or (x, y, label), got {p!r}.", param="points")
        x = _number(p[0], f"point {i} x", "points")
        y = _number(p[1], f"point {i} y", "points")
        lab = p[2] if len(p) == 3 else 1
        lab_f = _number(lab, f"point {i} label", "points")
        if lab_f not in (0.0, 1.0):
            raise BadRequest(f"point {i} has label {lab!r}; labels are 1 (object / foreground) or 0 "
                             "(background). Give boxes with `box`.", param="points")
        if not (0 <= x < w and 0 <= y < h):
            raise BadRequest(f"point {i} ({x:g}, {y:g}) is outside the {w}x{h} image; x must be in "
                             f"[0, {w}) and y in [0, {h}).", param="points")
        coords.append((x * scale, y * scale))
        labels.append(int(lab_f))
    bx = None
    if box is not None:
        if isinstance(box, (str, bytes)) or not hasattr(box, "__len__") or len(box) != 4:
            raise BadRequest(f"`box` must be 4 numbers x0, y0, x1, y1, got {box!r}.", param="box")
        x0, y0, x1, y1 = (_number(v, "`box` coordinate", "box") for v in box)
        if x1 < x0 or y1 < y0:
            raise BadRequest(f"`box` must be x0, y0, x1, y1 with x1 >= x0 and y1 >= y0, got "
                             f"({x0:g}, {y0:g}, {x1:g}, {y1:g}); swap the corners.", param="box")
        if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
            raise BadRequest(f"`box` ({x0:g}, {y0:g}, {x1:g}, {y1:g}) reaches outside the {w}x{h} image; "
                             f"keep x in 0..{w} and y in 0..{h}.", param="box")
        bx = np.array([x0, y0, x1, y1], dtype=np.float64) * scale
    return Prompt(coords=np.array(coords, dtype=np.float64).reshape(-1, 2),
                  labels=np.array(labels, dtype=np.int64), box=bx)


# 4. previous mask (refinement) -------------------------------------------------------------------

def mask_input(prev: Any, size: tuple[int, int]) -> np.ndarray | None:
    """The decoder's 1x1x256x256 mask_input from a previous result's low-res logits (256x256 float)
    or a binary mask the size of the working image (converted to +/- MASK_INPUT_LOGIT)."""
    if prev is None:
        return None
    low_res = getattr(prev, "low_res", None)           # a Mask / SegmentResult from an earlier call
    if low_res is None and hasattr(prev, "masks") and hasattr(prev, "best"):
        low_res = prev.masks[prev.best].low_res
    if low_res is not None:
        prev = low_res
    a = np.asarray(prev)
    if a.ndim == 4 and a.shape[:2] == (1, 1):
        a = a[0, 0]
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.shape == (LOW_RES, LOW_RES) and np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise BadRequest("`prev_mask` logits contain NaN or inf.", param="prev_mask")
        return a.astype(np.float32)[None, None]
    h, w = size
    if a.ndim == 3 and a.shape[2] in (3, 4):            # an RGB(A) PNG of a mask
        a = a[..., 0]
    if a.shape != (h, w):
        raise BadRequest(f"`prev_mask` must be a {w}x{h} mask (the image's size) or 256x256 low-res "
                         f"logits from a previous result, got shape {list(a.shape)}.", param="prev_mask")
    binary = (a > 0).astype(np.uint8) * 255
    nh, nw = preprocess_shape(h, w)
    big = np.zeros((IMG_SIZE, IMG_SIZE), dtype=np.uint8)
    big[:nh, :nw] = np.asarray(Image.fromarray(binary).resize((nw, nh), Image.Resampling.NEAREST))
    small = np.asarray(Image.fromarray(big).resize((LOW_RES, LOW_RES), Image.Resampling.BILINEAR),
                       dtype=np.float32) / 255.0
    return ((small * 2.0 - 1.0) * MASK_INPUT_LOGIT).astype(np.float32)[None, None]
