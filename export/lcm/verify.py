"""Verification of an LCM export: every ONNX file against its PyTorch module, and the image the edge
pipeline renders from each precision against diffusers' fp32 pipeline (the report.json figures)."""

from __future__ import annotations

import contextlib
import functools
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from export.lcm.manifest import image_manifest, runtime_components
from export.lcm.onnx_file import PART, components, sample_inputs, wrap
from export.lcm.precisions import EXACT, MIN_PSNR
from export.lcm.reference import reference_image, torch_noise
from export.lcm.sources import OnDemand, Source, release_memory
from export.verify import psnr

VERIFY_PROMPT = "a lighthouse at dusk, oil painting"


def latency_ms(fn: Callable[[], Any], repeat: int = 2) -> float:
    """Best of ``repeat`` timed calls of ``fn`` after one warm-up, in milliseconds."""
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1000


def verify(src: Source | OnDemand, folder: Path, files: dict[str, dict[str, str]], side: int, steps: int, seed: int,
           threads: int, meter=None) -> dict:
    """Every artifact vs its PyTorch module (max abs diff, latency) and the final image of every
    precision vs diffusers' fp32 PyTorch pipeline (max diff in 1/255 units, PSNR). ``meter``
    (export.lcm.resources.StageMeter) times the PyTorch reference and each precision as its own stage."""
    stage = meter.stage if meter is not None else (lambda name: contextlib.nullcontext())
    with stage("verify pytorch"):
        ref_img, feeds, torch_out = _pytorch_reference(src, folder, side, steps, seed)
    report: dict[str, Any] = {"verify": {"side": side, "steps": steps, "seed": seed, "prompt": VERIFY_PROMPT},
                              "precisions": {}}
    for precision, comp in files.items():
        with stage(f"verify {precision}"):
            report["precisions"][precision] = _precision(src, folder, files, precision, comp, feeds, torch_out,
                                                         ref_img, side, steps, seed, threads)
    return report


def _pytorch_reference(src: Source | OnDemand, folder: Path, side: int, steps: int, seed: int):
    """diffusers' image, the components' sample feeds and their PyTorch outputs (one module at a time)."""
    import torch

    ref_img = reference_image(src, folder / "tokenizer", VERIFY_PROMPT, side, steps, seed)
    names = components(src)
    feeds = {name: sample_inputs(src, name, side, seed=seed + 1) for name in names}
    torch_out: dict[str, list[np.ndarray]] = {}
    for name in names:  # one PyTorch module in memory at a time
        with src.using(PART[name]) as module, torch.inference_mode():
            o = wrap(name, module)(*[torch.from_numpy(v) for v in feeds[name].values()])
            torch_out[name] = [t.numpy() for t in (o if isinstance(o, tuple) else (o,))]
            del o
    release_memory()
    return ref_img, feeds, torch_out


def _precision(src, folder: Path, files: dict[str, dict[str, str]], precision: str, comp: dict[str, str],
               feeds: dict, torch_out: dict, ref_img: np.ndarray, side: int, steps: int, seed: int,
               threads: int) -> dict:
    """One precision: each file vs PyTorch (one session at a time), then its image vs diffusers'."""
    from edge.devices import make_session
    from edge.image.pipeline import ImageRequest, LCMPipeline
    from export.quantize import onnx_size

    rows = {}
    for name, rel in comp.items():
        sess = make_session(folder / rel, threads=threads, device="auto" if rel.endswith(".xml") else "cpu")  # IR: OpenVINO
        run = functools.partial(sess.run, None, feeds[name])
        outs = run()
        diff = max(float(np.max(np.abs(o.astype(np.float32) - t))) for o, t in zip(outs, torch_out[name]))
        scale = max(float(np.max(np.abs(t))) for t in torch_out[name])
        rel_diff = diff / max(scale, 1e-6)
        rows[name] = {"file": rel, "bytes": onnx_size(folder / rel), "max_abs_diff": diff,
                      "max_rel_diff": rel_diff, "latency_ms": latency_ms(run),
                      "ok": bool(np.isfinite(diff) and (precision not in EXACT or rel_diff < 1e-3))}
        del sess, run  # release the session before the next one
    m = image_manifest(src, "verify", files, precision, {"precisions": {}})
    comps = runtime_components(m, folder, precision, threads)
    pipe = LCMPipeline(comps, model_id="verify")
    req = ImageRequest(prompt=VERIFY_PROMPT, width=side, height=side, steps=steps, seed=seed)
    t0 = time.perf_counter()
    gen = pipe.generate_steps(req, noise=[torch_noise(seed)])
    try:
        while True:
            step = next(gen)
            # the runtime's own pipeline, each session dropped once its stage is over (text encoder before the
            # UNet, UNet before the decode): the peak is the largest component, not the three together
            if step.kind == "text_encode":
                comps.text_encoder = None
                release_memory()
            elif step.kind == "unet" and step.data.get("step") == step.data.get("steps"):
                comps.unet = None
                release_memory()
    except StopIteration as stop:
        img = np.asarray(stop.value[0])
    total = time.perf_counter() - t0
    del comps, pipe, gen  # the precision's sessions go before the next precision's open
    release_memory()
    d = np.abs(img.astype(np.int16) - ref_img.astype(np.int16))
    ok = d.max() <= 2 if precision in EXACT else psnr(img, ref_img) >= MIN_PSNR.get(precision, float("-inf"))
    return {
        "components": rows,
        "bytes": sum(onnx_size(folder / r) for r in set(comp.values())),
        "image": {"max_diff_255": int(d.max()), "mean_diff_255": float(d.mean()), "psnr": psnr(img, ref_img),
                  "pipeline_s": total, "ok": bool(ok),
                  **({"min_psnr": MIN_PSNR[precision]} if precision in MIN_PSNR else {})},
    }
