"""`--device npu` end to end: the CLI (`edge-run segment` / `edge-run imagine`), the Python API and the
HTTP server (the real openai client for images); a model whose NPU compile crashes libQnnHtp.so leaves
the server up (strict: a 400 naming the crash; auto: the CPU answers)."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from tests.npu.conftest import CRASH_ID, LCM_ID, SAM_ID, SIZE, THREADS, needs_qnn

pytestmark = needs_qnn


@pytest.fixture(scope="module")
def photo_path(tmp_path_factory):
    from export.npu.sam import verify_images

    p = tmp_path_factory.mktemp("npu-img") / "cat.png"
    Image.fromarray(verify_images()[0][1]).save(p)
    return p


def _cli(home, *args) -> int:
    from edge.cli import main

    return main([*args, "--home", str(home), "--threads", str(THREADS), "--offline", "--device", "npu"])


def test_cli_segment_and_imagine_on_the_npu(npu_home, photo_path, tmp_path, capsys, sam_fp32):
    from edge.segment import preprocess as pre
    from edge.segment.predictor import OnnxSamPredictor
    from export import verify as V

    mask = tmp_path / "mask.png"
    assert _cli(npu_home, "segment", str(photo_path), "--point", "200,150", "-o", str(mask), "--model", SAM_ID) == 0
    got = np.asarray(Image.open(mask)) > 0
    ref = OnnxSamPredictor.from_files(sam_fp32 / "encoder.onnx", sam_fp32 / "decoder.onnx", threads=THREADS,
                                      device="cpu").segment(str(photo_path), [(200, 150, 1)])
    assert V.iou(got, ref.masks[ref.best].mask) >= 0.85      # the best of 3 may switch on a near tie: looser
    out = tmp_path / "boat.png"
    assert _cli(npu_home, "imagine", "a boat", "-o", str(out), "--size", f"{SIZE}x{SIZE}", "--steps", "2",
                "--seed", "1", "--model", LCM_ID, "--no-progress") == 0
    assert Image.open(out).size == (SIZE, SIZE)
    capsys.readouterr()
    code = _cli(npu_home, "imagine", "a boat", "-o", str(tmp_path / "big.png"), "--size", "128x128", "--steps", "1",
                "--model", LCM_ID, "--no-progress")
    err = capsys.readouterr().err
    assert code == 2 and f"generates {SIZE}x{SIZE} images only" in err and "Traceback" not in err


def test_server_on_the_npu_with_the_openai_client(npu_server, photo_path):
    import httpx
    from openai import BadRequestError, OpenAI

    client = OpenAI(base_url=npu_server + "/v1", api_key="x", max_retries=0, timeout=600)
    r = client.images.generate(model=LCM_ID, prompt="a lighthouse", size=f"{SIZE}x{SIZE}",
                               response_format="b64_json", extra_body={"steps": 2, "seed": 4})
    img = Image.open(io.BytesIO(base64.b64decode(r.data[0].b64_json)))
    assert img.size == (SIZE, SIZE)
    with pytest.raises(BadRequestError, match="images only"):
        client.images.generate(model=LCM_ID, prompt="x", size="128x128", response_format="b64_json",
                               extra_body={"steps": 1})
    body = {"model": SAM_ID, "image": base64.b64encode(photo_path.read_bytes()).decode(), "box": [40, 40, 400, 300]}
    s = httpx.post(npu_server + "/v1/segment", json=body, timeout=600)
    assert s.status_code == 200, s.text
    assert len(s.json()["masks"]) == 1
    assert httpx.get(npu_server + "/health", timeout=10).json()["status"] == "ok"


def test_a_crashing_npu_compile_leaves_the_server_up(npu_server, npu_home, photo_path):
    """Strict server: 400 naming the crash. Same model through an auto Runtime: the CPU runs it."""
    import httpx

    from edge.api import Runtime

    body = {"model": CRASH_ID, "image": base64.b64encode(photo_path.read_bytes()).decode(), "points": [[200, 150, 1]]}
    r = httpx.post(npu_server + "/v1/segment", json=body, timeout=600)
    assert r.status_code == 400, r.text
    msg = r.json()["error"]["message"]
    assert "crashed (SIGSEGV)" in msg and "--device auto" in msg
    assert httpx.get(npu_server + "/health", timeout=10).json()["status"] == "ok"
    ok = httpx.post(npu_server + "/v1/segment", json={**body, "model": SAM_ID}, timeout=600)
    assert ok.status_code == 200, ok.text
    with Runtime(home=str(npu_home), threads=THREADS, offline=True, device="auto") as rt:
        res = rt.segment(str(photo_path), [(200, 150, 1)], model=CRASH_ID)
        assert len(res.masks) == 3
    from edge.devices import placements

    crashed = [p for k, p in placements().items() if CRASH_ID in k and p.get("fallback")]
    assert crashed and "crashed" in json.dumps(crashed)
