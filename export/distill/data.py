"""Training and held-out data for the recipes, generated or shipped (nothing is downloaded).

* ``shapes_with_captions``: images of coloured shapes on plain or textured backgrounds, with the
  caption that describes them (text-to-image distillation); ``simple_shapes_with_captions``: a
  smaller caption space (shape, colour, background colour) a tiny teacher learns to follow quickly;
* ``procedural_texture`` / ``scene``: textures and multi-object scenes (unlabeled images);
* ``skimage_photos``: the real photos that ship inside scikit-image's wheel;
* ``load_corpus`` / ``corpus_split``: the public-domain text corpus shipped in ``data/corpus.txt``
  (or a user's .txt file / folder), split into training and held-out text by paragraphs;
* ``ImageFolder``: a user's folder of images (optionally with same-named .txt captions), read lazily.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

DATA_DIR = Path(__file__).parent / "data"
CORPUS = DATA_DIR / "corpus.txt"

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (214, 39, 40), "green": (44, 160, 44), "blue": (31, 119, 180), "yellow": (240, 210, 30),
    "purple": (148, 103, 189), "orange": (255, 127, 14), "white": (245, 245, 245), "black": (20, 20, 20),
    "pink": (240, 140, 190), "brown": (140, 86, 75), "gray": (127, 127, 127), "cyan": (23, 190, 207),
}
SHAPES = ("circle", "square", "triangle", "diamond", "ring", "cross", "star")
SIZES = {"small": 0.22, "medium": 0.36, "large": 0.5}
TEXTURES = ("plain", "striped", "checkered", "noisy", "gradient", "dotted")
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "colorwheel", "hubble_deep_field",
          "camera", "brick", "grass", "gravel", "coins", "moon", "horse", "clock", "text", "page")


# ---------------------------------------------------------------------------------------------- drawing
def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "triangle":
        k, rr = 3, [r]
    elif shape in ("square", "diamond"):
        k, rr = 4, [r]
        angle += np.pi / 4 if shape == "square" else 0.0
    elif shape == "star":
        k, rr = 10, [r, 0.45 * r]
    else:
        raise ValueError(shape)
    return [(cx + rr[i % len(rr)] * np.cos(angle + 2 * np.pi * i / k - np.pi / 2),
             cy + rr[i % len(rr)] * np.sin(angle + 2 * np.pi * i / k - np.pi / 2)) for i in range(k)]


def draw_shape(img, shape: str, color: tuple[int, int, int], cx: float, cy: float, r: float,
               angle: float = 0.0) -> None:
    """Draw one filled shape on a PIL image (centre, radius in pixels)."""
    from PIL import ImageDraw

    d = ImageDraw.Draw(img)
    if shape == "circle":
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=color)
    elif shape == "ring":
        d.ellipse((cx - r, cy - r, cx + r, cy + r), outline=color, width=max(2, int(r * 0.35)))
    elif shape == "cross":
        w = r * 0.35
        d.rectangle((cx - r, cy - w, cx + r, cy + w), fill=color)
        d.rectangle((cx - w, cy - r, cx + w, cy + r), fill=color)
    else:
        d.polygon(_polygon(shape, cx, cy, r, angle), fill=color)


def procedural_texture(kind: str, size: tuple[int, int], rng: np.random.Generator,
                       colors: tuple[tuple[int, int, int], tuple[int, int, int]] | None = None) -> np.ndarray:
    """An (H, W, 3) uint8 texture: plain, striped, checkered, noisy (multi-octave value noise),
    gradient or dotted, in two colours."""
    h, w = size
    if colors is None:
        names = rng.choice(list(COLORS), 2, replace=False)
        colors = (COLORS[names[0]], COLORS[names[1]])
    a, b = (np.array(c, np.float32) for c in colors)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == "plain":
        t = np.zeros((h, w), np.float32)
    elif kind == "striped":
        theta, period = rng.uniform(0, np.pi), rng.uniform(0.08, 0.25) * min(h, w)
        t = (np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period) > 0).astype(np.float32)
    elif kind == "checkered":
        cell = max(2, int(rng.uniform(0.08, 0.2) * min(h, w)))
        t = (((yy // cell) + (xx // cell)) % 2).astype(np.float32)
    elif kind == "noisy":
        t = np.zeros((h, w), np.float32)
        for octave in range(4):
            n = 2 ** (octave + 2)
            grid = rng.random((n + 1, n + 1)).astype(np.float32)
            gy, gx = yy / h * n, xx / w * n
            y0, x0 = np.floor(gy).astype(int), np.floor(gx).astype(int)
            fy, fx = gy - y0, gx - x0
            fy, fx = fy * fy * (3 - 2 * fy), fx * fx * (3 - 2 * fx)
            v = (grid[y0, x0] * (1 - fx) + grid[y0, x0 + 1] * fx) * (1 - fy) + \
                (grid[y0 + 1, x0] * (1 - fx) + grid[y0 + 1, x0 + 1] * fx) * fy
            t += v / 2 ** octave
        t = (t - t.min()) / max(1e-6, float(t.max() - t.min()))
    elif kind == "gradient":
        theta = rng.uniform(0, 2 * np.pi)
        t = xx / w * np.cos(theta) + yy / h * np.sin(theta)
        t = (t - t.min()) / max(1e-6, float(t.max() - t.min()))
    elif kind == "dotted":
        cell = max(4, int(rng.uniform(0.1, 0.2) * min(h, w)))
        t = ((((yy % cell) - cell / 2) ** 2 + ((xx % cell) - cell / 2) ** 2) < (cell / 4) ** 2).astype(np.float32)
    else:
        raise ValueError(f"unknown texture {kind!r}; one of {TEXTURES}")
    img = a[None, None] * (1 - t[..., None]) + b[None, None] * t[..., None]
    return np.clip(img, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------- captions
PLACES = {"top left": (0.28, 0.28), "top": (0.5, 0.28), "top right": (0.72, 0.28), "left": (0.28, 0.5),
          "center": (0.5, 0.5), "right": (0.72, 0.5), "bottom left": (0.28, 0.72), "bottom": (0.5, 0.72),
          "bottom right": (0.72, 0.72)}
CAPTION_TEXTURES = ("plain", "striped", "checkered", "dotted", "gradient")


def caption_texture(kind: str, size: int, a: tuple[int, int, int], b: tuple[int, int, int]) -> np.ndarray:
    """A background fully described by its caption words (fixed stripe angle / cell sizes)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    if kind == "plain":
        t = np.zeros((size, size), np.float32)
    elif kind == "striped":
        t = ((xx + yy) // max(2, size // 8) % 2).astype(np.float32)
    elif kind == "checkered":
        t = ((yy // max(2, size // 4) + xx // max(2, size // 4)) % 2).astype(np.float32)
    elif kind == "dotted":
        c = max(4, size // 4)
        t = ((((yy % c) - c / 2) ** 2 + ((xx % c) - c / 2) ** 2) < (c / 4) ** 2).astype(np.float32)
    elif kind == "gradient":
        t = xx / max(1, size - 1)
    else:
        raise ValueError(f"unknown background {kind!r}; one of {CAPTION_TEXTURES}")
    img = np.array(a, np.float32)[None, None] * (1 - t[..., None]) + np.array(b, np.float32)[None, None] * t[..., None]
    return np.clip(img, 0, 255).astype(np.uint8)


def shapes_with_captions(n: int, size: int = 64, seed: int = 0) -> list[tuple[np.ndarray, str]]:
    """``n`` (image uint8 (size, size, 3), caption) pairs, each caption describing its image fully: one
    shape of a colour, size and place on a plain or patterned two-colour background, e.g. "a large red
    circle at the top left on a striped blue and white background"."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        shape = str(rng.choice(SHAPES))
        fg, bg, bg2 = (str(c) for c in rng.choice(list(COLORS), 3, replace=False))
        size_word = str(rng.choice(list(SIZES)))
        place = str(rng.choice(list(PLACES)))
        texture = str(rng.choice(CAPTION_TEXTURES))
        img = Image.fromarray(caption_texture(texture, size, COLORS[bg], COLORS[bg2]))
        r = SIZES[size_word] * size / 2
        fx, fy = PLACES[place]
        draw_shape(img, shape, COLORS[fg], fx * size, fy * size, r)
        where = f"on a {bg} background" if texture == "plain" else f"on a {texture} {bg} and {bg2} background"
        out.append((np.asarray(img), f"a {size_word} {fg} {shape} at the {place} {where}".replace("the center", "center")))
    return out


def simple_shapes_with_captions(n: int, size: int = 64, seed: int = 0) -> list[tuple[np.ndarray, str]]:
    """``n`` (image, caption) pairs from a small caption space: one large centred shape of a colour on a
    plain background of another, e.g. "a red circle on a blue background" (7 shapes x 12 x 11 colours =
    924 captions, each fixing its image). A tiny teacher learns to follow these prompts in minutes (no
    place words: a UNet fed pure noise has no sense of where "top left" is until late in training), and
    held-out prompts are unseen combinations of seen words."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        shape = str(rng.choice(SHAPES))
        fg, bg = (str(c) for c in rng.choice(list(COLORS), 2, replace=False))
        img = Image.new("RGB", (size, size), COLORS[bg])
        draw_shape(img, shape, COLORS[fg], size / 2, size / 2, SIZES["large"] * size / 2)
        out.append((np.asarray(img), f"a {fg} {shape} on a {bg} background"))
    return out


# generated caption sets by name (``--data`` of the lcm recipe, ``captions`` of teachers.sd_teacher)
CAPTION_SETS = {"shapes": shapes_with_captions, "simple-shapes": simple_shapes_with_captions}


def scene(seed: int, size: tuple[int, int] = (480, 640), objects: int = 4) -> np.ndarray:
    """An (H, W, 3) uint8 scene: a procedural texture with several shapes (unlabeled images)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    h, w = size
    img = Image.fromarray(procedural_texture(str(rng.choice(TEXTURES)), size, rng))
    for _ in range(objects):
        r = rng.uniform(0.08, 0.25) * min(h, w)
        draw_shape(img, str(rng.choice(SHAPES)), COLORS[str(rng.choice(list(COLORS)))],
                   rng.uniform(r, w - r), rng.uniform(r, h - r), r, angle=float(rng.uniform(0, np.pi)))
    return np.asarray(img)


def skimage_photos(names: tuple[str, ...] = PHOTOS) -> list[tuple[str, np.ndarray]]:
    """The photos shipped in scikit-image's wheel as (name, RGB uint8); missing ones are skipped."""
    try:
        from skimage import data
    except ImportError:
        return []
    out = []
    for name in names:
        try:
            img = np.asarray(getattr(data, name)())
        except Exception:  # noqa: BLE001 - a photo that needs a download (pooch) is not shipped
            continue
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        img = img[..., :3]
        if img.dtype != np.uint8:
            img = (255 * (img.astype(np.float64) / max(1e-9, float(img.max())))).astype(np.uint8)
        out.append((f"skimage.data.{name}", img))
    return out


def unlabeled_images(n: int, seed: int = 0, photos: bool = True) -> list[tuple[str, np.ndarray]]:
    """``n`` unlabeled images: scikit-image photos first (when ``photos``), then generated scenes."""
    out = skimage_photos()[:n] if photos else []
    k = 0
    while len(out) < n:
        out.append((f"scene-{seed}-{k}", scene(seed * 1000 + k, objects=3 + k % 3)))
        k += 1
    return out


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class ImageFolder:
    """The images of a folder (sorted), loaded one at a time when indexed: ``folder[i]`` -> RGB uint8.
    With ``captions=True`` only images with a same-named .txt caption are kept and ``caption(i)``
    returns it; with ``size`` images are resized (shorter side) and centre-cropped to size x size."""

    def __init__(self, folder: str | Path, *, captions: bool = False, size: int | None = None):
        paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        self.paths = [p for p in paths if not captions or p.with_suffix(".txt").exists()]
        self.size = size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        from PIL import Image

        img = Image.open(self.paths[i]).convert("RGB")
        if self.size:
            s = self.size / min(img.size)
            img = img.resize((max(self.size, round(img.width * s)), max(self.size, round(img.height * s))),
                             Image.BICUBIC)
            left, top = (img.width - self.size) // 2, (img.height - self.size) // 2
            img = img.crop((left, top, left + self.size, top + self.size))
        return np.asarray(img)

    def caption(self, i: int) -> str:
        return self.paths[i].with_suffix(".txt").read_text(encoding="utf-8").strip()


# ---------------------------------------------------------------------------------------------- text
def load_corpus(path: str | Path | None = None) -> list[tuple[str, str]]:
    """Documents as (title, text): the shipped corpus (``=== title ===`` headers), a .txt file (split
    the same way, else one document) or a folder of .txt files (one document each)."""
    p = Path(path) if path else CORPUS
    if p.is_dir():
        return [(f.stem, f.read_text(encoding="utf-8")) for f in sorted(p.glob("*.txt"))]
    text = p.read_text(encoding="utf-8")
    parts = re.split(r"^=== (.+?) ===\s*$", text, flags=re.M)
    if len(parts) == 1:
        return [(p.stem, text)]
    return [(parts[i].strip(), parts[i + 1].strip()) for i in range(1, len(parts) - 1, 2)]


def corpus_split(docs: list[tuple[str, str]], held_out: float = 0.1) -> tuple[list[str], list[str]]:
    """(train texts, held-out texts): the last ``held_out`` share of each document's paragraphs (at
    least one paragraph of every document with two or more) is held out."""
    train, held = [], []
    for _, text in docs:
        paras = [x.strip() for x in re.split(r"\n\s*\n", text) if x.strip()]
        k = int(round(len(paras) * held_out)) if len(paras) > 1 else 0
        k = max(1, k) if len(paras) > 1 and held_out > 0 else k
        train.append("\n\n".join(paras[:len(paras) - k]))
        if k:
            held.append("\n\n".join(paras[len(paras) - k:]))
    return train, held
