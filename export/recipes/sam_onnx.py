"""MobileSAM -> encoder.onnx + decoder.onnx (fp32, int8 dynamic, int8 QDQ static for NPU EPs, or int8-ov).

int8 / qdq quantize encoder.onnx; int8-ov writes the encoder as NNCF post-training int8 in OpenVINO IR
(encoder.xml + encoder.bin, calibrated on the qdq calibration images; only the OpenVINO runtime reads it:
--device openvino, or auto); decoder.onnx stays fp32 unless --quantize-decoder (measured: int8 costs
the decoder far more mask IoU than the encoder, and the decoder is a small share of the compute).

Source: an upstream checkpoint (``mobile_sam.pt``, loaded with the upstream code from the PyPI
package ``mobilesam-mirror``) or ``--random-init mobilesam|tiny`` (the same upstream classes with
seeded random weights; ``tiny`` shrinks the TinyViT and decoder widths/depths so tests take seconds).

Graphs (the interface of upstream's ``SamOnnxModel``, as samexporter and the SAM web demo use it):
  encoder.onnx  image 1x3x1024x1024 (resized, normalised, padded) -> image_embeddings 1x256x64x64
  decoder.onnx  image_embeddings, point_coords 1xNx2, point_labels 1xN (1 fg, 0 bg, 2/3 box corners,
                -1 padding), mask_input 1x1x256x256, has_mask_input 1, orig_im_size 2
                -> masks 1x4xHxW (logits at orig size), iou_predictions 1x4, low_res_masks 1x4x256x256
                (mask 0 = single-mask output, 1..3 = multimask outputs)

Verification (report.json): encoder embedding error and mask IoU of the exported graphs, run through
edge's own runtime predictor, against upstream's PyTorch ``SamPredictor`` on the same images/prompts.

    python -m export.recipes.sam_onnx --random-init tiny --out /tmp/sam-tiny [--precision int8]
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.recipes import _common
from export.recipes._common import RecipeConfig, option, random_init_option, source_option

HELP = "MobileSAM -> encoder.onnx + decoder.onnx (fp32 / int8 / qdq), verified against upstream SamPredictor"
PRESETS = ("mobilesam", "tiny")
PRECISIONS = ("fp32", "int8", "qdq", "int8-ov")
OPSET = 17
IR_ENCODER = "encoder.xml"  # the int8-ov encoder (OpenVINO IR, weights in encoder.bin)
# thresholds the verification must meet for the artifact to be written
# int8 / qdq quality is reported, not gated. int8-ov (static int8 activations, like qdq) is gated loosely, to catch a
# broken quantization rather than to grade it: the tiny random model measures min IoU 0.80 / mean 0.88 and embedding
# rel err 0.16 (qdq there: 0.86 / 0.90 / 0.15); random weights are harder on static int8 than trained ones.
MIN_IOU = {"fp32": 0.99, "int8": 0.0, "qdq": 0.0, "int8-ov": 0.5}
MAX_EMB_REL_ERR = {"fp32": 1e-3, "int8": 1.0, "qdq": 1.0, "int8-ov": 0.5}


# 1. options --------------------------------------------------------------------------------------

@dataclass
class Config(RecipeConfig):
    """The options of `edge-run export sam` (each is also a flag)."""

    source: str | None = source_option("upstream MobileSAM checkpoint (mobile_sam.pt); omit with --random-init")
    random_init: str | None = random_init_option(
        PRESETS, "build the architecture with seeded random weights instead of a checkpoint")
    seed: int = option("--seed", default=0, type=int, help="seed for --random-init (default 0)")
    precision: str = option("--precision", default="fp32", choices=PRECISIONS,
                            help="fp32; int8 = dynamic int8 weights (CPU); qdq = static QDQ int8 with calibration "
                                 "(NPU EPs); int8-ov = NNCF static int8 encoder as OpenVINO IR (--device openvino)")
    from_onnx: str | None = option("--from-onnx", metavar="FP32_DIR",
                                   help="quantize the fp32 encoder/decoder.onnx in this folder instead of exporting "
                                        "again (the result is still verified against the PyTorch source)")
    quantize_decoder: bool = option("--quantize-decoder", default=False, action="store_true",
                                    help="also quantize decoder.onnx (off by default: the decoder is small, and int8 "
                                         "costs it far more mask IoU than the encoder's int8 does)")
    calib_images: str | None = option("--calib-images",
                                      help="folder of images for --precision qdq / int8-ov calibration (default: "
                                           "generated images)")
    out: str | None = option("--out", "-o", required=True, help="output folder (written atomically)")
    overwrite: bool = option("--overwrite", default=False, action="store_true",
                             help="replace an existing output folder")
    opset: int = option("--opset", default=OPSET, type=int, help=f"ONNX opset (default {OPSET})")
    add: bool = option("--add", default=False, action="store_true",
                       help="install the result into the store ($EDGE_HOME/models) and append it to models.lock")
    model_id: str | None = option("--id",
                                  help="model id for --add (default mobilesam-<preset|checkpoint>-<precision>)")
    verify_images: int = option("--verify-images", default=2, type=int,
                                help="how many verification images (generated shapes + a real photo when "
                                     "scikit-image is present)")


# 2. source ---------------------------------------------------------------------------------------

def build_sam(preset: str, seed: int = 0):
    """The upstream MobileSAM architecture (``mobile_sam`` classes) with seeded random weights.

    ``mobilesam`` is exactly upstream's ``build_sam_vit_t`` layout; ``tiny`` is the same code with
    smaller TinyViT widths/depths and a one-layer, narrow two-way transformer (the 1024 input, 64x64x256
    embedding and 256x256 low-res mask interfaces are unchanged)."""
    import torch
    from mobile_sam.build_sam import build_sam_vit_t
    from mobile_sam.modeling import MaskDecoder, PromptEncoder, Sam, TinyViT, TwoWayTransformer

    torch.manual_seed(seed)
    if preset == "mobilesam":
        sam = build_sam_vit_t()
    elif preset == "tiny":
        sam = Sam(
            image_encoder=TinyViT(img_size=1024, in_chans=3, num_classes=1000, embed_dims=[8, 16, 24, 320],
                                  depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 5], window_sizes=[7, 7, 14, 7],
                                  mlp_ratio=2.0, drop_rate=0.0, drop_path_rate=0.0, use_checkpoint=False,
                                  mbconv_expand_ratio=2.0, local_conv_size=3, layer_lr_decay=0.8),
            prompt_encoder=PromptEncoder(embed_dim=256, image_embedding_size=(64, 64),
                                         input_image_size=(1024, 1024), mask_in_chans=16),
            mask_decoder=MaskDecoder(num_multimask_outputs=3,
                                     transformer=TwoWayTransformer(depth=1, embedding_dim=256, mlp_dim=256,
                                                                   num_heads=8),
                                     transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=64),
            pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375])
    else:
        raise ValueError(f"unknown preset {preset!r}; use one of {PRESETS}")
    _randomise_norms(sam, seed)
    sam.eval()  # also refreshes TinyViT's cached attention biases
    _balance_masks(sam)
    return sam


def _balance_masks(sam) -> None:
    """Random weights make masks that are nearly all background, so a parity test would compare empty
    masks. Shift each mask token's hypernetwork output bias (deterministically, on a generated image
    and a centre click) so about half the pixels are foreground; masks then have long boundaries that
    any numeric drift in an exported graph would move."""
    import torch

    grabbed: dict[str, Any] = {}
    dec = sam.mask_decoder
    hooks = [dec.output_upscaling.register_forward_hook(lambda m, i, o: grabbed.__setitem__("u", o))]
    for k, mlp in enumerate(dec.output_hypernetworks_mlps):
        hooks.append(mlp.register_forward_hook(lambda m, i, o, k=k: grabbed.__setitem__(k, o)))
    try:
        from edge.segment import preprocess as pre

        x, _ = pre.encoder_input(synthetic_image(0))
        with torch.no_grad():
            emb = sam.image_encoder(torch.from_numpy(x))
            pts = (torch.tensor([[[512.0, 400.0]]]), torch.tensor([[1]]))
            sparse, dense = sam.prompt_encoder(points=pts, boxes=None, masks=None)
            dec.predict_masks(emb, sam.prompt_encoder.get_dense_pe(), sparse, dense)
            u = grabbed["u"][0]                              # C x 256 x 256
            s = u.sum(0)
            ok = s.abs() > 1e-3
            for k, mlp in enumerate(dec.output_hypernetworks_mlps):
                m = torch.einsum("c,chw->hw", grabbed[k][0, 0] if grabbed[k].dim() == 3 else grabbed[k][0], u)
                alpha = torch.median(-(m[ok] / s[ok]))
                mlp.layers[-1].bias += alpha
    finally:
        for h in hooks:
            h.remove()


def _randomise_norms(sam, seed: int) -> None:
    """Give BatchNorm running stats, norm affines and attention biases seeded non-trivial values, so
    the random network exercises every parameter the exporter must carry (defaults are 0/1)."""
    import torch

    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, mod in sam.named_modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.copy_(torch.randn(mod.num_features, generator=g) * 0.1)
                mod.running_var.copy_(torch.rand(mod.num_features, generator=g) * 0.5 + 0.75)
                mod.weight.copy_(1 + torch.randn(mod.num_features, generator=g) * 0.1)
                mod.bias.copy_(torch.randn(mod.num_features, generator=g) * 0.05)
        for name, p in sam.named_parameters():
            if name.endswith("attention_biases"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def load_checkpoint(path: str | Path):
    from export.distill.sam_arch import load_sam  # vit_t, distilled TinyViTs (shapes read from the file), SAM ViTs

    from edge.errors import BadRequest

    p = Path(path)
    if not p.is_file():
        raise BadRequest(f"checkpoint {str(p)!r} does not exist; pass mobile_sam.pt or use --random-init.",
                         param="source")
    try:
        sam = load_sam(p)
    except Exception as e:  # noqa: BLE001 - a wrong file must be a clear message, not a traceback
        raise BadRequest(f"{str(p)!r} is not a MobileSAM (vit_t) checkpoint: {e.__class__.__name__}: "
                         f"{str(e)[:200]}", param="source") from None
    sam.eval()
    return sam


# 3. export ---------------------------------------------------------------------------------------

def export_encoder(sam, path: Path, opset: int = OPSET) -> None:
    import torch

    class Encoder(torch.nn.Module):
        def __init__(self, enc):
            super().__init__()
            self.enc = enc

        def forward(self, image):
            return self.enc(image)

    x = torch.zeros(1, 3, 1024, 1024)
    with torch.no_grad():
        torch.onnx.export(Encoder(sam.image_encoder).eval(), (x,), str(path), dynamo=False,
                          input_names=["image"], output_names=["image_embeddings"], opset_version=opset,
                          do_constant_folding=True)


def export_decoder(sam, path: Path, opset: int = OPSET) -> None:
    import torch
    from mobile_sam.utils.onnx import SamOnnxModel

    model = SamOnnxModel(sam, return_single_mask=False).eval()
    dummy = {
        "image_embeddings": torch.randn(1, 256, 64, 64),
        "point_coords": torch.randint(0, 1024, (1, 5, 2), dtype=torch.float),
        "point_labels": torch.randint(0, 4, (1, 5), dtype=torch.float),
        "mask_input": torch.randn(1, 1, 256, 256),
        "has_mask_input": torch.tensor([1], dtype=torch.float),
        "orig_im_size": torch.tensor([1500, 2250], dtype=torch.float),
    }
    with torch.no_grad():
        torch.onnx.export(model, tuple(dummy.values()), str(path), dynamo=False,
                          input_names=list(dummy), output_names=["masks", "iou_predictions", "low_res_masks"],
                          dynamic_axes={"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"},
                                        "masks": {2: "height", 3: "width"}},
                          opset_version=opset, do_constant_folding=True)


# 4. quantize -------------------------------------------------------------------------------------

def quantize_dynamic_int8(src: Path, dst: Path) -> None:
    """int8 weights, dynamic activations, MatMul/Gemm only (ORT's ConvInteger is slower than fp32 conv
    on CPU, and the TinyViT convs are small)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"],
                     extra_options={"MatMulConstBOnly": True})


