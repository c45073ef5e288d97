"""Mask post-processing and writers in numpy/PIL: mask selection and thresholding, bbox/area,
COCO RLE (compressed string and raw counts), polygons (marching squares), PNG mask, overlay PNG and
COCO-style JSON. Files are written atomically (temp file + rename): never a half-written file."""

from __future__ import annotations

import base64
import io
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw

from edge.errors import BadRequest

MASK_THRESHOLD = 0.0  # SAM's logit threshold


@dataclass
class Mask:
    """One predicted mask at the working image's size."""

    mask: np.ndarray                       # H x W bool
    score: float                           # the decoder's predicted IoU
    low_res: np.ndarray = field(repr=False)  # 256 x 256 float32 logits (feed back as prev_mask)

    @property
    def area(self) -> int:
        return int(np.count_nonzero(self.mask))

    @property
    def bbox(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1), inclusive pixel coordinates; (0, 0, 0, 0) for an empty mask."""
        return mask_bbox(self.mask)

    def rle(self) -> dict[str, Any]:
        return rle_encode(self.mask)

    def polygons(self, tolerance: float = 0.5) -> list[list[float]]:
        return mask_to_polygons(self.mask, tolerance=tolerance)


@dataclass
class SegmentResult:
    """What ``segment`` returns: the masks (best first is NOT implied; see ``best``)."""

    image_id: str
    masks: list[Mask]
    best: int
    size: tuple[int, int]                  # (H, W) of the masks = working image size
    original_size: tuple[int, int]         # (H, W) of the image as given
    scale: float = 1.0                     # size / original_size (< 1 when a huge image was downscaled)
    encoder_ran: bool = False              # False when the embedding came from the cache
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def mask(self) -> np.ndarray:
        """The best mask."""
        return self.masks[self.best].mask

    def to_dict(self, *, png: bool = False, polygons: bool = False) -> dict[str, Any]:
        """JSON-ready summary (RLE always; base64 PNG / polygons on request)."""
        out = []
        for m in self.masks:
            d: dict[str, Any] = {"score": round(float(m.score), 6), "bbox": list(m.bbox), "area": m.area,
                                 "rle": m.rle()}
            if png:
                d["png_b64"] = base64.b64encode(mask_png_bytes(m.mask)).decode("ascii")
            if polygons:
                d["polygons"] = m.polygons()
            out.append(d)
        return {"image_id": self.image_id, "size": list(self.size), "scale": self.scale, "best": self.best,
                "masks": out}


# 1. decoder outputs -> masks --------------------------------------------------------------------

def select_masks(masks: np.ndarray, scores: np.ndarray, low_res: np.ndarray,
                 multimask: bool) -> list[tuple[np.ndarray, float, np.ndarray]]:
    """SAM's decoder gives 4 masks: index 0 is the single-mask output, 1..3 the multimask outputs
    (as upstream ``MaskDecoder.forward`` slices them). Returns (logits HxW, score, low_res) tuples."""
    idx = range(1, masks.shape[1]) if multimask else range(0, 1)
    return [(masks[0, i], float(scores[0, i]), low_res[0, i]) for i in idx]


def threshold(logits: np.ndarray, value: float = MASK_THRESHOLD) -> np.ndarray:
    return logits > value


def mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return (0, 0, 0, 0)
    cols = np.flatnonzero(mask.any(axis=0))
    return (int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1]))


# 2. COCO RLE -------------------------------------------------------------------------------------

def rle_counts(mask: np.ndarray) -> list[int]:
    """Run lengths over the column-major (Fortran) flattening, starting with a run of zeros."""
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    if flat.size == 0:
        return []
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], change, [flat.size]))
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts.insert(0, 0)
    return counts


def _counts_to_string(counts: Sequence[int]) -> str:
    """pycocotools' compact LEB128-like string (rleToString)."""
    out = []
    for i, c in enumerate(counts):
        x = int(c) - (int(counts[i - 2]) if i > 2 else 0)
        more = True
        while more:
            ch = x & 0x1F
            x >>= 5
            more = (x != -1) if (ch & 0x10) else (x != 0)
            if more:
                ch |= 0x20
            out.append(chr(ch + 48))
    return "".join(out)


