"""LCM fp32 export -> NPU artifact: text encoder, UNet, VAE decoder (and TAESD) as static-shape QDQ
graphs for one image size; the img2img VAE encoder stays an fp32 CPU component.

Rewrites: the UNet's exact GELU (GEGLU) fused into HTP's native Gelu (or --gelu tanh), static shapes (batch 1, the
latent side of ``size``), constant folding of the shape arithmetic diffusers' graphs carry.
Calibration: every component's inputs recorded while the fp32 edge pipeline renders a set of prompts
(text encoder ids, UNet latents / timesteps / embeddings at each step, the final latents for the
decoders).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from edge.manifest import ImageManifest, read
from export.npu import quant
from export.npu.convert import prepare

NPU_COMPONENTS = ("text_encoder", "unet", "vae_decoder", "taesd_decoder")
CPU_COMPONENTS = ("vae_encoder",)
CALIB_PROMPTS = ("a lighthouse at dusk, oil painting", "a red car in the rain", "portrait of an old fisherman",
                 "a bowl of fruit on a wooden table", "snowy mountains under a clear sky, photo",
                 "a cat sleeping on a sofa")
VERIFY_PROMPTS = ("a small boat on a calm lake at sunrise", "a city street at night with neon signs")


def _components(manifest: ImageManifest, folder: Path, precision: str, threads: int, device: str):
    from edge.image.engine import components_from_manifest

    return components_from_manifest(manifest, folder, precision=precision, threads=threads, device=device)


def record_feeds(src: Path, manifest: ImageManifest, size: int, steps: int, threads: int,
                 prompts: tuple[str, ...] = CALIB_PROMPTS) -> dict[str, list[dict[str, np.ndarray]]]:
    """Inputs of every component while the fp32 pipeline renders ``prompts`` at ``size``."""
    from edge.image.pipeline import Decoder, ImageRequest, LCMPipeline

    comps = _components(manifest, src, "fp32", threads, "cpu")
    rec: dict[str, list] = {k: [] for k in NPU_COMPONENTS}

    def recording(name, fn):
        def call(**feeds):
            rec[name].append({k: np.array(v) for k, v in feeds.items()})
            return fn(**feeds)
        return call

    comps.text_encoder = recording("text_encoder", comps.text_encoder)
    comps.unet = recording("unet", comps.unet)
    for dec_name, dec in list(comps.decoders.items()):
        comp = "vae_decoder" if dec_name == "vae" else f"{dec_name}_decoder"
        comps.decoders[dec_name] = Decoder(recording(comp, dec.model), dec.scaling_factor)
    pipe = LCMPipeline(comps, model_id="calib")
    for i, prompt in enumerate(prompts):
        for dec_name in comps.decoders:
            req = ImageRequest(prompt=prompt, width=size, height=size, steps=steps, seed=i, decoder=dec_name)
            for _ in pipe.generate_steps(req):
                pass
    # the text encoder and UNet saw each prompt once per decoder: keep one copy
    n_dec = len(comps.decoders)
    rec["text_encoder"] = rec["text_encoder"][::n_dec]
    return {k: v for k, v in rec.items() if v}


def convert(src: Path, out: Path, schemes: list[str], default: str, *, size: int | None, steps: int,
            threads: int, gelu: str = "native", calib_limit: int = 8) -> dict[str, Any]:
    from edge.errors import BadRequest

    manifest = read(src, task="image")
    assert isinstance(manifest, ImageManifest)
    fp32 = manifest.precisions["fp32"]
    size = int(size or manifest.default_size)
    f = manifest.vae.scale_factor
    if size % (f * 2):
        raise BadRequest(f"`--size` must be a multiple of {f * 2} for this model, got {size}.", param="size")
    lat = size // f
    dims = {"text_encoder": {"batch": 1}, "unet": {"batch": 1, "height": lat, "width": lat},
            "vae_decoder": {"batch": 1, "height": lat, "width": lat},
            "taesd_decoder": {"batch": 1, "height": lat, "width": lat}}
    work = out / ".work"
    work.mkdir()
    # 1. static, rewritten fp32 graphs
    prepared = {name: prepare(src / fp32[name], work / f"{name}.onnx", dims=dims[name], gelu=gelu)
                for name in NPU_COMPONENTS if name in fp32}
    # 2. calibration data from the fp32 pipeline
    feeds = record_feeds(src, manifest, size, steps, threads, prompts=CALIB_PROMPTS[:max(1, calib_limit)])
    # 3. quantize; copy the CPU components and the tokenizer
    components, table = {}, {}
    for scheme in schemes:
        (out / scheme).mkdir()
        table[scheme] = {}
        for name, prep in prepared.items():
            rel = f"{scheme}/{name}.onnx"
            quant.quantize_qdq(prep.path, out / rel, feeds[name], scheme)
            table[scheme][name] = rel
            components[rel] = {"role": name, "quant": scheme, "static": True, "device": "npu", "inputs": prep.inputs,
                               "shape_hint": f"This NPU model generates {size}x{size} images only (static shapes); "
                                             f"use width={size} height={size}, or export another size with "
                                             "`edge-run export npu ... --size N`."}
    (out / "cpu").mkdir()
    for name in CPU_COMPONENTS:
        if name in fp32:
            shutil.copyfile(src / fp32[name], out / "cpu" / f"{name}.onnx")
            data = (src / fp32[name]).with_name(Path(fp32[name]).name + ".data")
            if data.exists():
                shutil.copyfile(data, out / "cpu" / data.name)
            components[f"cpu/{name}.onnx"] = {"role": name, "quant": "fp32", "static": False, "device": "cpu"}
            for scheme in schemes:
                table[scheme][name] = f"cpu/{name}.onnx"
    shutil.copytree(src / Path(manifest.tokenizer).parent, out / Path(manifest.tokenizer).parent)
    for p in work.iterdir():
        p.unlink()
    work.rmdir()
    return {"components": components, "precisions": table, "size": size,
            "rewrites": {n: {**p.rewrites, "ops_before": p.ops_before, "ops_after": p.ops_after}
                         for n, p in prepared.items()},
            "calibration": {n: len(v) for n, v in feeds.items()}}


def manifest(src_manifest: dict, npu: dict, default: str) -> dict:
    m = json.loads(json.dumps(src_manifest))
    m.update({"precision": default, "precisions": npu["precisions"], "default_size": npu["size"],
              "recipe": "npu", "source_recipe": src_manifest.get("recipe", "lcm"), "verify": {}})
    return m


def verify(src: Path, out: Path, schemes: list[str], *, devices: list[str], size: int, steps: int = 2,
           prompts: int = 1, decoders: tuple[str, ...] = ("vae",), threads: int = 2) -> dict[str, Any]:
    """Image PSNR of each scheme/device vs the fp32 pipeline on the CPU (same prompts, seeds, noise),
    and the text embedding's relative error."""
    from edge.image.pipeline import ImageRequest, LCMPipeline
    from export import verify as V

    src_m, out_m = read(src, task="image"), read(out, task="image")
    ref = _components(src_m, src, "fp32", threads, "cpu")

    def render(comps, prompt: str, seed: int, decoder: str) -> np.ndarray:
        pipe = LCMPipeline(comps, model_id="verify")
        gen = pipe.generate_steps(ImageRequest(prompt=prompt, width=size, height=size, steps=steps, seed=seed,
                                               decoder=decoder))
        try:
            while True:
                next(gen)
        except StopIteration as stop:
            return np.asarray(stop.value[0])

    cases = [(p, i, d) for i, p in enumerate(VERIFY_PROMPTS[:prompts]) for d in decoders]
    ref_imgs = [render(ref, p, s, d) for p, s, d in cases]
    ids = ref.tokenizer.encode([VERIFY_PROMPTS[0]])[0]
    ref_emb = ref.text_encoder(input_ids=ids)[0]
    results = {}
    for scheme in schemes:
        for device in devices:
            comps = _components(out_m, out, scheme, threads, device)
            imgs = [render(comps, p, s, d) for p, s, d in cases]
            psnrs = [V.psnr(a, b, data_range=255.0) for a, b in zip(imgs, ref_imgs)]
            emb = comps.text_encoder(input_ids=ids)[0]
            placement = {}
            for name, model in (("text_encoder", comps.text_encoder), ("unet", comps.unet)):
                placement[name] = _placement(model)
            for dname, dec in comps.decoders.items():
                placement[f"{dname}_decoder"] = _placement(dec.model)
            results[f"{scheme}@{device}"] = {
                "scheme": scheme, "device": device, "min_psnr": float(min(psnrs)), "psnr": [round(p, 2) for p in psnrs],
                "text_embedding_rel_err": V.relative_error(emb, ref_emb),
                "cases": [{"prompt": p, "seed": s, "decoder": d} for p, s, d in cases], "placement": placement}
    return results


def _placement(model) -> dict:
    """Placement of an OnnxModel / LazyModel's session (empty when not loaded)."""
    inner = getattr(model, "_model", model)          # LazyModel -> OnnxModel
    sess = getattr(inner, "session", None)
    p = dict(getattr(sess, "placement", {}) or {})
    p.pop("cache", None)
    return p
