"""The playground at `/` in a real headless Chromium against a real `edge-run serve` process: real
SmolLM2 chat, tiny seeded LCM and MobileSAM exports. Screenshots of every panel go to ARTIFACTS."""

from __future__ import annotations

import base64
import io
import json
import re
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from web_support import no_page_errors, record_posts

WEB = Path(__file__).resolve().parents[2] / "edge" / "web"
QUESTION = "What is the capital of France? Answer in one word."


# -- helpers -------------------------------------------------------------------------------------

def metrics(url: str) -> dict[str, float]:
    """Prometheus text -> {"name" or 'name{labels}': value}."""
    text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def step_count(url: str, kind: str) -> int:
    return int(metrics(url).get(f'edge_step_seconds_count{{kind="{kind}"}}', 0))


def wait_until(cond, timeout: float = 20.0, every: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def post_json(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


# -- static ------------------------------------------------------------------------------------------

def test_static_files_name_no_other_host():
    """No CDN, no web font, no absolute URL to anywhere: the files only name paths of this server."""
    for name in ("index.html", "app.js", "style.css"):
        text = (WEB / name).read_text()
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.I), name
        assert "@import" not in text and "@font-face" not in text, name


def test_root_serves_the_page(web_server):
    with urllib.request.urlopen(web_server.url + "/", timeout=10) as r:
        assert r.status == 200 and r.headers["content-type"].startswith("text/html")
        assert b'id="panel-segment"' in r.read()
    for asset in ("/ui/app.js", "/ui/style.css"):
        with urllib.request.urlopen(web_server.url + asset, timeout=10) as r:
            assert r.status == 200


# -- chat ----------------------------------------------------------------------------------------

def test_chat_answer_streams_multi_turn(page, web_server, artifacts):
    sent = record_posts(page, "/v1/chat/completions")
    page.click("#tab-chat")
    page.fill("#chat-temperature", "0")
    page.fill("#chat-max-tokens", "64")
    page.fill("#chat-input", QUESTION)
    page.click("#chat-send")
    answer = page.locator(".msg.assistant").last
    page.wait_for_selector(".msg.assistant[data-state='done']", timeout=90_000)
    assert "Paris" in answer.locator(".body").inner_text()
    stats = page.inner_text("#chat-stats")
    assert re.search(r"\d+ tokens · first token .* · [\d.]+ tok/s", stats), stats
    assert sent[0]["stream"] is True and sent[0]["temperature"] == 0
    assert sent[0]["messages"] == [{"role": "user", "content": QUESTION}]

    # second turn: the system prompt and the whole conversation go to the server
    page.fill("#chat-system", "You are a geography teacher.")
    page.fill("#chat-input", "And the capital of Italy?")
    page.press("#chat-input", "Enter")
    page.wait_for_function("document.querySelectorAll(\".msg.assistant[data-state='done']\").length === 2",
                           timeout=90_000)
    roles = [m["role"] for m in sent[1]["messages"]]
    assert roles == ["system", "user", "assistant", "user"]
    assert "Paris" in sent[1]["messages"][2]["content"]
    assert page.locator(".msg.assistant .body").last.inner_text().strip()
    page.screenshot(path=str(artifacts / "chat.png"), full_page=True)
    no_page_errors(page)


def test_chat_stop_cancels_the_job_on_the_server(page, web_server, artifacts):
    page.click("#tab-chat")
    page.fill("#chat-temperature", "0")  # greedy: this prompt gives a story of several hundred tokens
    page.fill("#chat-max-tokens", "2000")
    page.fill("#chat-input", "Write a very long story about a dragon who learns to bake bread.")
    page.click("#chat-send")
    page.wait_for_function("(document.querySelector('.msg.assistant .body')?.textContent || '').length > 40",
                           timeout=90_000)
    assert metrics(web_server.url)["edge_running_jobs"] >= 1
    page.click("#chat-stop")
    page.wait_for_selector(".msg.assistant[data-state='stopped']", timeout=10_000)
    wait_until(lambda: metrics(web_server.url)["edge_running_jobs"] == 0, timeout=10, what="the job to end")
    tokens = metrics(web_server.url)["edge_tokens_total"]
    time.sleep(1.0)
    assert metrics(web_server.url)["edge_tokens_total"] == tokens  # nothing decodes any more
    assert "stopped" in page.inner_text("#chat-stats")
    assert not page.is_disabled("#chat-send") and page.is_disabled("#chat-stop")
    page.screenshot(path=str(artifacts / "chat-stopped.png"), full_page=True)
    no_page_errors(page)


# -- imagine ---------------------------------------------------------------------------------------

def test_imagine_renders_the_asked_size(page, web_server, artifacts):
    page.click("#tab-imagine")
    page.fill("#imagine-prompt", "a red bicycle in the snow")
    page.fill("#imagine-width", "128")
    page.fill("#imagine-height", "96")
    page.fill("#imagine-steps", "2")
    page.fill("#imagine-seed", "7")
    page.click("#imagine-go")
    page.wait_for_selector("#imagine-figure:not([hidden])", timeout=90_000)
    size = page.evaluate("[document.getElementById('imagine-result').naturalWidth,"
                         " document.getElementById('imagine-result').naturalHeight]")
    assert size == [128, 96]
    assert "128×96 · seed 7 · 2 steps" in page.inner_text("#imagine-caption")
    assert page.inner_text("#imagine-progress-text").startswith("done in")
    # the page shows exactly the server's PNG for that request
    shown = page.get_attribute("#imagine-download", "href")
    status, direct = post_json(web_server.url + "/v1/images/generations",
                               {"prompt": "a red bicycle in the snow", "size": "128x96", "steps": 2, "seed": 7})
    assert status == 200
    from PIL import Image
    import numpy as np

    a = np.asarray(Image.open(io.BytesIO(base64.b64decode(shown.split(",", 1)[1]))))
    b = np.asarray(Image.open(io.BytesIO(base64.b64decode(direct["data"][0]["b64_json"]))))
    np.testing.assert_array_equal(a, b)
    page.screenshot(path=str(artifacts / "imagine.png"), full_page=True)
    # the generated image can go straight to the Segment panel
    page.click("#imagine-to-segment")
    page.wait_for_selector("#segment-stage:not([hidden])")
    assert page.evaluate("[document.getElementById('segment-photo').width,"
                         " document.getElementById('segment-photo').height]") == [128, 96]
    no_page_errors(page)


def test_imagine_shows_each_step_and_cancels(page, web_server, artifacts):
    page.click("#tab-imagine")
    page.fill("#imagine-width", "512")  # a few hundred ms per UNet step on the tiny model: several polls
    page.fill("#imagine-height", "512")
    page.fill("#imagine-steps", "8")
    page.fill("#imagine-seed", "1")
    unet_before = step_count(web_server.url, "unet")
    page.click("#imagine-go")
    # cancel once the indicator has shown two different denoising steps, well before the last one
    page.wait_for_function("""() => {
        const seen = (document.getElementById('imagine-progress').dataset.seen || '').split(',');
        const steps = new Set(seen.filter((s) => s).map((s) => +s.split('/')[0]).filter((n) => n >= 1 && n <= 6));
        return steps.size >= 2; }""", timeout=90_000)
    page.screenshot(path=str(artifacts / "imagine-progress.png"), full_page=True)
    page.click("#imagine-cancel")
    page.wait_for_function("document.getElementById('imagine-progress-text').textContent === 'cancelled'",
                           timeout=10_000)
    wait_until(lambda: metrics(web_server.url)["edge_running_jobs"] == 0, timeout=10, what="the job to end")
    assert step_count(web_server.url, "unet") - unet_before < 8  # stopped before the last UNet step
    assert json.load(urllib.request.urlopen(web_server.url + "/v1/jobs", timeout=10))["data"] == []
    seen = page.get_attribute("#imagine-progress", "data-seen")
    assert len({s for s in seen.split(",") if s}) >= 2, seen  # the indicator moved step by step
    no_page_errors(page)


# -- segment ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def photo_png(tmp_path_factory) -> Path:
    from PIL import Image
    from skimage import data

    p = tmp_path_factory.mktemp("photo") / "coffee.png"
    Image.fromarray(data.coffee()).save(p)  # 600 x 400
    return p


def _click_image(page, x: float, y: float, w: int, h: int, button: str = "left") -> None:
    box = page.locator("#segment-marks").bounding_box()
    page.mouse.click(box["x"] + x / w * box["width"], box["y"] + y / h * box["height"], button=button)


def test_segment_three_clicks_one_encoder_three_decoders(page, web_server, artifacts, photo_png):
    sent = record_posts(page, "/v1/segment")
    answers: list[dict] = []
    page.on("response", lambda r: r.url.endswith("/v1/segment") and answers.append(r.json()))
    page.click("#tab-segment")
    page.set_input_files("#segment-file", str(photo_png))
    page.wait_for_selector("#segment-stage:not([hidden])")
    w, h = 600, 400
    enc0, dec0 = step_count(web_server.url, "image_encode"), step_count(web_server.url, "mask_decode")
    clicks = [(300, 200, "left"), (120, 90, "left"), (520, 330, "right")]
    for i, (x, y, button) in enumerate(clicks, 1):
        _click_image(page, x, y, w, h, button)
        page.wait_for_selector(f"#segment-overlay[data-decodes='{i}']", timeout=60_000)
    assert step_count(web_server.url, "image_encode") - enc0 == 1
    assert step_count(web_server.url, "mask_decode") - dec0 == 3
    # the photo went once; later clicks name the cached embedding and carry every point so far
    assert "image" in sent[0] and "image_id" not in sent[0]
    assert all("image" not in b and b["image_id"] == answers[0]["image_id"] for b in sent[1:])
    assert [p[2] for p in sent[2]["points"]] == [1, 1, 0]
    assert [a["encoder_ran"] for a in answers] == [True, False, False]
    # the overlay is the server's best mask, pixel for pixel
    ov = page.locator("#segment-overlay")
    best = answers[-1]["masks"][answers[-1]["best"]]
    assert int(ov.get_attribute("data-mask-pixels")) == best["area"] > 0
    assert page.get_attribute("#segment-download", "href") == "data:image/png;base64," + best["png_b64"]
    assert "decoder only" in page.inner_text("#segment-info")
    page.screenshot(path=str(artifacts / "segment.png"), full_page=True)

    # a drag draws a box: one more decoder call, still no encoder call
    box = page.locator("#segment-marks").bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.2, box["y"] + box["height"] * 0.2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] * 0.7, steps=5)
    page.mouse.up()
    page.wait_for_selector("#segment-overlay[data-decodes='4']", timeout=60_000)
    x0, y0, x1, y1 = sent[3]["box"]
    assert abs(x0 - 120) <= 2 and abs(y0 - 80) <= 2 and abs(x1 - 360) <= 2 and abs(y1 - 280) <= 2
    assert step_count(web_server.url, "image_encode") - enc0 == 1
    page.screenshot(path=str(artifacts / "segment-box.png"), full_page=True)
    no_page_errors(page)