def quantize_qdq_int8(src: Path, dst: Path, feeds: list[dict[str, np.ndarray]]) -> None:
    """Static QDQ int8 (activations uint8, weights int8, per-channel) calibrated on ``feeds``: the
    form NPU execution providers (QNN, OpenVINO, NNAPI) consume."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

    pre = dst.with_name(dst.stem + ".pre.onnx")
    try:
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(dst), Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)
    finally:
        pre.unlink(missing_ok=True)
        for extra in dst.parent.glob("*.data"):
            if extra.name.startswith(pre.stem):
                extra.unlink()


# 5. verification ---------------------------------------------------------------------------------

def synthetic_image(seed: int = 0, size: tuple[int, int] = (480, 640)) -> np.ndarray:
    """An RGB uint8 test image: a gradient background with a few solid shapes (clear objects)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([60 + 80 * xx / w, 90 + 60 * yy / h, 140 - 40 * xx / w], axis=-1)
    base += rng.normal(0, 6, base.shape)
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    d.ellipse((0.12 * w, 0.2 * h, 0.42 * w, 0.65 * h), fill=(230, 60, 50))
    d.rectangle((0.55 * w, 0.15 * h, 0.85 * w, 0.5 * h), fill=(250, 220, 60))
    d.polygon([(0.5 * w, 0.92 * h), (0.65 * w, 0.6 * h), (0.8 * w, 0.92 * h)], fill=(40, 170, 80))
    return np.asarray(img)


