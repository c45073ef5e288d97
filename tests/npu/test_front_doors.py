"""`--device npu` end to end: the CLI (`edge-run segment` / `edge-run imagine`), the Python API and the
HTTP server (the real openai client for images); a model whose NPU compile crashes libQnnHtp.so leaves
the server up (strict: a 400 naming the crash; auto: the CPU answers)."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from tests.npu.conftest import CHAT_ID, CONTEXT, CRASH_ID, LCM_ID, SAM_ID, SIZE, THREADS, needs_qnn

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


def test_cli_imagine_on_the_npu_and_a_clear_error_for_another_size(npu_home, tmp_path, capsys):
    out = tmp_path / "boat.png"
    assert _cli(npu_home, "imagine", "a boat", "-o", str(out), "--size", f"{SIZE}x{SIZE}", "--steps", "2",
                "--seed", "1", "--model", LCM_ID, "--no-progress") == 0
    assert Image.open(out).size == (SIZE, SIZE) and Image.open(out).info["model"] == LCM_ID
    capsys.readouterr()
    code = _cli(npu_home, "imagine", "a boat", "-o", str(tmp_path / "big.png"), "--size", "128x128", "--steps", "1",
                "--model", LCM_ID, "--no-progress")
    err = capsys.readouterr().err
    assert code == 2 and f"generates {SIZE}x{SIZE} images only" in err and "Traceback" not in err
    assert not (tmp_path / "big.png").exists()
    code = _cli(npu_home, "imagine", "a boat", "-o", str(tmp_path / "x.png"), "--model", "lcm-tiny-fp32-missing",
                "--no-progress")
    assert code != 0 and "Traceback" not in capsys.readouterr().err


def test_server_on_the_npu_with_the_openai_client(npu_server, npu_runtime, photo_path):
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
    click = httpx.post(npu_server + "/v1/segment", json={"model": SAM_ID, "image_id": s.json()["image_id"],
                                                         "points": [[200, 150, 1], [30, 30, 0]]}, timeout=600)
    assert click.status_code == 200 and click.json()["encoder_ran"] is False      # a 3-point decoder graph
    assert httpx.get(npu_server + "/health", timeout=10).json()["status"] == "ok"


def test_a_crashing_npu_compile_leaves_the_server_up(npu_server, npu_home):
    """An LCM whose UNet holds the 5-D Tile that segfaults libQnnHtp.so. Strict server: 400 naming the
    crash, and the server keeps answering. The same model through an auto Runtime: the UNet falls back
    to the CPU, the rest stays on the NPU, the image comes out."""
    import httpx
    from openai import BadRequestError, OpenAI

    from edge.api import Runtime
    from edge.devices import placements

    client = OpenAI(base_url=npu_server + "/v1", api_key="x", max_retries=0, timeout=600)
    with pytest.raises(BadRequestError) as e:
        client.images.generate(model=CRASH_ID, prompt="a boat", size=f"{SIZE}x{SIZE}", response_format="b64_json",
                               extra_body={"steps": 1})
    assert "crashed (SIGSEGV)" in str(e.value) and "--device auto" in str(e.value)
    assert httpx.get(npu_server + "/health", timeout=10).json()["status"] == "ok"
    ok = client.images.generate(model=LCM_ID, prompt="a boat", size=f"{SIZE}x{SIZE}", response_format="b64_json",
                                extra_body={"steps": 1})
    assert ok.data[0].b64_json
    with Runtime(home=str(npu_home), threads=THREADS, offline=True, device="auto") as rt:
        imgs = rt.imagine("a boat", model=CRASH_ID, size=f"{SIZE}x{SIZE}", steps=1, seed=2)
        assert imgs[0].size == (SIZE, SIZE)
    placed = {k: v for k, v in placements().items() if f"/{CRASH_ID}/" in k}
    unet = next(v for k, v in placed.items() if k.endswith("unet.onnx"))
    assert unet["device"] == "cpu" and "crashed" in unet["fallback"]
    text = next(v for k, v in placed.items() if k.endswith("text_encoder.onnx"))
    assert text["device"] == "npu" and text["cpu"] == 0


def test_chat_on_the_npu_through_the_server_matches_the_fp32_cpu_answer(npu_server, npu_home):
    from openai import BadRequestError, OpenAI

    from edge.api import Runtime

    msgs = [{"role": "user", "content": "Name a colour."}]
    client = OpenAI(base_url=npu_server + "/v1", api_key="x", max_retries=0, timeout=600)
    r = client.chat.completions.create(model=CHAT_ID, messages=msgs, max_tokens=6, temperature=0)
    with Runtime(home=str(npu_home), threads=THREADS, offline=True, device="cpu") as rt:
        ref = rt.chat(msgs, model=CHAT_ID + "-fp32", max_tokens=6, temperature=0)
    assert r.choices[0].message.content == ref.text and r.usage.completion_tokens == ref.completion_tokens
    with pytest.raises(BadRequestError, match="context"):
        client.chat.completions.create(model=CHAT_ID, messages=[{"role": "user", "content": "word " * CONTEXT}],
                                       max_tokens=4)
