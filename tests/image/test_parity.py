"""The edge pipeline (numpy + onnxruntime) against diffusers' LatentConsistencyModel(Img2Img)Pipeline
over the same tiny random PyTorch components and the same noise (torch.Generator streams)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from edge.image.pipeline import ImageRequest, LCMPipeline
from export.artifacts import sha256_file
from export.lcm.reference import diffusers_pipeline, torch_noise
from export.verify import psnr
from support import drain

PROMPT = "a lighthouse at dusk, oil painting"
SEED = 3


def edge_images(components, req: ImageRequest, seeds):
    _, images = drain(LCMPipeline(components).generate_steps(req, noise=[torch_noise(s) for s in seeds]))
    return [np.asarray(i) for i in images]


_PIPES: dict = {}


def diffusers_images(src, tokenizer_dir, *, width=64, height=64, steps=2, seeds=(SEED,), init=None, strength=0.6,
                     vae=None, guidance=8.0):
    key = (id(src), init is not None)
    if key not in _PIPES:  # building the reference tokenizer takes a second; do it once per kind
        _PIPES[key] = diffusers_pipeline(src, tokenizer_dir, img2img=init is not None)
    pipe = _PIPES[key]
    if vae is not None:
        pipe = type(pipe)(**{**pipe.components, "vae": vae})
        pipe.set_progress_bar_config(disable=True)
    kw = dict(image=init, strength=strength) if init is not None else dict(width=width, height=height)
    with torch.inference_mode():
        out = pipe(PROMPT, num_inference_steps=steps, guidance_scale=guidance, num_images_per_prompt=len(seeds),
                   generator=[torch.Generator().manual_seed(s) for s in seeds], output_type="np", **kw).images
    return [(o * 255).round().astype(np.uint8) for o in out]


def assert_close(ours, ref, tol=2):
    assert ours.shape == ref.shape
    assert ref.std() > 2, "reference image is flat: the comparison would prove nothing"
    diff = np.abs(ours.astype(np.int16) - ref.astype(np.int16))
    assert diff.max() <= tol, f"max diff {diff.max()}/255 (mean {diff.mean():.3f})"


@pytest.fixture(scope="module")
def init_image():
    y, x = np.mgrid[0:64, 0:64]
    arr = np.stack([x * 4, y * 4, (x + y) * 2], axis=-1).clip(0, 255).astype(np.uint8)
    return Image.fromarray(arr)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_txt2img_matches_diffusers(tiny_src, tokenizer_dir, fp32_components, steps):
    ref = diffusers_images(tiny_src, tokenizer_dir, steps=steps)[0]
    ours = edge_images(fp32_components, ImageRequest(PROMPT, 64, 64, steps=steps, seed=SEED), [SEED])[0]
    assert_close(ours, ref)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_img2img_matches_diffusers(tiny_src, tokenizer_dir, fp32_components, init_image, steps):
    ref = diffusers_images(tiny_src, tokenizer_dir, steps=steps, init=init_image, strength=0.6)[0]
    req = ImageRequest(PROMPT, 64, 64, steps=steps, seed=SEED, init_image=init_image, strength=0.6)
    ours = edge_images(fp32_components, req, [SEED])[0]
    assert_close(ours, ref)


def test_batch_and_odd_size_match_diffusers(tiny_src, tokenizer_dir, fp32_components):
    # 72x88 -> latents 9x11, not a multiple of the UNet's up-factor: the graph must follow the skip sizes
    refs = diffusers_images(tiny_src, tokenizer_dir, width=72, height=88, steps=2, seeds=(5, 6), guidance=3.0)
    ours = edge_images(fp32_components, ImageRequest(PROMPT, 72, 88, steps=2, n=2, guidance_scale=3.0), [5, 6])
    for o, r in zip(ours, refs):
        assert o.shape == (88, 72, 3)
        assert_close(o, r)
    assert np.abs(refs[0].astype(int) - refs[1]).max() > 10  # different seeds, different images


def test_taesd_decoder_matches_diffusers(tiny_src, tokenizer_dir, fp32_components):
    ref = diffusers_images(tiny_src, tokenizer_dir, steps=2, vae=tiny_src.taesd)[0]
    ours = edge_images(fp32_components, ImageRequest(PROMPT, 64, 64, steps=2, seed=SEED, decoder="taesd"), [SEED])[0]
    assert_close(ours, ref)


def test_steps_are_reported_in_order(fp32_components, init_image):
    steps, _ = drain(LCMPipeline(fp32_components).generate_steps(
        ImageRequest(PROMPT, 64, 64, steps=3, n=2, seed=1, init_image=init_image)))
    assert [s.kind for s in steps] == ["text_encode", "image_encode", "unet", "unet", "unet", "decode", "decode"]
    assert [s.index for s in steps] == list(range(1, 8)) and {s.total for s in steps} == {7}


def test_numpy_seeds_are_per_image(fp32_components):
    pipe = LCMPipeline(fp32_components, model_id="m")
    _, two = drain(pipe.generate_steps(ImageRequest(PROMPT, 64, 64, steps=2, n=2, seed=7)))
    _, one = drain(pipe.generate_steps(ImageRequest(PROMPT, 64, 64, steps=2, n=1, seed=8)))
    _, again = drain(pipe.generate_steps(ImageRequest(PROMPT, 64, 64, steps=2, n=1, seed=7)))
    assert np.array_equal(np.asarray(two[1]), np.asarray(one[0]))  # image i of seed s == image 0 of seed s+i
    assert np.array_equal(np.asarray(two[0]), np.asarray(again[0]))
    assert not np.array_equal(np.asarray(two[0]), np.asarray(two[1]))
    assert two[1].info["seed"] == "8" and two[0].info["steps"] == "2" and two[0].info["model"] == "m"


def test_winograd_matches_diffusers(tiny_src, tokenizer_dir, make_components):
    """The winograd precision (fp32 maths, convolutions rewritten at a 256 px reference) is held to the fp32
    parity at 64 px and at 72x88 with a batch of two (odd latent sizes: the subgraphs pad and crop)."""
    wino = make_components("winograd")
    ref = diffusers_images(tiny_src, tokenizer_dir, steps=2)[0]
    assert_close(edge_images(wino, ImageRequest(PROMPT, 64, 64, steps=2, seed=SEED), [SEED])[0], ref)
    refs = diffusers_images(tiny_src, tokenizer_dir, width=72, height=88, steps=2, seeds=(5, 6), guidance=3.0)
    ours = edge_images(wino, ImageRequest(PROMPT, 72, 88, steps=2, n=2, guidance_scale=3.0), [5, 6])
    for o, r in zip(ours, refs):
        assert_close(o, r)


@pytest.mark.parametrize("precision,min_psnr", [("fp16", 40.0), ("int8", 30.0), ("qdq", 25.0),
                                                ("int8-winograd", 30.0)])
def test_reduced_precisions_stay_close_to_fp32(make_components, fp32_components, precision, min_psnr):
    req = ImageRequest(PROMPT, 64, 64, steps=2, seed=SEED)
    ref = edge_images(fp32_components, req, [SEED])[0]
    ours = edge_images(make_components(precision), req, [SEED])[0]
    assert psnr(ours, ref) > min_psnr


def test_report_and_manifest(tiny_export):
    report = json.loads((tiny_export / "report.json").read_text())
    manifest = json.loads((tiny_export / "edge-model.json").read_text())
    assert set(report["precisions"]) == {"fp32", "int8", "fp16", "qdq", "winograd", "int8-winograd"}
    wino = report["precisions"]["winograd"]  # verified like fp32 by the recipe, on rewritten graphs
    assert wino["image"]["max_diff_255"] <= 2 and all(c["max_rel_diff"] < 1e-3 for c in wino["components"].values())
    assert wino["components"]["unet"]["file"] == "winograd/unet.onnx"
    fp32 = report["precisions"]["fp32"]
    assert fp32["image"]["max_diff_255"] <= 2 and all(c["max_rel_diff"] < 1e-3 for c in fp32["components"].values())
    assert set(fp32["components"]) == {"text_encoder", "unet", "vae_decoder", "vae_encoder", "taesd_decoder"}
    assert manifest["task"] == "image" and manifest["precision"] == "int8" and manifest["id"] == "lcm-tiny-random"
    for row in manifest["files"]:  # the manifest's hashes are the files' own
        assert sha256_file(tiny_export / row["name"]) == row["sha256"]
    assert manifest["precisions"]["int8"]["vae_decoder"] == "fp32/vae_decoder.onnx"  # shared, not duplicated
    assert manifest["precisions"]["int8-winograd"]["vae_decoder"] == "winograd/vae_decoder.onnx"
    assert len(json.loads((tiny_export / "tokenizer" / "vocab.json").read_text())) == 49408