def real_photo(name: str = "astronaut") -> np.ndarray | None:
    """A real photo shipped in scikit-image's data module (None if it is not installed)."""
    try:
        from skimage import data
    except ImportError:
        return None
    img = getattr(data, name)()
    return img if img.ndim == 3 else np.repeat(img[..., None], 3, axis=2)


def prompt_cases(h: int, w: int) -> list[dict[str, Any]]:
    """Prompt sets covering the decoder's paths (coordinates in image pixels)."""
    return [
        {"name": "point", "points": [(0.27 * w, 0.42 * h, 1)], "box": None, "multimask": False},
        {"name": "point_multimask", "points": [(0.27 * w, 0.42 * h, 1)], "box": None, "multimask": True},
        {"name": "points", "points": [(0.27 * w, 0.42 * h, 1), (0.7 * w, 0.3 * h, 1), (0.5 * w, 0.1 * h, 0)],
         "box": None, "multimask": False},
        {"name": "box", "points": [], "box": (0.55 * w, 0.15 * h, 0.85 * w, 0.5 * h), "multimask": False},
        {"name": "box_point", "points": [(0.65 * w, 0.8 * h, 1)],
         "box": (0.45 * w, 0.55 * h, 0.85 * w, 0.95 * h), "multimask": False},
        {"name": "box_multimask", "points": [], "box": (0.1 * w, 0.15 * h, 0.45 * w, 0.7 * h), "multimask": True},
    ]


