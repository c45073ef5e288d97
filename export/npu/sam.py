"""MobileSAM fp32 export -> NPU artifact (encoder + decoder, QDQ, static shapes).

encoder.onnx  1x3x1024x1024 -> 1x256x64x64: tanh GELU; static already.
decoder.onnx  pruned to ``iou_predictions`` + ``low_res_masks`` (the shape-dependent upscale/crop/resize
              to the original image size runs outside the graph: edge.npu.adapters.SamLowResDecoder);
              tanh GELU; ConvTranspose k2s2 -> Conv + DepthToSpace; the no-op 5-D Tile of upstream's
              repeat_interleave removed (QNN HTP segfaults on it); split at the prompt encoder: the
              fp32 head ``decoder_head.onnx`` (labels compared with -1..3, sin/cos position encoding,
              mask downscaling: tiny, and exact only unquantized) runs on the CPU, the body (two-way
              transformer, upscaling, hypernetworks, IoU head) is the NPU graph: by default the float
              graph the HTP computes in fp16 (quant.FLOAT_SCHEMES), or QDQ. The token count (5 + points)
              stays a symbolic dim each session fixes (one compiled graph per count, cached).
Calibration: the encoder on images (generated shapes + real photos from scikit-image, or a folder),
the decoder on the fp32 encoder's embeddings of those images with point / box prompts.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from export.npu import quant
from export.npu.convert import prepare

FILES = ("encoder.onnx", "decoder.onnx")
MAX_POINTS = 16
CALIB_PHOTOS = ("astronaut", "coffee")
VERIFY_PHOTOS = ("chelsea",)           # held out from calibration


def verify_images() -> list[tuple[str, np.ndarray]]:
    """Held-out images (not used for calibration): a real photo first, then a generated one."""
    from export.recipes.sam_onnx import real_photo, synthetic_image

    imgs = [(f"skimage.{n}", real_photo(n)) for n in VERIFY_PHOTOS]
    return [(n, i) for n, i in imgs if i is not None] + [("shapes-7", synthetic_image(7))]


def calibration_images(folder: str | None, limit: int = 8) -> list[tuple[str, np.ndarray]]:
    from edge.segment import preprocess as pre
    from export.recipes.sam_onnx import real_photo, synthetic_image

    if folder:
        paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))
        if not paths:
            from edge.errors import BadRequest

            raise BadRequest(f"--calib-images {folder!r} holds no .jpg/.png/.webp images.", param="calib_images")
        return [(p.name, pre.load_image(p).rgb) for p in paths[:limit]]
    imgs = [(f"shapes-{s}", synthetic_image(s)) for s in range(2)]
    for name in CALIB_PHOTOS:
        photo = real_photo(name)
        if photo is not None:
            imgs.append((f"skimage.{name}", photo))
    return imgs[:limit]


def decoder_feeds(emb: np.ndarray, size: tuple[int, int], cases: list[dict]) -> list[dict[str, np.ndarray]]:
    from edge.segment import preprocess as pre

    out = []
    for case in cases:
        prompt = pre.parse_prompt(case["points"], case["box"], size)
        coords, labels = prompt.onnx_inputs(size)
        out.append({"image_embeddings": emb, "point_coords": coords, "point_labels": labels,
                    "mask_input": np.zeros((1, 1, 256, 256), np.float32), "has_mask_input": np.zeros(1, np.float32)})
    return out


HEAD_INPUTS = ["point_coords", "point_labels", "mask_input", "has_mask_input"]


def convert(src: Path, out: Path, schemes: list[str], default: str, *, calib_images: str | None,
            threads: int, decoder_quant: str | None = "a16w8", gelu: str = "native",
            calib_limit: int = 8) -> dict[str, Any]:
    """Write the NPU graphs into ``out`` (default scheme at the top, others in ``<scheme>/``; the fp32
    prompt-encoder head ``decoder_head.onnx`` is shared); return the manifest's ``npu`` section parts.
    ``decoder_quant``: the scheme of every variant's decoder body (None = the variant's own). With 8-bit
    activations the two-way transformer loses the masks (measured: min mask IoU 0.43 vs fp32 on the CPU
    EP, against 0.97 with 16-bit). Default fp16, measured on the QNN HTP simulator (MobileSAM size,
    6 prompt cases, the fp32 embeddings): a16w8 lost the masks of the 8-token prompt (low-res logits 0.57
    relative error, IoU 0.71: layer 1's self-attention goes wrong right after its q/k Transposes, where
    tokens = heads = 8; 1-2 % at other token counts, on the CPU EP 1 % at all), fp16 0.14 %, IoU >= 0.997."""
    import onnx
    import onnxruntime as ort

    from edge.segment import preprocess as pre
    from export.npu import graph as G
    from export.recipes.sam_onnx import prompt_cases

    work = out / ".work"
    work.mkdir()
    # 1. static, rewritten fp32 graphs; the decoder split into an fp32 prompt-encoder head (CPU) and
    #    the two-way transformer + mask head body (NPU)
    enc = prepare(src / "encoder.onnx", work / "encoder.onnx", gelu=gelu)
    dec = prepare(src / "decoder.onnx", work / "decoder_full.onnx", outputs=["iou_predictions", "low_res_masks"],
                  keep_symbolic=("num_points",), gelu=gelu)
    cut = G.split_head(dec.path, work / "head.onnx", work / "body.onnx", HEAD_INPUTS)
    head = onnx.load(str(work / "head.onnx"))
    probe = ort.InferenceSession(str(work / "head.onnx"), providers=["CPUExecutionProvider"])
    outs = probe.run(None, {"point_coords": np.zeros((1, 2, 2), np.float32), "point_labels": np.array([[1, -1]], np.float32),
                            "mask_input": np.zeros((1, 1, 256, 256), np.float32), "has_mask_input": np.zeros(1, np.float32)})
    ranks = {o.name: v.ndim for o, v in zip(probe.get_outputs(), outs)}
    names = {c: "dense_embeddings" if ranks.get(c) == 4 else "prompt_tokens" for c in cut}
    if sorted(names.values()) != ["dense_embeddings", "prompt_tokens"]:
        raise RuntimeError(f"unexpected MobileSAM decoder structure: the prompt encoder ends in {cut}")
    onnx.save(G.rename_tensors(head, names), str(out / "decoder_head.onnx"))
    body = G.rename_tensors(onnx.load(str(work / "body.onnx")), names)
    G.set_dim(body, "prompt_tokens", 1, "num_tokens")
    onnx.save(body, str(work / "body.onnx"))
    body_prep = prepare(work / "body.onnx", work / "decoder.onnx", keep_symbolic=("num_tokens",), gelu=gelu)
    # 2. calibration data: images -> fp32 embeddings; prompts -> the head's tokens / dense embeddings
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    enc_ref = ort.InferenceSession(str(src / "encoder.onnx"), so, providers=["CPUExecutionProvider"])
    head_sess = ort.InferenceSession(str(out / "decoder_head.onnx"), so, providers=["CPUExecutionProvider"])
    enc_feeds, dec_feeds = [], []
    for _, rgb in calibration_images(calib_images, limit=calib_limit):
        x, _ = pre.encoder_input(rgb)
        enc_feeds.append({"image": x})
        emb = enc_ref.run(None, {"image": x})[0]
        h, w = rgb.shape[:2]
        for f in decoder_feeds(emb, (h, w), prompt_cases(h, w)):
            tokens, dense = head_sess.run(["prompt_tokens", "dense_embeddings"], {k: f[k] for k in HEAD_INPUTS})
            dec_feeds.append({"image_embeddings": emb, "prompt_tokens": tokens, "dense_embeddings": dense})
    # 3. quantize per scheme
    components: dict[str, dict] = {"decoder_head.onnx": {"role": "decoder_head", "quant": "fp32", "static": False,
                                                         "device": "cpu"}}
    for scheme in schemes:
        folder = out if scheme == default else out / scheme
        folder.mkdir(exist_ok=True)
        rel = "" if scheme == default else f"{scheme}/"
        quant.quantize_qdq(enc.path, folder / "encoder.onnx", enc_feeds, scheme)
        dec_scheme = decoder_quant or scheme
        if dec_scheme in quant.FLOAT_SCHEMES:
            shutil.copyfile(body_prep.path, folder / "decoder.onnx")
        else:
            quant.quantize_qdq(body_prep.path, folder / "decoder.onnx", dec_feeds, dec_scheme)
        components[rel + "encoder.onnx"] = {"role": "encoder", "quant": scheme, "static": True, "device": "npu",
                                            "inputs": enc.inputs}
        components[rel + "decoder.onnx"] = {"role": "decoder", "quant": dec_scheme, "static": True, "device": "npu",
                                            "inputs": body_prep.inputs, "adapter": "sam_low_res_decoder",
                                            "head": "decoder_head.onnx",
                                            "per_call_dims": {"num_tokens": MAX_POINTS + 5},
                                            **({"provider_options": quant.FLOAT_SCHEMES[dec_scheme]}
                                               if dec_scheme in quant.FLOAT_SCHEMES else {})}
    for p in work.iterdir():
        p.unlink()
    work.rmdir()
    return {"components": components,
            "rewrites": {"encoder": {**enc.rewrites, "ops_before": enc.ops_before, "ops_after": enc.ops_after},
                         "decoder": {**dec.rewrites, "split": {"cpu_head_inputs": HEAD_INPUTS,
                                                               "cut": list(names.values())},
                                     "ops_before": dec.ops_before, "ops_after_body": body_prep.ops_after,
                                     "ops_head": G.op_counts(head)}},
            "calibration": {"encoder_feeds": len(enc_feeds), "decoder_feeds": len(dec_feeds),
                            "images": calib_images or "generated shapes + scikit-image photos"}}


def verify(src: Path, out: Path, schemes: list[str], default: str, *, devices: list[str], images: int = 1,
           cases: int = 6, threads: int = 2) -> dict[str, Any]:
    """Mask IoU and embedding error of every scheme on every device in ``devices`` (cpu = the QDQ
    graph on onnxruntime's CPU EP; auto/npu = on the NPU EP) against the fp32 export on the CPU."""
    from edge.segment import preprocess as pre
    from edge.segment.predictor import OnnxSamPredictor
    from export import verify as V
    from export.recipes.sam_onnx import prompt_cases

    ref = OnnxSamPredictor.from_files(src / "encoder.onnx", src / "decoder.onnx", threads=threads, device="cpu")
    test_imgs = verify_images()[:images]
    ref_out = {}
    for name, rgb in test_imgs:
        img = pre.load_image(rgb)
        emb = ref.encode(img)
        h, w = rgb.shape[:2]
        ref_out[name] = (img, emb, [(c["name"], ref.decode(emb, pre.parse_prompt(c["points"], c["box"], (h, w)),
                                                            multimask=c["multimask"])[0])
                                        for c in prompt_cases(h, w)[:cases]])
    results: dict[str, Any] = {}
    for scheme in schemes:
        folder = out if scheme == default else out / scheme
        for device in devices:
            ours = OnnxSamPredictor.from_files(folder / "encoder.onnx", folder / "decoder.onnx", threads=threads,
                                               device=device)
            ious, emb_err, rows = [], [], []
            for name, (img, emb_ref, refs) in ref_out.items():
                emb = ours.encode(img)
                emb_err.append(V.relative_error(emb.features, emb_ref.features))
                h, w = img.size
                for (case_name, ref_masks), case in zip(refs, prompt_cases(h, w)[:cases]):
                    masks, _ = ours.decode(emb, pre.parse_prompt(case["points"], case["box"], (h, w)),
                                           multimask=case["multimask"])
                    case_iou = [V.iou(m.mask, r.mask) for m, r in zip(masks, ref_masks)]
                    ious += case_iou
                    rows.append({"image": name, "case": case_name, "iou": [round(v, 4) for v in case_iou]})
            placement = {"encoder": getattr(ours.encoder, "placement", {}),
                         "decoder": {str(k): v for k, v in getattr(ours.decoder, "placement", {}).items()}}
            results[f"{scheme}@{device}"] = {
                "scheme": scheme, "device": device, "min_mask_iou": float(min(ious)) if ious else None,
                "mean_mask_iou": float(np.mean(ious)) if ious else None,
                "max_embedding_rel_err": float(max(emb_err)) if emb_err else None,
                "cases": rows, "placement": _strip(placement)}
            ours.close()
    ref.close()
    return results


def _strip(obj: Any) -> Any:
    """Placement dicts without local paths (the cache folder) for the report."""
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k != "cache"}
    return obj


def manifest(src_manifest: dict, npu: dict, default: str) -> dict:
    m = json.loads(json.dumps(src_manifest))
    m.update({"precision": default, "recipe": "npu", "source_recipe": src_manifest.get("recipe", "sam"),
              "components": {"encoder": default, "decoder": default}})
    return m