def _string_to_counts(s: str) -> list[int]:
    counts: list[int] = []
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def rle_encode(mask: np.ndarray, compressed: bool = True) -> dict[str, Any]:
    """COCO RLE: {"size": [h, w], "counts": str (compressed) or list[int]}."""
    h, w = mask.shape
    counts = rle_counts(mask)
    return {"size": [int(h), int(w)], "counts": _counts_to_string(counts) if compressed else counts}


def rle_decode(rle: dict[str, Any]) -> np.ndarray:
    """Inverse of :func:`rle_encode` (either counts form) -> H x W bool."""
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, (bytes, bytearray)):
        counts = counts.decode("ascii")
    if isinstance(counts, str):
        counts = _string_to_counts(counts)
    counts = np.asarray(counts, dtype=np.int64)
    if counts.sum() != h * w or (counts < 0).any():
        raise BadRequest(f"RLE counts sum to {int(counts.sum())}, expected {h}x{w} = {h * w}.", param="rle")
    values = (np.arange(counts.size) % 2).astype(bool)
    flat = np.repeat(values, counts)
    return flat.reshape((w, h)).T.copy()


# 3. polygons (marching squares) ------------------------------------------------------------------

# corners of a cell: tl=(0,0) tr=(0,1) br=(1,1) bl=(1,0) as (dy, dx); edges as their midpoints
_CORNERS = ((0, 0), (0, 1), (1, 1), (1, 0))
_EDGES = {"t": (0.0, 0.5), "r": (0.5, 1.0), "b": (1.0, 0.5), "l": (0.5, 0.0)}  # (dy, dx)
_EDGE_CORNERS = {"t": (0, 1), "r": (1, 2), "b": (2, 3), "l": (3, 0)}


def _segment_table() -> dict[int, list[tuple[tuple[float, float], tuple[float, float]]]]:
    """For each of the 16 corner patterns, directed segments with the foreground on the right
    (image coordinates, y down). Saddles keep the two foreground corners apart."""
    table = {}
    for case in range(16):
        bits = [(case >> (3 - k)) & 1 for k in range(4)]  # tl, tr, br, bl
        groups: list[list[int]]
        if bits in ([1, 0, 1, 0], [0, 1, 0, 1]):
            groups = [[k] for k in range(4) if bits[k]]
        elif 0 < sum(bits) < 4:
            fg = [k for k in range(4) if bits[k]]
            groups = [fg] if len(fg) <= 2 else [[k for k in range(4) if not bits[k]]]
        else:
            groups = []
        segs = []
        for g in groups:
            # the edges separating this group of corners from the rest
            edges = [e for e, (a, b) in _EDGE_CORNERS.items() if (a in g) != (b in g)]
            p, q = _EDGES[edges[0]], _EDGES[edges[1]]
            # which side is foreground: the group is fg unless it was the single bg corner of a 3-fg cell
            fg_group = bits[g[0]] == 1
            cy = np.mean([_CORNERS[k][0] for k in g]) - (p[0] + q[0]) / 2
            cx = np.mean([_CORNERS[k][1] for k in g]) - (p[1] + q[1]) / 2
            dy, dx = q[0] - p[0], q[1] - p[1]
            right = (-dy * cx + dx * cy) > 0      # group centre on the right of p -> q ?
            if right != fg_group:
                p, q = q, p
            segs.append((p, q))
        table[case] = segs
    return table


_SEGMENTS = _segment_table()


