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

import argparse
import json
import time
from pathlib import Path
from typing import Any

HELP = ("fp32 ONNX export (sam, lcm, llm-onnx) -> QDQ static-shape NPU artifact (QNN HTP), with placement and "
        "accuracy report")
FAMILIES = ("sam", "lcm", "llm-onnx")


def _add(parser: argparse.ArgumentParser, *flags: str, **kw: Any) -> None:
    if any(f in parser._option_string_actions for f in flags):  # noqa: SLF001 - shared flags (--out ...)
        return
    parser.add_argument(*flags, **kw)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from export.npu.quant import SCHEMES

    _add(parser, "source", help="an fp32 export folder (edge-model.json inside), from `edge-run export sam|lcm`")
    _add(parser, "--out", "-o", required=True, help="output folder (written atomically)")
    _add(parser, "--overwrite", action="store_true", help="replace an existing --out")
    _add(parser, "--quant", default="a16w8,a8w8",
         help=f"comma list of QDQ schemes ({', '.join(SCHEMES)}); the first is the default the runtime loads")
    _add(parser, "--size", type=int, default=None, help="lcm: the static image side (default: the model's)")
    _add(parser, "--context", type=int, default=None, help="llm-onnx: the static context (past) length (default 256)")
    _add(parser, "--calib-steps", type=int, default=2, help="lcm: LCM steps per calibration prompt")
    _add(parser, "--calib-limit", type=int, default=8, help="at most this many calibration images (sam) / prompts (lcm)")
    _add(parser, "--calib-images", default=None, help="sam: folder of calibration images (default: generated "
                                                       "shapes + scikit-image photos)")
    _add(parser, "--gelu", choices=("native", "tanh"), default="native",
         help="exact GELU as one Gelu node (QNN HTP runs it natively) or as its tanh approximation")
    _add(parser, "--sam-decoder-quant", default="a16w8",
         help="sam: scheme of the decoder body in every variant ('same' = the variant's own); default a16w8 "
              "(8-bit activations lose the masks)")
    _add(parser, "--verify-devices", default="cpu,auto",
         help="where to verify each scheme: cpu (QDQ on the CPU EP), auto/npu (on the NPU EP when installed); "
              "'none' skips verification")
    _add(parser, "--verify-images", type=int, default=1, help="sam: held-out images to verify on")
    _add(parser, "--verify-cases", type=int, default=6, help="sam: prompt cases per image (1..6)")
    _add(parser, "--add", action="store_true", help="install into the store ($EDGE_HOME/models) and models.lock")
    _add(parser, "--id", dest="model_id", default=None, help="model id for --add (default <source id>-npu)")