def torch_predict(predictor, case: dict[str, Any], mask_input: np.ndarray | None = None):
    """Upstream SamPredictor.predict for a prompt case (image already set)."""
    pts = case["points"]
    coords = np.array([p[:2] for p in pts], dtype=np.float64) if pts else None
    labels = np.array([p[2] for p in pts], dtype=np.int64) if pts else None
    box = np.array(case["box"], dtype=np.float64) if case["box"] is not None else None
    return predictor.predict(point_coords=coords, point_labels=labels, box=box, mask_input=mask_input,
                             multimask_output=case["multimask"])


def verify(sam, folder: Path, precision: str, images: list[tuple[str, np.ndarray]],
           threads: int = 2) -> dict[str, Any]:
    """Compare the ONNX files in ``folder`` (through edge's runtime predictor) with upstream's PyTorch
    SamPredictor: embedding error per image, mask IoU per prompt case and mask."""
    import torch
    from mobile_sam import SamPredictor

    from edge.segment import preprocess as pre
    from edge.segment.predictor import OnnxSamPredictor
    from export import verify as V

    encoder = folder / IR_ENCODER if (folder / IR_ENCODER).is_file() else folder / "encoder.onnx"
    ours = OnnxSamPredictor.from_files(encoder, folder / "decoder.onnx", threads=threads)  # an IR runs on OpenVINO
    ref = SamPredictor(sam)
    per_image, ious = [], []
    for img_name, rgb in images:
        with torch.no_grad():
            ref.set_image(rgb)
        ref_emb = ref.get_image_embedding().numpy()
        loaded = pre.load_image(rgb)
        t0 = time.perf_counter()
        emb = ours.encode(loaded)
        enc_s = time.perf_counter() - t0
        emb_cmp = V.compare_arrays(emb.features, ref_emb)
        cases = []
        h, w = rgb.shape[:2]
        for case in prompt_cases(h, w):
            ref_masks, ref_scores, _ = torch_predict(ref, case)
            prompt = pre.parse_prompt(case["points"], case["box"], (h, w))
            masks, best = ours.decode(emb, prompt, multimask=case["multimask"])
            case_iou = [V.iou(m.mask, r) for m, r in zip(masks, ref_masks)]
            ious += case_iou
            cases.append({"case": case["name"], "iou": [round(v, 6) for v in case_iou],
                          "score_max_abs_diff": V.max_abs_diff([m.score for m in masks], ref_scores),
                          "mask_fraction": round(float(np.mean(ref_masks)), 4)})
        per_image.append({"image": img_name, "size": [h, w], "embedding": emb_cmp, "encode_s": round(enc_s, 3),
                          "cases": cases})
    emb_rel = max(p["embedding"]["relative_error"] for p in per_image)
    summary = {"precision": precision, "min_mask_iou": min(ious), "mean_mask_iou": float(np.mean(ious)),
               "max_embedding_rel_err": emb_rel,
               "max_embedding_abs_diff": max(p["embedding"]["max_abs_diff"] for p in per_image)}
    thresholds = {"min_mask_iou": MIN_IOU[precision], "max_embedding_rel_err": MAX_EMB_REL_ERR[precision]}
    passed = summary["min_mask_iou"] >= thresholds["min_mask_iou"] and emb_rel <= thresholds["max_embedding_rel_err"]
    ours.close()
    return V.make_report("sam_onnx_vs_upstream_SamPredictor", {"images": per_image}, passed=passed,
                         thresholds=thresholds, summary=summary, reference="mobile_sam.SamPredictor (PyTorch fp32)")


