"""The device profile's image choices (edge/image/options.py): a pi4-4gb Runtime loads the tiny LCM in
int8-winograd and decodes with TAESD when a request names no decoder -- the same image as the engine
loaded that way by hand --; an explicit EDGE_IMAGE_PRECISION wins over the profile; a model without the
profile's precision falls back to its own default and says so (also in `edge-run devices`)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np

from edge.api import Runtime
from edge.config import Settings
from edge.image.engine import ImageEngine
from edge.image.options import image_options
from edge.image.request import ImageRequest
from support import IMAGE_MODEL, THREADS, drain


def _runtime(home, **env: str) -> Runtime:
    settings = Settings.from_env(env={"EDGE_PROFILE": "pi4-4gb", **env}, home=home, threads=THREADS, offline=True,
                                 keep_alive=-1)
    return Runtime(settings=settings)


def test_pi4_profile_loads_int8_winograd_and_decodes_with_taesd_by_default(image_home):
    with _runtime(image_home) as rt:
        options = rt.image_options(IMAGE_MODEL)
        assert (options.precision, options.decoder) == ("int8-winograd", "taesd")
        [img] = rt.imagine("a lighthouse", size=64, steps=2, seed=3)
        assert img.info["decoder"] == "taesd"
        model = rt.ensure(IMAGE_MODEL)
    engine = ImageEngine.load(model, threads=THREADS, device="cpu", precision="int8-winograd")
    try:
        _, [direct] = drain(engine.generate_steps(ImageRequest("a lighthouse", 64, 64, steps=2, seed=3,
                                                               decoder="taesd").check()))
    finally:
        engine.close()
    assert np.array_equal(np.asarray(img), np.asarray(direct))


def test_an_explicit_precision_wins_over_the_profile(image_home):
    with _runtime(image_home, EDGE_IMAGE_PRECISION="fp32", EDGE_IMAGE_DECODER="vae") as rt:
        options = rt.image_options(IMAGE_MODEL)
        assert (options.precision, options.decoder) == ("fp32", "vae")
        assert rt.settings.sources["image_precision"] == "env"


def test_a_model_without_the_profiles_precision_uses_its_own_and_says_so(image_runtime, image_home, capsys):
    manifest = image_runtime.manifest(IMAGE_MODEL)
    fp32_files = {k: v for k, v in manifest.precisions["fp32"].items() if k != "taesd_decoder"}
    only_fp32 = replace(manifest, precision="fp32", precisions={"fp32": fp32_files})
    o = image_options(only_fp32, precision="int8-winograd", decoder="taesd")
    assert (o.precision, o.decoder) == ("fp32", "vae")
    assert "int8-winograd asked but the model has only fp32" in o.precision_why
    assert "taesd asked but the model's fp32 files have only vae" in o.decoder_why

    from edge.cli import main

    assert main(["devices", "--json", "--home", str(image_home), "--profile", "pi4-4gb"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["profile"]["name"] == "pi4-4gb" and info["profile"]["picked_by"] == "named"
    rows = {r["setting"]: r for r in info["settings"]}
    assert rows["image_decoder"]["source"] == "profile" and rows["profile"]["source"] == "flag"
    [image] = info["image_models"]
    assert (image["model"], image["precision"], image["decoder"]) == (IMAGE_MODEL, "int8-winograd", "taesd")
    assert main(["devices", "--home", str(image_home)]) == 0
    text = capsys.readouterr().out
    assert "profile:" in text and "detected:" in text and "(source: flag > env > profile > default)" in text
    assert f"image model {IMAGE_MODEL}: precision" in text
