"""Pre/post-processing against references no one here wrote: upstream MobileSAM's transforms
(torchvision), pycocotools' RLE, PIL's polygon rasteriser."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from edge.errors import BadRequest, PayloadTooLarge
from edge.segment import postprocess as post
from edge.segment import preprocess as pre
from edge.segment.cache import Embedding, EmbeddingCache


# -- preprocessing vs upstream ---------------------------------------------------------------------

@pytest.mark.parametrize("size", [(480, 640), (1000, 333), (77, 1500), (1024, 1024)])
def test_encoder_input_matches_upstream(size, sam_torch):
    import torch
    from mobile_sam.utils.transforms import ResizeLongestSide

    rng = np.random.default_rng(size[0])
    rgb = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    ref_resized = ResizeLongestSide(1024).apply_image(rgb)
    ref = sam_torch.preprocess(torch.as_tensor(ref_resized).permute(2, 0, 1)[None]).numpy()
    ours, resized_size = pre.encoder_input(rgb)
    assert resized_size == ref_resized.shape[:2]
    assert ours.shape == (1, 3, 1024, 1024)
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)


def test_coords_match_upstream():
    from mobile_sam.utils.transforms import ResizeLongestSide

    pts = np.array([[0, 0], [639.5, 479], [100.25, 33.0]])
    for size in [(480, 640), (1000, 333), (2000, 3000)]:
        np.testing.assert_allclose(pre.apply_coords(pts, size), ResizeLongestSide(1024).apply_coords(pts, size))


def test_prompt_onnx_inputs_pad_without_box_and_corners_with_box():
    p = pre.parse_prompt([(10, 20, 1), (30, 40, 0)], None, (100, 200))
    coords, labels = p.onnx_inputs((100, 200))
    assert labels.tolist() == [[1, 0, -1]] and coords.shape == (1, 3, 2)
    np.testing.assert_allclose(coords[0, 0], [10 * 1024 / 200, 20 * 512 / 100])
    p = pre.parse_prompt([(10, 20)], (5, 6, 50, 60), (100, 200))
    coords, labels = p.onnx_inputs((100, 200))
    assert labels.tolist() == [[1, 2, 3]]
    np.testing.assert_allclose(coords[0, 1:], [[5 * 5.12, 6 * 5.12], [50 * 5.12, 60 * 5.12]])


# -- image conversions --------------------------------------------------------------------------

def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_grayscale_rgba_16bit_palette_are_converted():
    gray = pre.load_image(_png(Image.fromarray(np.full((8, 9), 100, np.uint8))))
    assert gray.rgb.shape == (8, 9, 3) and (gray.rgb == 100).all() and gray.converted_from == "L"
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:2, :, 3] = 255          # top half opaque red, bottom half transparent -> white
    out = pre.load_image(_png(Image.fromarray(rgba, "RGBA"))).rgb
    assert out[0, 0].tolist() == [200, 0, 0] and out[3, 0].tolist() == [255, 255, 255]
    sixteen = np.full((5, 6), 65535, np.uint16)
    sixteen[0, 0] = 257 * 10
    img16 = Image.fromarray(sixteen)
    loaded = pre.load_image(_png(img16))
    assert loaded.converted_from.startswith("I")
    assert loaded.rgb[1, 1].tolist() == [255, 255, 255] and loaded.rgb[0, 0].tolist() == [10, 10, 10]
    pal = Image.fromarray(np.arange(12, dtype=np.uint8).reshape(3, 4)).convert("P")
    assert pre.load_image(_png(pal)).rgb.shape == (3, 4, 3)
    assert pre.load_image(np.ones((3, 3), np.float32)).rgb.max() == 255


def test_same_pixels_same_id_whatever_the_container(shapes_image, tmp_path):
    path = tmp_path / "s.png"
    Image.fromarray(shapes_image).save(path)
    ids = {pre.load_image(shapes_image).image_id, pre.load_image(path).image_id,
           pre.load_image(path.read_bytes()).image_id, pre.load_image(Image.open(path)).image_id}
    assert len(ids) == 1
    other = shapes_image.copy()
    other[0, 0, 0] ^= 1
    assert pre.load_image(other).image_id not in ids


def test_huge_image_is_downscaled_to_the_stated_limit():
    big = np.zeros((100, pre.MAX_SIDE * 2, 3), np.uint8)
    img = pre.load_image(big)
    assert max(img.size) == pre.MAX_SIDE and img.scale == pytest.approx(0.5)
    assert img.original_size == (100, pre.MAX_SIDE * 2)
    # prompts are given in original pixels and scaled
    p = pre.parse_prompt([(8000, 50)], None, img.original_size, img.scale)
    assert p.coords.tolist() == [[4000.0, 25.0]]


@pytest.mark.parametrize("src, match", [
    (b"this is not an image", "not a readable image"),
    (b"", "empty"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "not a readable image"),
    ("/nonexistent/photo.jpg", "does not exist"),
    (np.zeros((3, 3, 2), np.uint8), "must be HxW"),
    (np.full((3, 3), 2.0), r"\[0, 1\]"),
    (12345, "must be a file path"),
])
def test_bad_images_are_clear_errors(src, match):
    with pytest.raises(BadRequest, match=match):
        pre.load_image(src)


def test_decompression_bomb_is_refused():
    img = Image.new("1", (20000, 20000))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    with pytest.raises(PayloadTooLarge, match="pixels"):
        pre.load_image(buf.getvalue())


@pytest.mark.parametrize("points, box, match", [
    (None, None, "no prompt"),
    ([], None, "no prompt"),
    ([(700, 10)], None, r"outside the 640x480 image"),
    ([(-1, 10, 1)], None, "outside"),
    ([(10, 10, 5)], None, "label 5"),
    ([(10, 10, 2)], None, "label 2"),
    ([(10, "a")], None, "must be a number"),
    ([(10, float("nan"))], None, "finite"),
    ([(1, 2, 3, 4)], None, r"\(x, y\) or \(x, y, label\)"),
    (None, (100, 10, 50, 60), "x1 >= x0"),
    (None, (10, 100, 50, 60), "swap the corners"),
    (None, (10, 10, 50), "4 numbers"),
    (None, (0, 0, 700, 60), "outside"),
])
def test_bad_prompts_are_clear_errors(points, box, match):
    with pytest.raises(BadRequest, match=match):
        pre.parse_prompt(points, box, (480, 640))


def test_prev_mask_forms():
    h, w = 300, 400
    full = np.zeros((h, w), bool)
    full[50:150, 100:300] = True
    mi = pre.mask_input(full, (h, w))
    assert mi.shape == (1, 1, 256, 256) and mi.dtype == np.float32
    # the object sits at rows 50..150 of 300 -> 1024-frame rows ~128..384 of 768 -> low-res 32..96
    assert mi[0, 0, 64, 128] > 0 and mi[0, 0, 10, 10] < 0 and mi[0, 0, 250, 10] < 0
    logits = np.random.default_rng(0).normal(size=(256, 256)).astype(np.float32)
    np.testing.assert_array_equal(pre.mask_input(logits, (h, w))[0, 0], logits)
    with pytest.raises(BadRequest, match="prev_mask"):
        pre.mask_input(np.zeros((10, 10), bool), (h, w))


# -- RLE vs pycocotools --------------------------------------------------------------------------

def _masks():
    rng = np.random.default_rng(3)
    yield np.zeros((7, 5), bool)
    yield np.ones((6, 4), bool)
    m = np.zeros((50, 80), bool)
    m[10:30, 20:60] = True
    m[0, 0] = True
    yield m
    yield rng.random((64, 48)) > 0.5
    yield rng.random((300, 200)) > 0.97


def test_rle_matches_pycocotools():
    from pycocotools import mask as cm

    for m in _masks():
        ours = post.rle_encode(m)
        ref = cm.encode(np.asfortranarray(m.astype(np.uint8)))
        assert ours["size"] == list(ref["size"])
        assert ours["counts"] == ref["counts"].decode("ascii")
        np.testing.assert_array_equal(post.rle_decode(ours), m)
        np.testing.assert_array_equal(post.rle_decode(post.rle_encode(m, compressed=False)), m)
        np.testing.assert_array_equal(cm.decode({"size": ours["size"], "counts": ours["counts"].encode()}), m)
        assert int(cm.area(ref)) == int(m.sum())


def test_bbox_and_area():
    m = np.zeros((50, 80), bool)
    m[10:30, 20:60] = True
    mk = post.Mask(mask=m, score=0.5, low_res=np.zeros((256, 256), np.float32))
    assert mk.bbox == (20, 10, 59, 29) and mk.area == 800
    assert post.mask_bbox(np.zeros((3, 3), bool)) == (0, 0, 0, 0)


# -- polygons -----------------------------------------------------------------------------------

def test_polygons_rasterise_back_to_the_mask():
    from PIL import ImageDraw

    img = Image.new("L", (300, 200), 0)
    d = ImageDraw.Draw(img)
    d.ellipse((20, 30, 140, 170), fill=255)
    d.rectangle((180, 20, 280, 120), fill=255)
    d.ellipse((200, 40, 230, 70), fill=0)          # a hole: polygons cover it, the RLE keeps it
    m = np.asarray(img) > 0
    polys = post.mask_to_polygons(m)
    assert len(polys) == 2                         # two regions, the hole is not a polygon
    back = post.polygons_to_mask(polys, m.shape)
    filled = m.copy()
    filled[40:71, 200:231] |= back[40:71, 200:231]
    from export.verify import iou

    assert iou(back, filled) > 0.97
    assert len(polys[0]) < 2 * 200                 # simplified, not one vertex per boundary pixel


def test_polygons_of_single_pixels_and_empty():
    m = np.zeros((10, 10), bool)
    assert post.mask_to_polygons(m) == []
    m[5, 5] = True
    polys = post.mask_to_polygons(m, tolerance=0)
    assert len(polys) == 1 and len(polys[0]) == 8   # a diamond around the pixel centre


# -- writers and cache --------------------------------------------------------------------------

def test_writers_are_atomic_and_right_size(tmp_path, shapes_image):
    m = np.zeros(shapes_image.shape[:2], bool)
    m[100:200, 50:300] = True
    p = post.save_mask_png(m, tmp_path / "m.png")
    back = np.asarray(Image.open(p))
    assert back.shape == m.shape and set(np.unique(back)) == {0, 255}
    np.testing.assert_array_equal(back > 0, m)
    o = post.save_overlay_png(shapes_image, m, tmp_path / "o.png", points=[(60, 110, 1), (5, 5, 0)],
                              box=(50, 100, 300, 200))
    ov = np.asarray(Image.open(o))
    assert ov.shape == shapes_image.shape
    assert not np.array_equal(ov[150, 150], shapes_image[150, 150])   # tinted inside
    np.testing.assert_array_equal(ov[400, 600], shapes_image[400, 600])  # untouched outside
    assert [q.name for q in tmp_path.iterdir() if q.name.startswith(".")] == []
    with pytest.raises(BadRequest, match="must end in"):
        post.check_output_path(tmp_path / "m.jpg", suffixes=(".png",), param="--out")
    with pytest.raises(BadRequest, match="does not exist"):
        post.check_output_path(tmp_path / "nope" / "m.png", suffixes=(".png",), param="--out")


def _emb(i: str, mb: int = 1) -> Embedding:
    return Embedding(image_id=i, features=np.zeros((mb << 20) // 4, np.float32), size=(1, 1),
                     original_size=(1, 1), scale=1.0)


def test_cache_is_lru_and_bounded():
    c = EmbeddingCache(max_bytes=3 << 20)
    for k in "abc":
        c.put(_emb(k))
    assert c.get("a") is not None                  # a is now most recent
    c.put(_emb("d"))                               # evicts b (least recently used)
    assert c.keys() == ["c", "a", "d"] and "b" not in c
    assert c.nbytes <= c.max_bytes
    c.put(_emb("huge", mb=5))                      # larger than the budget: not cached, nothing flushed
    assert "huge" not in c and len(c) == 3
    assert c.hits == 1 and c.get("zzz") is None and c.misses == 1


def test_runtime_never_imports_torch():
    import subprocess
    import sys

    code = ("import sys, edge.segment.engine, edge.segment.api, edge.segment.cli, edge.server.segment_routes; "
            "bad = [m for m in ('torch', 'transformers', 'diffusers', 'mobile_sam') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
