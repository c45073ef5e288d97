"""An exported fp32 ONNX artifact (sam, lcm) -> an NPU artifact for Qualcomm QNN HTP.

    edge-run export npu ./mobilesam-fp32 --out ./mobilesam-npu [--quant a16w8,a8w8] [--add --id ID]
    edge-run export npu ./lcm-fp32 --out ./lcm-npu --size 512

Stages: 1. read the source manifest -> 2. graph rewrites + static shapes (export.npu.convert) ->
3. QDQ calibration on representative data per scheme (A8W8, A16W8) -> 4. manifest with an ``npu``
section (what edge.devices reads) -> 5. verify every scheme against the fp32 source: on the CPU EP and,
when onnxruntime-qnn is installed, on the QNN HTP (placement counts + accuracy) -> report.json.
Written atomically (export.artifacts.ArtifactDir). Accuracy is reported, not gated: quantized quality
depends on the weights; the thresholds the tests assert are stated there.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from export.npu.quant import FLOAT_SCHEMES, SCHEMES
from export.recipes import _common
from export.recipes._common import RecipeConfig, option

HELP = ("fp32 ONNX export (sam, lcm, llm-onnx) -> QDQ static-shape NPU artifact (QNN HTP), with placement and "
        "accuracy report")
FAMILIES = ("sam", "lcm", "llm-onnx")


@dataclass
class Config(RecipeConfig):
    """The options of `edge-run export npu` (each is also a flag); threads come from ``settings``."""

    source: str | None = option("source", help="an fp32 export folder (edge-model.json inside), from "
                                               "`edge-run export sam|lcm`")
    out: str | None = option("--out", "-o", required=True, help="output folder (written atomically)")
    overwrite: bool = option("--overwrite", default=False, action="store_true", help="replace an existing --out")
    quant: str = option("--quant", default="a16w8,a8w8",
                        help=f"comma list of QDQ schemes ({', '.join(SCHEMES)}); the first is the default the "
                             "runtime loads")
    size: int | None = option("--size", type=int, help="lcm: the static image side (default: the model's)")
    context: int | None = option("--context", type=int,
                                 help="llm-onnx: the static context (past) length (default 256)")
    calib_steps: int = option("--calib-steps", default=2, type=int, help="lcm: LCM steps per calibration prompt")
    calib_limit: int = option("--calib-limit", default=8, type=int,
                              help="at most this many calibration images (sam) / prompts (lcm)")
    calib_images: str | None = option("--calib-images", help="sam: folder of calibration images (default: "
                                                             "generated shapes + scikit-image photos)")
    gelu: str = option("--gelu", default="native", choices=("native", "tanh"),
                       help="exact GELU as one Gelu node (QNN HTP runs it natively) or as its tanh approximation")
    sam_decoder_quant: str = option("--sam-decoder-quant", default="fp16",
                                    help="sam: scheme of the decoder body in every variant: fp16 (the float graph, "
                                         "computed in fp16 by the HTP; the default: a16w8 lost an 8-token prompt's "
                                         "masks on the HTP), a16w8, a8w8 (8-bit activations lose the masks) or "
                                         "'same' (the variant's own)")
    verify_devices: str = option("--verify-devices", default="cpu,auto",
                                 help="where to verify each scheme: cpu (QDQ on the CPU EP), auto/npu (on the NPU EP "
                                      "when installed); 'none' skips verification")
    verify_images: int = option("--verify-images", default=1, type=int, help="sam: held-out images to verify on")
    verify_cases: int = option("--verify-cases", default=6, type=int, help="sam: prompt cases per image (1..6)")
    add: bool = option("--add", default=False, action="store_true",
                       help="install into the store ($EDGE_HOME/models) and models.lock")
    model_id: str | None = option("--id", help="model id for --add (default <source id>-npu)")


def run(cfg: Config) -> Path:
    from edge.errors import BadRequest
    from edge.npu import eps
    from edge.manifest import MANIFEST_FILE, ImageManifest, read, write
    from export.artifacts import ArtifactDir, file_table, write_json
    from export.npu import chat, lcm, sam
    from export.verify import environment

    # 1. check inputs
    cfg = _common.typed(Config, cfg)
    src = Path(cfg.source or "")
    if not cfg.source or not (src / MANIFEST_FILE).is_file():
        raise BadRequest(f"`source` {cfg.source!r} is not an export folder (no {MANIFEST_FILE}); export one first "
                         "with `edge-run export sam|lcm ... --out FOLDER`.", param="source")
    src_m = read(src)
    family = src_m.recipe
    if family not in FAMILIES:
        raise BadRequest(f"`source` {str(src)!r} was made by recipe {family!r}; the NPU conversion takes "
                         f"{', '.join(FAMILIES)} exports.", param="source")
    if family == "sam" and (src_m.precision or "fp32") != "fp32":
        raise BadRequest(f"`source` is a {src_m.precision} MobileSAM export; the NPU conversion needs "
                         "the fp32 one (`edge-run export sam ... --precision fp32`).", param="source")
    if family == "llm-onnx" and (src_m.precision or "fp32") != "fp32":
        raise BadRequest(f"`source` is a {src_m.precision} ONNX chat export; the NPU conversion needs the "
                         "fp32 one (`edge-run export llm-onnx ... --quant fp32`).", param="source")
    if family == "lcm" and not (isinstance(src_m, ImageManifest) and "fp32" in src_m.precisions):
        raise BadRequest("`source` LCM export has no fp32 precision; export with --precisions fp32,...", param="source")
    src_manifest = src_m.to_dict()  # what export.npu's manifest builders extend
    schemes = [s.strip() for s in cfg.quant.split(",") if s.strip()]
    bad = [s for s in schemes if s not in SCHEMES]
    if not schemes or bad:
        raise BadRequest(f"`--quant` {cfg.quant!r} must list schemes from {', '.join(SCHEMES)}.", param="quant")
    if cfg.sam_decoder_quant not in (*SCHEMES, *FLOAT_SCHEMES, "same"):
        raise BadRequest(f"`--sam-decoder-quant` {cfg.sam_decoder_quant!r} must be one of "
                         f"{', '.join((*FLOAT_SCHEMES, *SCHEMES, 'same'))}.", param="sam_decoder_quant")
    devices = [] if cfg.verify_devices.strip() == "none" else [d.strip() for d in cfg.verify_devices.split(",")]
    if any(d not in ("cpu", "auto", "npu") for d in devices):
        raise BadRequest(f"`--verify-devices` {cfg.verify_devices!r}: use cpu, auto, npu or none.", param="verify_devices")
    if eps.npu_device() is None:
        devices = [d for d in devices if d == "cpu"]
    threads = cfg.settings.threads
    default = schemes[0]
    t0 = time.perf_counter()

    with ArtifactDir(cfg.out, overwrite=cfg.overwrite) as tmp:
        # 2.-3. rewrite, make static, calibrate and quantize
        if family == "sam":
            npu = sam.convert(src, tmp, schemes, default, calib_images=cfg.calib_images, threads=threads,
                              calib_limit=cfg.calib_limit,
                              decoder_quant=None if cfg.sam_decoder_quant == "same" else cfg.sam_decoder_quant,
                              gelu=cfg.gelu)
            m = sam.manifest(src_manifest, npu, default)
        elif family == "llm-onnx":
            npu = chat.convert(src, tmp, schemes, default, context=cfg.context, threads=threads,
                               calib_limit=cfg.calib_limit, gelu=cfg.gelu)
            m = chat.manifest(src_manifest, npu, default)
        else:
            npu = lcm.convert(src, tmp, schemes, default, size=cfg.size, steps=cfg.calib_steps, threads=threads,
                              calib_limit=cfg.calib_limit,
                              gelu=cfg.gelu)
            m = lcm.manifest(src_manifest, npu, default)
        # 4. manifest (edge.devices reads its npu section)
        m["npu"] = {"schema": 1, "target": "qnn-htp", "default_quant": default, "schemes": schemes,
                    "components": npu["components"]}
        m["source"] = {**(src_m.source or {}), "npu_from": str(src.absolute())}
        write(tmp, m)
        # 5. verify
        if family == "sam":
            checks = sam.verify(src, tmp, schemes, default, devices=devices, images=cfg.verify_images,
                                cases=cfg.verify_cases, threads=threads)
        elif family == "llm-onnx":
            checks = chat.verify(src, tmp, schemes, default, devices=devices, threads=threads)
        else:
            checks = lcm.verify(src, tmp, schemes, devices=devices, size=npu["size"], threads=threads,
                                decoders=tuple(m.get("decoders", {"vae": 0})))
        report = {"kind": f"npu_{family}_vs_fp32_cpu", "target": "qnn-htp", "schemes": schemes, "default": default,
                  "reference": f"the fp32 {family} export on onnxruntime's CPU EP", "checks": checks,
                  "rewrites": npu["rewrites"], "calibration": npu["calibration"],
                  "ep": {d: {"provider": i.provider, "version": i.version, "detail": i.detail}
                         for d, i in eps.discover().items()},
                  "environment": environment(), "export_s": round(time.perf_counter() - t0, 1),
                  "note": "accuracy is reported, not gated; on x86-64 the QNN HTP is a simulator: its timings are "
                          "no speed claim, its placement and numerics are the NPU's"}
        write_json(tmp / "report.json", report)
        m["verify"] = {k: {kk: v.get(kk) for kk in ("min_mask_iou", "mean_mask_iou", "min_psnr", "top1_agreement",
                                                    "placement")
                           if kk in v} for k, v in checks.items()}
        m["files"] = file_table(tmp)
        write(tmp, m)
    _print_summary(cfg.out, family, checks)
    if cfg.add:
        model_id = cfg.model_id or f"{src_m.id or src.name}-npu"
        _common.install(cfg, cfg.out, model_id=model_id,
                        task={"sam": "segment", "lcm": "image", "llm-onnx": "chat"}[family], fmt="onnx",
                        license=(src_m.source or {}).get("license", "see source"),
                        source={"recipe": "npu", "from": str(src.absolute())}, description=HELP)
        print(f"npu: installed as {model_id!r}")
    return Path(cfg.out).absolute()


def _print_summary(out, family: str, checks: dict) -> None:
    from export.verify import format_table

    rows = []
    for key, c in checks.items():
        row = {"scheme@device": key}
        if family == "sam":
            row.update({"min mask IoU": c["min_mask_iou"], "mean mask IoU": c["mean_mask_iou"],
                        "emb rel err": c["max_embedding_rel_err"]})
        elif family == "llm-onnx":
            row.update({"top-1 agreement": c["top1_agreement"], "greedy answer same": c["greedy_same"]})
        else:
            row.update({"min PSNR dB": c["min_psnr"], "text emb rel err": c["text_embedding_rel_err"]})
        row["placement (npu/cpu nodes)"] = _placement_cell(c.get("placement", {}))
        rows.append(row)
    print(f"npu: wrote {out}")
    if rows:
        print(format_table(rows))


def _placement_cell(p: dict) -> str:
    parts = []
    for name, v in p.items():
        if isinstance(v, dict) and "device" not in v and v:     # sam decoder: per point count
            v = next(iter(v.values()))
        if isinstance(v, dict) and v.get("device") == "npu":
            parts.append(f"{name} {v.get('npu', 0)}/{v.get('cpu', 0)}")
        elif isinstance(v, dict) and v:
            parts.append(f"{name} cpu")
    return ", ".join(parts)


add_arguments = Config.add_arguments  # the registry contract: `edge-run export npu` flags
main = _common.entry_point(__name__, "npu")


if __name__ == "__main__":
    raise SystemExit(main())
