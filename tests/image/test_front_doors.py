"""Runtime.imagine, `edge-run imagine`, POST /v1/images/generations (real openai client), cancellation,
bad input, and chat staying interactive while an image renders."""

from __future__ import annotations

import base64
import io
import threading
import time

import numpy as np
import pytest
from PIL import Image

from edge.errors import BadRequest, Cancelled

from support import IMAGE_MODEL as MODEL_ID
from support import drain


def pixels(img) -> np.ndarray:
    return np.asarray(img.convert("RGB"))


@pytest.fixture(scope="module")
def api_images(image_runtime):
    return image_runtime.imagine("a lighthouse at dusk", size="64x64", steps=2, n=2, seed=7)


# ---------------------------------------------------------------------------------------------- API
def test_api_imagine_returns_images_with_metadata(api_images, image_runtime, make_components):
    from edge.image.pipeline import ImageRequest, LCMPipeline

    assert [i.size for i in api_images] == [(64, 64), (64, 64)]
    assert [i.info["seed"] for i in api_images] == ["7", "8"]
    assert api_images[0].info["model"] == MODEL_ID and api_images[0].info["steps"] == "2"
    # the scheduler ran exactly what the pipeline computes for the precision the runtime picked: the model's
    # default (int8), or where OpenVINO computes in bf16 int8-ov / fp32 on it (edge.image.options._fastest_here)
    precision = image_runtime.image_options(MODEL_ID).precision
    assert precision in ("int8", "int8-ov", "fp32")
    _, direct = drain(LCMPipeline(make_components(precision, device="auto")).generate_steps(
        ImageRequest("a lighthouse at dusk", 64, 64, steps=2, n=2, seed=7)))
    assert all(np.array_equal(pixels(a), pixels(b)) for a, b in zip(api_images, direct))
    assert not np.array_equal(pixels(api_images[0]), pixels(api_images[1]))


def test_api_job_reports_steps(image_runtime):
    h = image_runtime.imagine_job("a red car", size="64x64", steps=3, seed=1)
    kinds = [s.kind for s in h.events()]
    assert kinds == ["text_encode", "unet", "unet", "unet", "decode"]
    assert len(h.result()) == 1


def test_img2img_through_api(image_runtime, tmp_path):
    src = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 72, 3), dtype=np.uint8)).save(src)
    out = image_runtime.imagine("a watercolor", init_image=str(src), strength=0.5, steps=2, seed=3)
    assert out[0].size == (72, 80) and out[0].info["strength"] == "0.5"


def test_cancel_mid_generation(image_runtime):
    h = image_runtime.imagine_job("a slow one", size="256x256", steps=8, n=2, seed=1)
    seen = []
    for step in h.events():
        seen.append(step.kind)
        if step.kind == "unet":
            h.cancel()
            break
    with pytest.raises(Cancelled):
        h.result(timeout=60)
    assert h.steps < 1 + 8 + 2, f"the job ran to the end ({h.steps} steps) despite cancel()"
    # the engine is free again
    assert len(image_runtime.imagine("after cancel", size="64x64", steps=1, seed=0)) == 1


@pytest.mark.parametrize("kw,message", [
    (dict(steps=9), "`steps` must be between 1 and 8, got 9"),
    (dict(steps=0), "`steps` must be between 1 and 8, got 0"),
    (dict(size="65x64"), "`width` must be a multiple of 8, got 65"),
    (dict(size="big"), "`size` 'big' is not WIDTHxHEIGHT"),
    (dict(n=0), "`n` must be between 1 and 10"),
    (dict(prompt="   "), "`prompt` is empty"),
    (dict(prompt="a" * 4001), "`prompt` is 4,001 characters; at most 4,000"),  # the schema's maxLength
    (dict(decoder="sdxl"), "`decoder` 'sdxl' is not available"),
    (dict(init_image=b"not an image"), "`init_image` 12 bytes is not a readable image"),
    (dict(init_image=Image.new("RGB", (64, 64)), strength=0.0), "`strength` must be in (0, 1], got 0.0"),
    (dict(init_image=Image.new("RGB", (64, 64)), strength=1.5), "`strength` must be in (0, 1], got 1.5"),
    (dict(init_image=Image.new("RGB", (64, 64)), strength=0.04, steps=4), "`strength` 0.04 leaves 2 timesteps"),
])
def test_bad_input_is_refused_before_any_work(image_runtime, kw, message):
    kw = {"prompt": "a cat", "size": "64x64", **kw}
    with pytest.raises(BadRequest) as e:
        image_runtime.imagine(kw.pop("prompt"), **kw)
    assert message in e.value.message


def test_size_over_the_ram_budget_is_refused():
    from edge.image.pipeline import ImageRequest, check_request

    with pytest.raises(BadRequest, match=r"2048x2048 needs about 23.4 GB .* RAM budget of 2.0 GB"):
        check_request(ImageRequest("a cat", 2048, 2048), ram_budget=2 << 30)
    check_request(ImageRequest("a cat", 512, 512, decoder="taesd"), ram_budget=2 << 30)


def test_long_prompt_is_truncated_with_a_warning(image_runtime, caplog):
    with caplog.at_level("WARNING", logger="edge.image"):
        out = image_runtime.imagine("a cat " * 60, size="64x64", steps=1, seed=0)
    assert len(out) == 1 and "CLIP reads at most 77" in caplog.text