# 6. the recipe -----------------------------------------------------------------------------------

def run(cfg: Config, sam=None) -> Path:
    """build/load -> export fp32 -> quantize -> verify -> write report.json + edge-model.json atomically.
    ``sam``: an already built PyTorch model for ``--random-init`` (tests reuse one per session)."""
    from edge.errors import BadRequest
    from edge.manifest import SegmentManifest, write
    from export.artifacts import ArtifactDir, file_table
    from export.verify import write_report

    # 1. check inputs
    cfg = _common.typed(Config, cfg)
    if (cfg.source is None) == (cfg.random_init is None):
        raise BadRequest("give exactly one source: a MobileSAM checkpoint path or --random-init "
                         f"{'|'.join(PRESETS)}.", param="source")
    precision = cfg.precision
    if precision == "int8-ov" and cfg.quantize_decoder:
        raise BadRequest("--quantize-decoder is not offered with --precision int8-ov: the runtime loads decoder.onnx; "
                         "int8-ov quantizes the encoder only.", param="quantize_decoder")
    t_start = time.perf_counter()

    # 2. build / load the PyTorch model
    if cfg.random_init:
        sam = sam if sam is not None else build_sam(cfg.random_init, cfg.seed)
        source = {"kind": "random-init", "preset": cfg.random_init, "seed": cfg.seed}
    else:
        sam = load_checkpoint(cfg.source)
        from export.artifacts import sha256_file
        source = {"kind": "checkpoint", "path": str(Path(cfg.source).absolute()),
                  "sha256": sha256_file(Path(cfg.source))}

    images = [("shapes", synthetic_image(0))]
    photo = real_photo() if cfg.verify_images > 1 else None
    if photo is not None:
        images.append(("skimage.data.astronaut", photo))

    with ArtifactDir(cfg.out, overwrite=cfg.overwrite) as tmp:
        # 3. export fp32 graphs
        work = tmp / ".fp32"
        work.mkdir()
        if cfg.from_onnx:
            import shutil

            for n in ("encoder.onnx", "decoder.onnx"):
                src = Path(cfg.from_onnx) / n
                if not src.is_file():
                    raise BadRequest(f"--from-onnx {cfg.from_onnx!r} has no {n}; give an fp32 export folder.",
                                     param="from_onnx")
                shutil.copyfile(src, work / n)
        else:
            export_encoder(sam, work / "encoder.onnx", cfg.opset)
            export_decoder(sam, work / "decoder.onnx", cfg.opset)

        # 4. quantize
        if precision == "fp32":
            for n in ("encoder.onnx", "decoder.onnx"):
                (work / n).rename(tmp / n)
        elif precision == "int8":
            quantize_dynamic_int8(work / "encoder.onnx", tmp / "encoder.onnx")
            if cfg.quantize_decoder:
                quantize_dynamic_int8(work / "decoder.onnx", tmp / "decoder.onnx")
        elif precision == "int8-ov":
            from export.quantize import nncf_int8

            enc_feeds, _ = _calibration_feeds(sam, cfg.calib_images, decoder=False)
            nncf_int8(work / "encoder.onnx", tmp / IR_ENCODER, enc_feeds)
        else:
            enc_feeds, dec_feeds = _calibration_feeds(sam, cfg.calib_images, decoder=cfg.quantize_decoder)
            quantize_qdq_int8(work / "encoder.onnx", tmp / "encoder.onnx", enc_feeds)
            if cfg.quantize_decoder:
                quantize_qdq_int8(work / "decoder.onnx", tmp / "decoder.onnx", dec_feeds)
        if not (tmp / "decoder.onnx").exists():
            (work / "decoder.onnx").rename(tmp / "decoder.onnx")  # the decoder stays fp32 by default
        for p in work.iterdir():
            p.unlink()
        work.rmdir()

        # 5. verify against upstream SamPredictor (PyTorch fp32)
        report = verify(sam, tmp, precision, images)
        report["source"] = source
        report["export_s"] = round(time.perf_counter() - t_start, 1)
        write_report(tmp, report)
        if not report["passed"]:
            raise BadRequest(f"verification failed for {precision}: {json.dumps(report['summary'])}; "
                             f"thresholds {report['thresholds']}. Nothing was written.", param="precision")

        # 6. manifest
        write(tmp, SegmentManifest(
            format="onnx", family="mobilesam", recipe="sam", precision=precision, source=source,
            components={"encoder": precision,
                        "decoder": precision if (precision != "fp32" and cfg.quantize_decoder) else "fp32"},
            inputs={"image_size": 1024, "embedding": [256, 64, 64], "low_res_mask": [256, 256],
                    "pixel_mean": [123.675, 116.28, 103.53], "pixel_std": [58.395, 57.12, 57.375]},
            files=file_table(tmp), verify=report["summary"]))
    print(f"sam: wrote {cfg.out} ({precision}); min mask IoU vs PyTorch {report['summary']['min_mask_iou']:.4f}, "
          f"embedding rel err {report['summary']['max_embedding_rel_err']:.2e}")
    if cfg.add:  # 7. install into the store and pin in the user lock
        model_id = cfg.model_id or f"mobilesam-{cfg.random_init or 'checkpoint'}-{precision}"
        _common.install(cfg, cfg.out, model_id=model_id, task="segment", fmt="onnx", license="Apache-2.0",
                        source={"recipe": "sam", "origin": source["kind"],
                                **{k: v for k, v in source.items() if isinstance(v, (str, int)) and k != "kind"}},
                        description=HELP)
        print(f"sam: installed as {model_id!r} (edge-run segment ... --model {model_id})")
    return Path(cfg.out).absolute()


