"""The lanes scheduler with the real engines: a click and a streamed chat are answered *during* one
long UNet step of an image (the tiny LCM at a large size stands in for a full-size step), and the image
is bit-identical to the one the one-step-at-a-time scheduler renders with the same seed."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from support import IMAGE_MODEL, SEG_MODEL, THREADS, drain

SIZE = "768x768"  # the tiny UNet's step takes seconds here (attention over 96x96 latents)


def _photo() -> np.ndarray:
    from skimage import data

    return data.coffee()


def _render_during(rt, image_id: str) -> dict:
    """Start a 1-step image; during its UNet step, click once and stream a chat. Times are monotonic."""
    out: dict = {"tokens": []}
    job = rt.imagine_job("a long render", size=SIZE, steps=1, seed=3)
    seen: dict = {}

    def watch():
        for step in job.events():
            seen[step.kind] = time.monotonic()

    threading.Thread(target=watch, daemon=True).start()
    while "text_encode" not in seen:  # the UNet step starts right after the text encoder's
        assert not job.done, job.result()
        time.sleep(0.002)
    out["unet_started"] = time.monotonic()
    res = rt.segment(image_id=image_id, points=[(300.0, 200.0, 1)])
    out["click_done"] = time.monotonic()
    assert not res.encoder_ran
    for piece in rt.chat([{"role": "user", "content": "Count from one to twenty."}], temperature=0, max_tokens=24,
                         stream=True):
        out["tokens"].append(time.monotonic())
    out["image"] = np.asarray(job.result(600)[0])
    out["unet_done"] = seen["unet"]
    return out


@pytest.fixture(scope="module")
def warm(workloads_home):
    """Runtimes of both policies over the same home, each with every model loaded and the photo cached."""
    from edge.api import Runtime

    rts = {}
    for policy in ("lanes", "priority"):
        rt = Runtime(home=str(workloads_home), threads=THREADS, offline=True, keep_alive=-1, policy=policy)
        rt.chat([{"role": "user", "content": "Hi"}], max_tokens=2, temperature=0)
        image_id = rt.embed(_photo())["image_id"]
        rt.imagine("warm up", size="64x64", steps=1, seed=0)
        rts[policy] = (rt, image_id)
    yield rts
    for rt, _ in rts.values():
        rt.close()


def test_click_and_chat_are_answered_during_one_long_unet_step(warm):
    rt, image_id = warm["lanes"]
    r = _render_during(rt, image_id)
    step_s = r["unet_done"] - r["unet_started"]
    assert step_s > 0.5, f"the UNet step took {step_s:.2f} s: too short to prove anything"
    assert r["click_done"] < r["unet_done"], "the click waited for the UNet step to end"
    during = [t for t in r["tokens"] if t < r["unet_done"]]
    assert len(during) >= 3, f"{len(during)} chat tokens streamed during the {step_s:.1f} s UNet step"


def test_one_step_at_a_time_policy_makes_the_click_wait_and_renders_the_same_image(warm):
    """The peer: the click waits for the whole step. And the lanes policy changes no pixel."""
    rt, image_id = warm["priority"]
    r = _render_during(rt, image_id)
    assert r["click_done"] >= r["unet_done"], "the one-step-at-a-time scheduler cannot click during a step"
    lanes_rt, lanes_id = warm["lanes"]
    lanes_image = _render_during(lanes_rt, lanes_id)["image"]
    assert np.array_equal(r["image"], lanes_image)


def test_segment_engine_runs_clicks_on_one_thread_when_told_and_gives_the_same_masks(tiny_exports):
    from edge.segment import preprocess as pre
    from edge.segment.engine import DecodeRequest, SegmentEngine

    engine = SegmentEngine.from_folder(tiny_exports["sam"], threads=2)
    try:
        img = pre.load_image(_photo())
        for _ in engine.embed_steps(img):
            pass
        req = DecodeRequest(image_id=img.image_id, points=[(300.0, 200.0, 1), (100.0, 50.0, 0)])

        def click():
            return drain(engine.decode_steps(req))[1]

        two = click()
        engine.set_threads(1)
        assert engine.predictor._decoder_now is not engine.predictor.decoder  # the one-thread session
        one = click()
        engine.set_threads(2)
        assert engine.predictor._decoder_now is engine.predictor.decoder
    finally:
        engine.close()
    for a, b in zip(one.masks, two.masks):
        assert (a.mask != b.mask).mean() < 1e-4
        assert abs(a.score - b.score) < 1e-4