def run(args: argparse.Namespace) -> Path:
    from edge.errors import BadRequest
    from edge.npu import eps
    from export.artifacts import MANIFEST, ArtifactDir, file_table, write_json
    from export.npu import chat, lcm, sam
    from export.npu.quant import SCHEMES
    from export.verify import environment

    # 1. check inputs
    src = Path(args.source or "")
    if not args.source or not (src / MANIFEST).is_file():
        raise BadRequest(f"`source` {args.source!r} is not an export folder (no {MANIFEST}); export one first with "
                         "`edge-run export sam|lcm ... --out FOLDER`.", param="source")
    src_manifest = json.loads((src / MANIFEST).read_text())
    family = src_manifest.get("recipe")
    if family not in FAMILIES:
        raise BadRequest(f"`source` {str(src)!r} was made by recipe {family!r}; the NPU conversion takes "
                         f"{', '.join(FAMILIES)} exports.", param="source")
    if family == "sam" and src_manifest.get("precision", "fp32") != "fp32":
        raise BadRequest(f"`source` is a {src_manifest.get('precision')} MobileSAM export; the NPU conversion needs "
                         "the fp32 one (`edge-run export sam ... --precision fp32`).", param="source")
    if family == "llm-onnx" and src_manifest.get("precision", "fp32") != "fp32":
        raise BadRequest(f"`source` is a {src_manifest.get('precision')} ONNX chat export; the NPU conversion needs the "
                         "fp32 one (`edge-run export llm-onnx ... --quant fp32`).", param="source")
    if family == "lcm" and "fp32" not in src_manifest.get("precisions", {}):
        raise BadRequest("`source` LCM export has no fp32 precision; export with --precisions fp32,...", param="source")
    schemes = [s.strip() for s in args.quant.split(",") if s.strip()]
    bad = [s for s in schemes if s not in SCHEMES]
    if getattr(args, "sam_decoder_quant", "same") not in (*SCHEMES, "same"):
        bad.append(args.sam_decoder_quant)
    if not schemes or bad:
        raise BadRequest(f"`--quant` {args.quant!r} must list schemes from {', '.join(SCHEMES)}.", param="quant")
    devices = [] if args.verify_devices.strip() == "none" else [d.strip() for d in args.verify_devices.split(",")]
    if any(d not in ("cpu", "auto", "npu") for d in devices):
        raise BadRequest(f"`--verify-devices` {args.verify_devices!r}: use cpu, auto, npu or none.", param="verify_devices")
    if eps.npu_device() is None:
        devices = [d for d in devices if d == "cpu"]
    threads = _threads(args)
    default = schemes[0]
    t0 = time.perf_counter()

    with ArtifactDir(args.out, overwrite=args.overwrite) as tmp:
        # 2.-3. rewrite, make static, calibrate and quantize
        if family == "sam":
            npu = sam.convert(src, tmp, schemes, default, calib_images=args.calib_images, threads=threads,
                              calib_limit=args.calib_limit,
                              decoder_quant=None if args.sam_decoder_quant == "same" else args.sam_decoder_quant,
                              gelu=args.gelu)
            m = sam.manifest(src_manifest, npu, default)
        elif family == "llm-onnx":
            npu = chat.convert(src, tmp, schemes, default, context=args.context, threads=threads,
                               calib_limit=args.calib_limit, gelu=args.gelu)
            m = chat.manifest(src_manifest, npu, default)
        else:
            npu = lcm.convert(src, tmp, schemes, default, size=args.size, steps=args.calib_steps, threads=threads,
                              calib_limit=args.calib_limit,
                              gelu=args.gelu)
            m = lcm.manifest(src_manifest, npu, default)
        # 4. manifest (edge.devices reads its npu section)
        m["npu"] = {"schema": 1, "target": "qnn-htp", "default_quant": default, "schemes": schemes,
                    "components": npu["components"]}
        m["source"] = {**(src_manifest.get("source") or {}), "npu_from": str(src.absolute())}
        write_json(tmp / MANIFEST, m)
        # 5. verify
        if family == "sam":
            checks = sam.verify(src, tmp, schemes, default, devices=devices, images=args.verify_images,
                                cases=args.verify_cases, threads=threads)
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
        write_json(tmp / MANIFEST, m)
    _print_summary(args.out, family, checks)
    if args.add:
        from edge.cli import settings_from_args
        from edge.registry import add_local_model

        model_id = args.model_id or f"{src_manifest.get('id') or src.name}-npu"
        add_local_model(settings_from_args(args), args.out, model_id=model_id,
                        task={"sam": "segment", "lcm": "image", "llm-onnx": "chat"}[family], fmt="onnx",
                        license=(src_manifest.get("source") or {}).get("license", "see source"),
                        source={"recipe": "npu", "from": str(src.absolute())}, description=HELP)
        print(f"npu: installed as {model_id!r}")
    return Path(args.out).absolute()


def _threads(args) -> int:
    try:
        from edge.cli import settings_from_args

        return settings_from_args(args).threads
    except Exception:  # noqa: BLE001 - called without the CLI's settings flags
        return 2


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


def main(argv: list[str] | None = None) -> int:
    """``python -m export.recipes.npu SRC --out OUT ...`` (the same as ``edge-run export npu``)."""
    from edge.cli import add_settings_flags
    from edge.errors import EdgeError

    parser = argparse.ArgumentParser(prog="python -m export.recipes.npu", description=HELP)
    add_arguments(parser)
    add_settings_flags(parser)
    args = parser.parse_args(argv)
    try:
        run(args)
    except EdgeError as e:
        print(f"npu: error: {e.message}")
        return e.exit_code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