def _calibration_feeds(sam, folder: str | None, decoder: bool = True) -> tuple[list[dict], list[dict]]:
    """Encoder and decoder feeds for static calibration: images from ``folder`` or generated ones,
    with the decoder fed the fp32 PyTorch embeddings and a few prompts per image."""
    import torch

    from edge.segment import preprocess as pre

    if folder:
        paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))
        rgbs = [pre.load_image(p).rgb for p in paths[:16]]
        if not rgbs:
            from edge.errors import BadRequest
            raise BadRequest(f"--calib-images {folder!r} holds no .jpg/.png/.webp images.", param="calib_images")
    else:
        rgbs = [synthetic_image(s) for s in range(4)]
        photo = real_photo()
        if photo is not None:
            rgbs.append(photo)
    enc, dec = [], []
    for rgb in rgbs:
        x, _ = pre.encoder_input(rgb)
        enc.append({"image": x})
        if not decoder:
            continue
        with torch.no_grad():
            emb = sam.image_encoder(torch.from_numpy(x)).numpy()
        h, w = rgb.shape[:2]
        for case in prompt_cases(h, w)[:4]:
            prompt = pre.parse_prompt(case["points"], case["box"], (h, w))
            coords, labels = prompt.onnx_inputs((h, w))
            dec.append({"image_embeddings": emb, "point_coords": coords, "point_labels": labels,
                        "mask_input": np.zeros((1, 1, 256, 256), np.float32),
                        "has_mask_input": np.zeros(1, np.float32),
                        "orig_im_size": np.array([h, w], np.float32)})
    return enc, dec


add_arguments = Config.add_arguments  # the registry contract: `edge-run export sam` flags
main = _common.entry_point(__name__, "sam")


if __name__ == "__main__":
    raise SystemExit(main())