# ---------------------------------------------------------------------------------------------- CLI
def cli(image_home, *argv):
    from edge.cli import main

    return main(["imagine", *argv, "--home", str(image_home), "--offline", "--threads", "2"])


def test_cli_writes_png_with_metadata(image_home, tmp_path, capsys, api_images):
    out = tmp_path / "out.png"
    code = cli(image_home, "a lighthouse at dusk", "-o", str(out), "--steps", "2", "--seed", "7", "--size", "64x64")
    captured = capsys.readouterr()
    assert code == 0, captured.err
    img = Image.open(out)
    assert img.format == "PNG" and img.size == (64, 64)
    assert img.text["prompt"] == "a lighthouse at dusk" and img.text["seed"] == "7"
    assert img.text["steps"] == "2" and img.text["model"] == MODEL_ID
    assert np.array_equal(pixels(img), pixels(api_images[0]))  # same seed, same image through any door
    assert "imagine" in captured.err and "4/4" in captured.err  # the per-step progress bar
    assert str(out) in captured.out


def test_cli_batch_numbers_files(image_home, tmp_path, capsys):
    assert cli(image_home, "two cats", "-o", str(tmp_path / "cats.png"), "-n", "2", "--steps", "1", "--size", "64x64",
               "--no-progress") == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cats-1.png", "cats-2.png"]


@pytest.mark.parametrize("argv,message", [
    (["--steps", "9"], "`steps` must be between 1 and 8, got 9. LCM models need few steps; use 4."),
    (["--size", "100x64"], "`width` must be a multiple of 8, got 100. Use 96 or 104."),
    (["--init-image", "/nonexistent.png"], "--init-image '/nonexistent.png' does not exist"),
])
def test_cli_bad_input_one_line_error_and_no_file(image_home, tmp_path, capsys, argv, message):
    out = tmp_path / "x.png"
    code = cli(image_home, "a cat", "-o", str(out), "--size", "64x64", *argv)
    err = capsys.readouterr().err
    assert code == 2
    assert f"edge-run: error: {message}" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_cli_refuses_non_png_output(image_home, tmp_path, capsys):
    assert cli(image_home, "a cat", "-o", str(tmp_path / "x.jpg")) == 2
    assert "must end in .png" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- server
def test_server_openai_client(image_server, api_images):
    import openai

    client = openai.OpenAI(base_url=image_server + "/v1", api_key="unused", max_retries=0)
    res = client.images.generate(prompt="a lighthouse at dusk", n=2, size="64x64", response_format="b64_json",
                                 extra_body={"steps": 2, "seed": 7, "guidance_scale": 8.0})
    assert len(res.data) == 2 and res.created > 0
    imgs = [Image.open(io.BytesIO(base64.b64decode(d.b64_json))) for d in res.data]
    assert [i.text["seed"] for i in imgs] == ["7", "8"] and imgs[0].text["model"] == MODEL_ID
    assert all(np.array_equal(pixels(a), pixels(b)) for a, b in zip(imgs, api_images))


def test_server_bad_input_is_400_and_server_stays_up(image_server):
    import openai

    client = openai.OpenAI(base_url=image_server + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as e:
        client.images.generate(prompt="a cat", size="64x64", extra_body={"steps": 20})
    assert e.value.status_code == 400
    assert "`steps` must be between 1 and 8, got 20" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError, match="response_format"):
        client.images.generate(prompt="a cat", size="64x64", response_format="url")
    with pytest.raises(openai.BadRequestError, match="prompt"):
        client.images.generate(prompt="", size="64x64")
    with pytest.raises(openai.BadRequestError, match="at most 4,000"):  # the documented maxLength holds
        client.images.generate(prompt="a" * 4001, size="64x64")
    ok = client.images.generate(prompt="still up", size="64x64", extra_body={"steps": 1, "seed": 1})
    assert len(ok.data) == 1


# ---------------------------------------------------------------------------------------------- scheduling
def test_chat_is_answered_while_an_image_renders(mixed_home):
    from edge.api import Runtime

    with Runtime(home=str(mixed_home), threads=2, offline=True, keep_alive=-1) as rt:
        rt.chat([{"role": "user", "content": "Hi"}], max_tokens=2, seed=0)  # load the chat model first
        rt.imagine("warm-up", size="64x64", steps=1, seed=0)  # and the image model
        job = rt.imagine_job("a long render", size="512x512", steps=8, n=2, seed=1)
        events = job.events()
        assert next(events).kind == "text_encode"
        t0 = time.monotonic()
        answer = rt.chat([{"role": "user", "content": "Say hello."}], max_tokens=8, seed=0)
        chat_s = time.monotonic() - t0
        image_done_at_chat = job.done
        threading.Thread(target=lambda: [None for _ in events], daemon=True).start()
        images = job.result(timeout=300)
        image_s = time.monotonic() - t0
    assert answer.text and len(images) == 2
    assert not image_done_at_chat, "the image finished before the chat answer: the test proves nothing"
    assert chat_s < image_s / 2, f"chat took {chat_s:.2f}s while the image took {image_s:.2f}s"