# -- errors and the network ------------------------------------------------------------------------

def test_bad_input_shows_the_server_message(page, web_server, artifacts):
    # imagine: 50 steps
    page.click("#tab-imagine")
    page.fill("#imagine-width", "64")
    page.fill("#imagine-height", "64")
    page.fill("#imagine-steps", "50")
    page.click("#imagine-go")
    page.wait_for_selector("#imagine-error:not([hidden])", timeout=30_000)
    status, body = post_json(web_server.url + "/v1/images/generations",
                             {"prompt": page.input_value("#imagine-prompt"), "size": "64x64", "steps": 50})
    assert status == 400
    assert page.inner_text("#imagine-error") == body["error"]["message"]
    assert "steps" in body["error"]["message"]
    page.screenshot(path=str(artifacts / "imagine-error.png"), full_page=True)

    # chat: temperature out of range; the question stays in the box to fix and resend
    page.click("#tab-chat")
    page.fill("#chat-temperature", "9")
    page.fill("#chat-input", QUESTION)
    page.click("#chat-send")
    page.wait_for_selector("#chat-error:not([hidden])", timeout=30_000)
    status, body = post_json(web_server.url + "/v1/chat/completions",
                             {"messages": [{"role": "user", "content": QUESTION}], "temperature": 9})
    assert status == 400
    assert page.inner_text("#chat-error") == body["error"]["message"]
    assert "temperature" in body["error"]["message"]
    assert page.input_value("#chat-input") == QUESTION and page.locator(".msg").count() == 0
    page.screenshot(path=str(artifacts / "chat-error.png"), full_page=True)
    no_page_errors(page)


def test_status_strip_shows_models_ram_queue(page, web_server, artifacts):
    models = json.load(urllib.request.urlopen(web_server.url + "/v1/models", timeout=10))
    loaded = [m["id"] for m in models["data"] if m["loaded"]]
    page.wait_for_timeout(2500)  # one more poll
    text = page.inner_text("#status")
    for mid in loaded:
        assert mid in text
    assert re.search(r"RAM\s+\S+ \w+ / [\d.]+ GiB", text), text
    assert re.search(r"Queue\s+0", text) and re.search(r"Running\s+0", text), text


def test_page_talks_to_no_other_host(page, web_server, browser_context):
    """Every request the browser made in this session (every test above, if run) went to the server."""
    for tab in ("chat", "imagine", "segment"):
        page.click(f"#tab-{tab}")
    page.click("#segment-demo")
    page.wait_for_selector("#segment-stage:not([hidden])")
    page.wait_for_timeout(2500)
    urls = browser_context.requests
    assert any(u.endswith("/v1/models") for u in urls)
    foreign = [u for u in urls if not (u.startswith(web_server.url + "/") or u.startswith(("data:", "blob:")))]
    assert not foreign, foreign
