"""The three front doors over the real scheduler and the tiny exported model installed in a test
EDGE_HOME: Runtime.segment / embed, `edge-run segment`, POST /v1/segment."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge.devices import cpu_backend
from edge.errors import BadRequest
from edge.jobs import JobSpec, Priority, Step
from edge.segment import postprocess as post
from edge.segment import preprocess as pre
from edge.segment.predictor import OnnxSamPredictor

from support import SEG_MODEL as MODEL_ID  # as installed by conftest.seg_home
from support import THREADS


@pytest.fixture(scope="module")
def photo_path(photo, tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("img") / "coffee.jpg"
    Image.fromarray(photo).save(p, quality=95)
    return p


@pytest.fixture(scope="module")
def shapes_path(shapes_image, tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("img") / "shapes.png"
    Image.fromarray(shapes_image).save(p)
    return p


# -- Python API ---------------------------------------------------------------------------------

def test_api_second_click_skips_the_encoder(seg_runtime, shapes_path, shapes_image, sam_fp32_dir):
    rt = seg_runtime
    before = rt.segment_stats()
    r1 = rt.segment(shapes_path, points=[(170, 200, 1)])
    mid = rt.segment_stats()
    assert r1.encoder_ran and mid["encoder_calls"] == before["encoder_calls"] + 1
    # same pixels, other container, other prompt: decoder only
    r2 = rt.segment(shapes_path.read_bytes(), points=[(170, 200, 1), (500, 100, 0)], box=None)
    after = rt.segment_stats()
    assert not r2.encoder_ran
    assert after["encoder_calls"] == mid["encoder_calls"]
    assert after["decoder_calls"] == mid["decoder_calls"] + 1 and after["cache_hits"] > mid["cache_hits"]
    # and by id alone
    r3 = rt.segment(image_id=r1.image_id, box=(350, 70, 545, 240))
    assert rt.segment_stats()["encoder_calls"] == mid["encoder_calls"]
    # results: single point -> 3 candidates (auto multimask), several points / box -> 1
    assert len(r1.masks) == 3 and len(r2.masks) == 1 and len(r3.masks) == 1
    assert r1.best == int(np.argmax([m.score for m in r1.masks]))
    for m in r1.masks:
        assert m.mask.shape == shapes_image.shape[:2] and m.area == int(m.mask.sum())
    # the API's masks are exactly the predictor's for the same prompt (no plumbing drift)
    # (the fp32 encoder on the backend auto picks for it: OpenVINO where it computes in bf16, else onnxruntime)
    p = OnnxSamPredictor.from_files(sam_fp32_dir / "encoder.onnx", sam_fp32_dir / "decoder.onnx", threads=THREADS,
                                    encoder_device=cpu_backend("auto", "fp32").device)
    direct = p.segment(shapes_image, points=[(170, 200, 1)], multimask=True)
    for a, b in zip(r1.masks, direct.masks):
        np.testing.assert_array_equal(a.mask, b.mask)


def test_api_embed_warms_the_cache_and_refinement(seg_runtime, photo):
    rt = seg_runtime
    info = rt.embed(photo)
    assert info["encoder_ran"] is True and info["size"] == list(photo.shape[:2])
    assert rt.embed(photo)["encoder_ran"] is False
    n = rt.segment_stats()["encoder_calls"]
    first = rt.segment(photo, points=[(300, 200, 1)])
    refined = rt.segment(photo, points=[(300, 200, 1), (50, 50, 0)], prev_mask=first)
    assert not first.encoder_ran and not refined.encoder_ran
    assert rt.segment_stats()["encoder_calls"] == n
    assert refined.mask.shape == photo.shape[:2]


def test_api_huge_image_is_downscaled_with_the_stated_limit(seg_runtime):
    wide = np.zeros((200, pre.MAX_SIDE + 904, 3), np.uint8)    # 5000 px wide
    wide[:, 2000:3000] = (200, 30, 30)
    res = seg_runtime.segment(wide, points=[(2500, 100, 1)])   # original-image pixels
    scale = pre.MAX_SIDE / 5000
    assert res.original_size == (200, 5000) and res.scale == pytest.approx(scale)
    assert res.size == (round(200 * scale), pre.MAX_SIDE) and res.mask.shape == res.size
    with pytest.raises(BadRequest, match="outside the 5000x200 image"):
        seg_runtime.segment(wide, points=[(5001, 10)])


def test_api_bad_input(seg_runtime, photo):
    rt = seg_runtime
    with pytest.raises(BadRequest, match="no prompt"):
        rt.segment(photo)
    with pytest.raises(BadRequest, match="outside"):
        rt.segment(photo, points=[(5000, 10)])
    with pytest.raises(BadRequest, match="not in the embedding cache"):
        rt.segment(image_id="0" * 32, points=[(1, 1)])
    with pytest.raises(BadRequest, match="give `image`"):
        rt.segment(points=[(1, 1)])


def test_click_waits_at_most_one_batch_step(seg_runtime, photo):
    """A decode on a cached image must not wait behind a long batch job (e.g. image generation) for
    more than one of its steps."""
    rt = seg_runtime
    rt.embed(photo)
    progress = {"steps": 0}
    step_s = 0.15

    def long_batch(engine):
        for i in range(40):
            time.sleep(step_s)          # stands in for a UNet step occupying the worker
            progress["steps"] += 1
            yield Step(kind="unet", index=i + 1, total=40)
        return "done"

    img = pre.load_image(photo)          # decoded and hashed up front: time only the scheduling
    batch = rt.submit(JobSpec(model_id=MODEL_ID, work=long_batch, priority=Priority.BATCH, label="fake_unet"))
    try:
        events = batch.events()
        next(events)                     # the batch job is running
        start_steps = progress["steps"]
        res = rt.segment(img, points=[(300, 200, 1)])
        ran = progress["steps"] - start_steps
        assert not res.encoder_ran
        assert ran <= 2, f"{ran} batch steps ran while the click waited"
        assert not batch.done
    finally:
        batch.cancel()


# -- CLI ----------------------------------------------------------------------------------------

def _cli(args: list[str], home: Path) -> int:
    from edge.cli import main

    return main([*args, "--home", str(home), "--threads", str(THREADS), "--offline"])


def test_cli_writes_mask_overlay_and_json(seg_home, photo_path, photo, tmp_path, capsys):
    mask, ov, js = tmp_path / "mask.png", tmp_path / "overlay.png", tmp_path / "masks.json"
    code = _cli(["segment", str(photo_path), "--point", "320,240", "--point", "100,80,0", "-o", str(mask),
                 "--overlay", str(ov), "--json", str(js), "--model", MODEL_ID], seg_home)
    out = capsys.readouterr().out
    assert code == 0, out
    assert "score" in out and f"wrote {mask}" in out
    m = np.asarray(Image.open(mask))
    assert m.shape == photo.shape[:2] and set(np.unique(m)) <= {0, 255}
    o = Image.open(ov)
    assert o.size == (photo.shape[1], photo.shape[0]) and o.mode == "RGB"
    data = json.loads(js.read_text())
    best = data["best"]
    ann = data["annotations"][best]
    assert ann["best"] is True and data["images"][0]["height"] == photo.shape[0]
    np.testing.assert_array_equal(post.rle_decode(ann["segmentation"]), m > 0)
    assert ann["area"] == int((m > 0).sum())
    assert all(len(p) >= 6 for p in ann["polygons"])


@pytest.mark.parametrize("args, match", [
    (["--point", "320"], "needs 2 or 3 numbers"),
    (["--point", "a,b"], "must be numbers"),
    (["--point", "5000,10"], "outside"),
    (["--point", "10,10,7"], "label 7"),
    (["--box", "200,10,100,50"], "x1 >= x0"),
    ([], "at least one --point"),
    (["--point", "10,10", "-o", "mask.jpg"], "must end in .png"),
])
def test_cli_bad_input_exits_2_with_one_line(seg_home, photo_path, tmp_path, capsys, args, match):
    code = _cli(["segment", str(photo_path), *[a.replace("mask.jpg", str(tmp_path / "mask.jpg")) for a in args]],
                seg_home)
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("edge-run: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert match in err
    assert list(tmp_path.iterdir()) == []


def test_cli_non_image_file(seg_home, tmp_path, capsys):
    bad = tmp_path / "notes.jpg"
    bad.write_text("definitely not a jpeg")
    code = _cli(["segment", str(bad), "--point", "1,1", "-o", str(tmp_path / "m.png")], seg_home)
    assert code == 2 and "not a readable image" in capsys.readouterr().err
    assert not (tmp_path / "m.png").exists()


def test_cli_console_entry_point(seg_home, shapes_path, tmp_path):
    """The installed-style invocation, in a child process."""
    out = tmp_path / "m.png"
    proc = subprocess.run([sys.executable, "-m", "edge.cli", "segment", str(shapes_path), "--box", "350,70,545,240",
                           "-o", str(out), "--home", str(seg_home), "--threads", "2", "--offline"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert Image.open(out).size == (640, 480)


# -- server -------------------------------------------------------------------------------------

def _post(url: str, body: dict):
    import httpx

    return httpx.post(url + "/v1/segment", json=body, timeout=60)


def _b64_file(p: Path) -> str:
    return base64.b64encode(p.read_bytes()).decode()


def test_server_segment_then_cached_click(seg_server, seg_runtime, photo_path, photo):
    rt = seg_runtime
    img = pre.load_image(photo_path)
    rt.segment_stats()  # model loaded
    body = {"image": _b64_file(photo_path), "points": [[320, 240, 1]], "multimask": True}
    r = _post(seg_server, body)
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["image_id"] == img.image_id and len(d["masks"]) == 3 and 0 <= d["best"] < 3
    for m in d["masks"]:
        png = np.asarray(Image.open(io.BytesIO(base64.b64decode(m["png_b64"])))) > 0
        assert png.shape == photo.shape[:2]
        assert m["rle"]["size"] == list(photo.shape[:2])
        np.testing.assert_array_equal(post.rle_decode(m["rle"]), png)
        assert m["area"] == int(png.sum()) and len(m["bbox"]) == 4 and isinstance(m["score"], float)
    n = rt.segment_stats()["encoder_calls"]
    r2 = _post(seg_server, {"image_id": d["image_id"], "points": [[320, 240, 1], [100, 80, 0]],
                            "prev_mask": d["masks"][d["best"]]["png_b64"]})
    assert r2.status_code == 200, r2.text
    assert r2.json()["encoder_ran"] is False and len(r2.json()["masks"]) == 1
    assert rt.segment_stats()["encoder_calls"] == n          # the click ran only the decoder


def test_server_bad_input_is_400_and_stays_up(seg_server, photo_path):
    good = _b64_file(photo_path)
    cases = [
        ({"image": base64.b64encode(b"not an image at all").decode(), "points": [[1, 1]]}, "not a readable image"),
        ({"image": "%%% not base64 %%%", "points": [[1, 1]]}, "not valid base64"),
        ({"image": good}, "no prompt"),
        ({"image": good, "points": [[9999, 1, 1]]}, "outside"),
        ({"image": good, "points": [[10, 10, 4]]}, "label 4"),
        ({"image": good, "box": [300, 10, 100, 50]}, "x1 >= x0"),
        ({"image_id": "f" * 32, "points": [[1, 1]]}, "not in the embedding cache"),
        ({"points": [[1, 1]]}, "send `image`"),
        ({"image": good, "points": "nope"}, "points"),
        ({"image": good, "points": [[10, 10]], "prev_mask": base64.b64encode(b"xx").decode()}, "prev_mask"),
    ]
    for body, match in cases:
        r = _post(seg_server, body)
        assert r.status_code == 400, (body.keys(), r.status_code, r.text)
        err = r.json()["error"]
        assert match in err["message"] and err["type"] == "invalid_request_error"
    import httpx

    assert httpx.get(seg_server + "/health", timeout=10).json()["status"] == "ok"
    assert _post(seg_server, {"image": good, "box": [10, 10, 300, 200]}).status_code == 200


def test_server_grayscale_rgba_16bit_are_converted(seg_server):
    for arr, mode in [(np.full((60, 80), 120, np.uint8), "L"), (np.full((60, 80, 4), 200, np.uint8), "RGBA"),
                      (np.full((60, 80), 40000, np.uint16), None)]:
        buf = io.BytesIO()
        Image.fromarray(arr, mode).save(buf, format="PNG")
        r = _post(seg_server, {"image": base64.b64encode(buf.getvalue()).decode(), "points": [[40, 30, 1]]})
        assert r.status_code == 200, r.text
        assert r.json()["size"] == [60, 80]
