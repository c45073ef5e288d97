"""Runtime.segment_job: one checked click, one handle over a chain of jobs (edge/segment/api.py). A cache
miss is not an error: the decoder job finds no embedding and ends with nothing, the encoder runs once
(batch), then the decoder (interactive)."""

from __future__ import annotations

import numpy as np
import pytest

from edge.errors import BadRequest
from edge.segment.request import SegmentRequest


def _fresh_image(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((96, 128, 3), 30, np.uint8)
    y, x = rng.integers(10, 50, size=2)
    img[y:y + 30, x:x + 40] = rng.integers(100, 255, size=3)
    return img


def _counts(rt) -> dict:
    jobs = rt.scheduler.metrics.jobs
    return {"decode": jobs.get("segment_decode", 0), "embed": jobs.get("segment_embed", 0),
            **rt.segment_stats()}


def test_a_cache_miss_runs_the_encoder_once_then_the_decoder(seg_runtime, caplog):
    rt = seg_runtime
    img = _fresh_image(1)
    before = _counts(rt)
    with caplog.at_level("ERROR"):
        handle = rt.segment_job(img, points=[(60, 40, 1)])
        kinds = [s.kind for s in handle.events(timeout=60)]
        res = handle.result(timeout=60)
    after = _counts(rt)
    assert kinds == ["image_encode", "mask_decode"] and res.encoder_ran
    assert after["encoder_calls"] == before["encoder_calls"] + 1
    assert after["decoder_calls"] == before["decoder_calls"] + 1
    # jobs: a decode that found no embedding (no step, no error), the encoder, the decode
    assert (after["decode"] - before["decode"], after["embed"] - before["embed"]) == (2, 1)
    assert "failed" not in caplog.text and handle.model_id == "mobilesam-tiny-test"
    # the next click on the same image is one decoder job
    again = rt.segment_job(SegmentRequest(image=img, points=[(60, 40, 1), (5, 5, 0)]))
    assert [s.kind for s in again.events(timeout=60)] == ["mask_decode"] and not again.result().encoder_ran
    last = _counts(rt)
    assert (last["decode"] - after["decode"], last["embed"] - after["embed"]) == (1, 0)
    assert last["encoder_calls"] == after["encoder_calls"]


def test_an_unknown_image_id_is_refused_without_running_the_encoder(seg_runtime):
    rt = seg_runtime
    before = _counts(rt)
    handle = rt.segment_job(image_id="e" * 32, points=[(1, 1)])
    with pytest.raises(BadRequest, match="not in the embedding cache") as e:
        handle.result(timeout=60)
    assert e.value.code == "image_not_cached"
    after = _counts(rt)
    assert after["embed"] == before["embed"] and after["encoder_calls"] == before["encoder_calls"]


def test_requests_are_checked_before_any_job(seg_runtime):
    rt = seg_runtime
    before = rt.scheduler.metrics.jobs.copy()
    for kw, match in [({"points": [(1, 1)]}, "give `image`"), ({"image": _fresh_image(2)}, "no prompt"),
                      ({"image": _fresh_image(2), "points": [(500, 1)]}, "outside"),
                      ({"image_id": "e" * 32, "points": [(1, 1, 7)]}, "label 7"),
                      ({"image": _fresh_image(2), "points": [(1, 1)], "prev_mask": b""}, "`prev_mask` is empty")]:
        with pytest.raises(BadRequest, match=match):
            rt.segment_job(**kw)
    assert rt.scheduler.metrics.jobs == before

