"""edge/image/engine.py: ImageEngine over an installed model (its typed manifest, read once by the store),
the same images as the pipeline over the same files, and a clear refusal of a model that is not an LCM."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from edge.errors import ModelNotInstalled
from edge.image.engine import ImageEngine
from edge.image.request import ImageRequest
from edge.manifest import ChatManifest, ImageManifest
from support import IMAGE_MODEL, THREADS, drain


def test_image_engine_loads_an_installed_model_from_its_typed_manifest(image_runtime, make_components):
    from edge.image.pipeline import LCMPipeline

    model = image_runtime.ensure(IMAGE_MODEL)
    assert isinstance(model.manifest, ImageManifest)
    engine = ImageEngine.load(model, threads=THREADS, device="cpu")
    try:
        assert engine.default_size == model.manifest.default_size and engine.model_id == IMAGE_MODEL
        req = ImageRequest("a lighthouse", 64, 64, steps=2, seed=5).check(size_multiple=model.manifest.size_multiple)
        _, ours = drain(engine.generate_steps(req))
        _, direct = drain(LCMPipeline(make_components(model.manifest.precision)).generate_steps(
            ImageRequest("a lighthouse", 64, 64, steps=2, seed=5).check()))
        assert np.array_equal(np.asarray(ours[0]), np.asarray(direct[0]))
    finally:
        engine.close()


def test_image_engine_refuses_a_model_that_is_not_an_lcm_export(image_runtime):
    model = image_runtime.ensure(IMAGE_MODEL)
    chat_like = replace(model, id="not-an-lcm", task="chat", manifest=ChatManifest())
    with pytest.raises(ModelNotInstalled, match="not an exported LCM model"):
        ImageEngine.load(chat_like, threads=THREADS, device="cpu")