def mask_to_polygons(mask: np.ndarray, tolerance: float = 0.5, min_points: int = 3) -> list[list[float]]:
    """Outer boundaries of the mask's regions as COCO polygons ([x1, y1, x2, y2, ...] in pixel
    coordinates, pixel centres at integers). Holes are not listed (COCO polygons cannot express them;
    use the RLE for exact masks). ``tolerance``: Douglas-Peucker simplification in pixels (0 = off)."""
    m = np.pad(np.asarray(mask, dtype=np.uint8), 1)
    case = (m[:-1, :-1] << 3) | (m[:-1, 1:] << 2) | (m[1:, 1:] << 1) | m[1:, :-1]
    nxt: dict[tuple[int, int], tuple[int, int]] = {}
    for c, segs in _SEGMENTS.items():
        if not segs:
            continue
        ii, jj = np.nonzero(case == c)
        if ii.size == 0:
            continue
        for (py, px), (qy, qx) in segs:
            # doubled integer coordinates of the edge midpoints, in padded-grid units
            a = zip((2 * ii + int(2 * py)).tolist(), (2 * jj + int(2 * px)).tolist())
            b = zip((2 * ii + int(2 * qy)).tolist(), (2 * jj + int(2 * qx)).tolist())
            nxt.update(zip(a, b))
    polygons = []
    while nxt:
        start, cur = nxt.popitem()
        ring = [start]
        while cur != start and cur in nxt:
            ring.append(cur)
            cur = nxt.pop(cur)
        pts = np.array(ring, dtype=np.float64)[:, ::-1] / 2.0 - 1.0   # (x, y), unpadded pixel coords
        # signed area (shoelace, y down): with the foreground on the right, outer rings run clockwise
        # on screen (positive area) and holes anti-clockwise (negative)
        x, y = pts[:, 0], pts[:, 1]
        area = 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))
        if area <= 0:
            continue  # a hole
        pts = _simplify(pts, tolerance)
        if len(pts) >= min_points:
            polygons.append([round(float(v), 2) for v in pts.ravel()])
    polygons.sort(key=len, reverse=True)
    return polygons


def _simplify(pts: np.ndarray, tolerance: float) -> np.ndarray:
    """Drop collinear points, then Douglas-Peucker (closed ring) when tolerance > 0."""
    d1 = np.roll(pts, -1, axis=0) - pts
    d0 = pts - np.roll(pts, 1, axis=0)
    cross = d0[:, 0] * d1[:, 1] - d0[:, 1] * d1[:, 0]
    pts = pts[np.abs(cross) > 1e-12] if len(pts) > 3 else pts
    if tolerance <= 0 or len(pts) <= 4:
        return pts
    # split the ring at its farthest pair (first point and the point farthest from it)
    far = int(np.argmax(np.sum((pts - pts[0]) ** 2, axis=1)))
    keep = np.zeros(len(pts), dtype=bool)
    keep[[0, far]] = True
    closed = np.vstack([pts, pts[:1]])
    stack = [(0, far), (far, len(pts))]
    while stack:
        a, b = stack.pop()
        if b - a < 2:
            continue
        p, q = closed[a], closed[b]
        seg = q - p
        n = float(np.hypot(*seg))
        mid = closed[a + 1:b]
        if n == 0:
            dist = np.hypot(*(mid - p).T)
        else:
            dist = np.abs(seg[0] * (mid[:, 1] - p[1]) - seg[1] * (mid[:, 0] - p[0])) / n
        k = int(np.argmax(dist))
        if dist[k] > tolerance:
            keep[a + 1 + k] = True
            stack += [(a, a + 1 + k), (a + 1 + k, b)]
    return pts[keep]


def polygons_to_mask(polygons: Iterable[Sequence[float]], size: tuple[int, int]) -> np.ndarray:
    """Rasterise COCO polygons (for checks and for clients that only have polygons)."""
    h, w = size
    img = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(img)
    for poly in polygons:
        draw.polygon([(poly[i], poly[i + 1]) for i in range(0, len(poly), 2)], fill=255, outline=255)
    return np.asarray(img) > 0


# 4. writers --------------------------------------------------------------------------------------

