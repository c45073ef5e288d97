"""Generated images as PNG files and bytes, with their metadata (prompt, seed, steps, model ...) in
text chunks: what `edge-run imagine` writes and what POST /v1/images/generations returns."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo

INFO_KEYS = ("prompt", "seed", "steps", "guidance_scale", "strength", "model", "decoder", "software")
"""The keys of ``img.info`` the image pipeline sets and PNG files carry."""


def png_info(img: Image.Image) -> PngInfo:
    """PngInfo with the text chunks the pipeline put in ``img.info`` (prompt, seed, steps, model ...)."""
    meta = PngInfo()
    for key in INFO_KEYS:
        if key in img.info:
            meta.add_itxt(key, str(img.info[key]))
    return meta


def png_bytes(img: Image.Image) -> bytes:
    """``img`` encoded as PNG with its metadata text chunks."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", pnginfo=png_info(img))
    return buf.getvalue()


def save_png(img: Image.Image, path: str | Path) -> Path:
    """Write ``img`` as PNG with its metadata text chunks, atomically (temp file + rename)."""
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
