"""Tiny seeded fp32 exports for tests and benches (the real upstream MobileSAM / diffusers + CLIP /
transformers Llama architectures through the recipes' own export functions; the recipes' PyTorch verification is their
own tests' business), and the NPU conversion of a folder with default options."""

from __future__ import annotations

import argparse
from pathlib import Path

from edge.manifest import Manifest, SegmentManifest, write
from export.artifacts import file_table

LCM_SIZE = 64


def _write_manifest(folder: Path, manifest: Manifest) -> None:
    manifest.files = file_table(folder)
    write(folder, manifest)


def sam_fp32(out: Path, preset: str = "tiny", seed: int = 0) -> Path:
    """encoder.onnx + decoder.onnx of upstream MobileSAM with seeded random weights, fp32."""
    from export.recipes import sam_onnx as R

    out.mkdir(parents=True, exist_ok=True)
    sam = R.build_sam(preset, seed=seed)
    R.export_encoder(sam, out / "encoder.onnx")
    R.export_decoder(sam, out / "decoder.onnx")
    _write_manifest(out, SegmentManifest(format="onnx", family="mobilesam", recipe="sam", precision="fp32",
                                         source={"kind": "random-init", "preset": preset, "seed": seed}))
    return out


def lcm_fp32(out: Path, preset: str = "tiny", seed: int = 0, size: int = LCM_SIZE) -> Path:
    """The LCM components (CLIP text encoder, UNet with w-embedding, VAE, TAESD) with seeded random
    weights, fp32, in the lcm recipe's folder layout."""
    from export.lcm import onnx_file
    from export.lcm.manifest import image_manifest
    from export.lcm.sources import random_components
    from export.lcm.tokenizer import write_tokenizer

    (out / "fp32").mkdir(parents=True, exist_ok=True)
    src = random_components(preset, seed)
    write_tokenizer(out / "tokenizer", src.vocab, src.merges)
    files = {}
    for name, module in onnx_file.wrappers(src).items():
        side = onnx_file.unet_trace_side(src) if name == "unet" else size
        feeds = onnx_file.sample_inputs(src, name, side)
        onnx_file.export_component(module, name, feeds, out / "fp32" / f"{name}.onnx", 17)
        files[name] = f"fp32/{name}.onnx"
    _write_manifest(out, image_manifest(src, f"lcm-{preset}-random", {"fp32": files}, "fp32", {"precisions": {}}))
    return out


def chat_fp32(out: Path, preset: str = "tiny-llama", seed: int = 0) -> Path:
    """`edge-run export llm-onnx --random-init tiny-llama --quant fp32` (verified vs transformers by the recipe)."""
    from export.recipes import llm_onnx

    return llm_onnx.run(llm_onnx.Config(random_init=preset, seed=seed, quant="fp32", out=str(out)))


def to_npu(src: Path, out: Path, *extra: str, quant: str = "a16w8") -> Path:
    """`edge-run export npu SRC --out OUT --quant QUANT --verify-devices none ...`."""
    from export.recipes import npu as R

    p = argparse.ArgumentParser()
    R.add_arguments(p)
    args = p.parse_args([str(src), "--out", str(out), "--quant", quant, "--verify-devices", "none", *extra])
    return R.run(R.Config.from_args(args))