def mask_png_bytes(mask: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255, mode="L").save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def overlay_image(rgb: np.ndarray, mask: np.ndarray, *, color: tuple[int, int, int] = (30, 144, 255),
                  alpha: float = 0.5, points: Sequence[Sequence[float]] = (),
                  box: Sequence[float] | None = None) -> Image.Image:
    """The photo with the mask tinted, its outline drawn, and the prompts marked (green = object
    point, red = background point, yellow = box)."""
    base = rgb.astype(np.float32)
    m = np.asarray(mask, dtype=bool)
    tint = np.array(color, dtype=np.float32)
    base[m] = base[m] * (1.0 - alpha) + tint * alpha
    inner = m.copy()
    inner[1:, :] &= m[:-1, :]
    inner[:-1, :] &= m[1:, :]
    inner[:, 1:] &= m[:, :-1]
    inner[:, :-1] &= m[:, 1:]
    base[m & ~inner] = tint
    img = Image.fromarray(np.clip(base + 0.5, 0, 255).astype(np.uint8), mode="RGB")
    draw = ImageDraw.Draw(img)
    r = max(3, round(max(img.size) / 160))
    for p in points:
        label = p[2] if len(p) > 2 else 1
        fill = (40, 200, 60) if int(label) == 1 else (230, 40, 40)
        draw.ellipse((p[0] - r, p[1] - r, p[0] + r, p[1] + r), fill=fill, outline=(255, 255, 255))
    if box is not None:
        draw.rectangle(tuple(float(v) for v in box), outline=(255, 215, 0), width=max(1, r // 2))
    return img


def coco_json(result: "SegmentResult", *, file_name: str | None = None, polygons: bool = True) -> dict:
    """COCO-style results: one annotation per mask with RLE segmentation, polygons, bbox [x, y, w, h]
    (COCO's convention), area and the predicted IoU score; ``best`` marks the best mask."""
    h, w = result.size
    anns = []
    for i, m in enumerate(result.masks):
        x0, y0, x1, y1 = m.bbox
        ann = {"id": i + 1, "image_id": result.image_id, "category_id": 1, "score": float(m.score),
               "area": m.area, "bbox": [x0, y0, x1 - x0 + 1, y1 - y0 + 1] if m.area else [0, 0, 0, 0],
               "segmentation": m.rle(), "iscrowd": 0, "best": i == result.best}
        if polygons:
            ann["polygons"] = m.polygons()
        anns.append(ann)
    return {"images": [{"id": result.image_id, "height": h, "width": w,
                        **({"file_name": file_name} if file_name else {}),
                        "scale_from_original": result.scale}],
            "annotations": anns, "best": result.best}


def check_output_path(path: str | Path, *, suffixes: tuple[str, ...], param: str) -> Path:
    """Refuse an output path we could not write, before any work is done."""
    p = Path(path)
    if p.suffix.lower() not in suffixes:
        raise BadRequest(f"`{param}` {str(p)!r} must end in {' or '.join(suffixes)}.", param=param)
    parent = p.absolute().parent
    if not parent.is_dir():
        raise BadRequest(f"`{param}` folder {str(parent)!r} does not exist; create it first.", param=param)
    if not os.access(parent, os.W_OK):
        raise BadRequest(f"`{param}` folder {str(parent)!r} is not writable; choose another path.", param=param)
    if p.is_dir():
        raise BadRequest(f"`{param}` {str(p)!r} is a folder; give a file name.", param=param)
    return p


def write_atomic(path: str | Path, data: bytes) -> Path:
    """Write bytes to a temp file beside ``path`` and rename it into place."""
    p = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".partial", dir=p.absolute().parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return p


def save_mask_png(mask: np.ndarray, path: str | Path) -> Path:
    """A single-channel PNG: 255 = object, 0 = background, the image's size."""
    return write_atomic(path, mask_png_bytes(mask))


def save_overlay_png(rgb: np.ndarray, mask: np.ndarray, path: str | Path, **kw: Any) -> Path:
    buf = io.BytesIO()
    overlay_image(rgb, mask, **kw).save(buf, format="PNG")
    return write_atomic(path, buf.getvalue())


def save_json(data: dict, path: str | Path) -> Path:
    return write_atomic(path, (json.dumps(data, indent=1) + "\n").encode())
