"""LCM (latent consistency, SD1.5-class) text-to-image -> ONNX components for edge/image.

Source: a diffusers LCM pipeline folder or hub id (e.g. SimianLuo/LCM_Dreamshaper_v7), or
``--random-init tiny|sd15``: the real architectures (CLIPTextModel, UNet2DConditionModel with
time_cond_proj_dim, AutoencoderKL, AutoencoderTiny) with seeded random weights and the real CLIP BPE
vocabulary from the open_clip_torch wheel.

Stages: 1. check -> 2. source (one module at a time, see export.lcm.sources.OnDemand) -> 3. export fp32 ONNX -> 4. quantize (int8 dynamic, fp16, QDQ static,
Winograd, int8-ov: NNCF int8 as OpenVINO IR) -> 5. verify every artifact against PyTorch and the final image against diffusers' pipeline ->
6. write tokenizer, report.json and edge-model.json, atomically (export.artifacts.ArtifactDir) -> 7. --add.
The work of each stage lives in :mod:`export.lcm`; this module is the order of the stages and the options.
"""

from __future__ import annotations

import contextlib
import functools
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from edge import manifest
from export.artifacts import REPORT, ArtifactDir, file_table, write_json
from export.lcm.precisions import DEFAULT_PRECISIONS, EXACT, MIN_PSNR, PRECISIONS
from export.lcm.sources import PRESETS, random_components  # noqa: F401 - tests/image/conftest.py, until it moves
from export.recipes import _common
from export.recipes._common import RecipeConfig, option, random_init_option, source_option

HELP = "latent-consistency text-to-image (LCM, SD1.5 class): text encoder, UNet, VAE, TAESD -> ONNX"


@dataclass
class Config(RecipeConfig):
    """The options of `edge-run export lcm` (each is also a flag)."""

    source: str | None = source_option("diffusers LCM folder or hub id (e.g. SimianLuo/LCM_Dreamshaper_v7)")
    random_init: str | None = random_init_option(PRESETS, "build the architecture with seeded random weights")
    revision: str | None = option("--revision", help="hub revision of SOURCE (pin it for reproducible exports)")
    out: Path | None = option("--out", type=Path, help="output folder (default: ./<model-id>)")
    model_id: str | None = option("--model-id", help="id for the manifest / models.lock (default from the source)")
    overwrite: bool = option("--overwrite", default=False, action="store_true", help="replace an existing --out")
    precisions: str = option("--precisions", default=DEFAULT_PRECISIONS,
                             help=f"comma list of {', '.join(PRECISIONS)} (default {DEFAULT_PRECISIONS})")
    default_precision: str | None = option(
        "--default-precision", help="precision the runtime loads (default: int8 if exported, else fp32)")
    taesd: str | None = option("--taesd", nargs="?", const="random",
                               help="add a TAESD fast decoder: a diffusers AutoencoderTiny folder / hub id, or "
                                    "'random' (default with --random-init)")
    no_taesd: bool = option("--no-taesd", default=False, action="store_true", help="do not add a TAESD decoder")
    seed: int = option("--seed", default=0, type=int, help="seed for --random-init weights and verification noise")
    winograd_size: int | None = option(
        "--winograd-size", type=int, help="image side at which the winograd precisions pick the convolutions to "
                                          "rewrite (default: the model's default size)")
    opset: int = option("--opset", default=17, type=int, help=None)
    verify_size: int | None = option("--verify-size", type=int,
                                     help="image side for verification (default 64 tiny, 256 otherwise)")
    verify_steps: int = option("--verify-steps", default=2, type=int, help="LCM steps for the verification image")
    threads: int = option("--threads", default=0, type=int, help="ORT/torch threads for verification (0 = all)")
    add: bool = option("--add", default=False, action="store_true",
                       help="install the result into the store ($EDGE_HOME/models) and append it to models.lock")
    no_progress: bool = option("--no-progress", default=False, action="store_true", help=None)


@dataclass
class Plan:
    """What stage 1 decides from the options."""

    precisions: list[str]
    default_precision: str
    taesd: str | None
    verify_side: int


def check(cfg: Config) -> Plan:
    """Stage 1: every option that can be checked without the source."""
    from edge.errors import BadRequest

    if bool(cfg.source) == bool(cfg.random_init):
        raise BadRequest("give exactly one of SOURCE (diffusers folder / hub id) or --random-init tiny|sd15.",
                         param="source")
    precisions = [p.strip() for p in cfg.precisions.split(",") if p.strip()]
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad or "fp32" not in precisions:
        raise BadRequest(f"`--precisions` {cfg.precisions!r} must list fp32 and any of {', '.join(PRECISIONS)}.",
                         param="precisions")
    default_precision = cfg.default_precision or ("int8" if "int8" in precisions else "fp32")
    if default_precision not in precisions:
        raise BadRequest(f"`--default-precision` {default_precision!r} is not among the exported precisions "
                         f"{precisions}.", param="default_precision")
    verify_side = cfg.verify_size or (64 if cfg.random_init == "tiny" else 256)
    if verify_side % 8:
        raise BadRequest(f"`--verify-size` must be a multiple of 8, got {verify_side}.", param="verify_size")
    if cfg.winograd_size is not None and (cfg.winograd_size <= 0 or cfg.winograd_size % 8):
        raise BadRequest(f"`--winograd-size` must be a positive multiple of 8 (an image side), got "
                         f"{cfg.winograd_size}; e.g. --winograd-size 512.", param="winograd_size")
    taesd = None if cfg.no_taesd else (cfg.taesd or ("random" if cfg.random_init else None))
    return Plan(precisions, default_precision, taesd, verify_side)


def run(cfg: Config) -> Path:
    """Export, quantize, verify, write. Returns the finished artifact folder.

    Memory: one PyTorch module at a time (export.lcm.sources.OnDemand), ONNX files moved and quantized with
    their weights streamed from disk, one onnxruntime session (or one precision's pipeline) at a time:
    the peak is about the largest component twice, not the whole model several times (report.json
    ``resources`` has each stage's seconds and peak RSS)."""
    cfg = _common.typed(Config, cfg)
    import torch
    from tqdm import tqdm

    from export.lcm import onnx_file, precisions as P, sources
    from export.lcm.calibrate import calibration_feeds
    from export.lcm.manifest import image_manifest
    from export.lcm.resources import StageMeter
    from export.lcm.sources import release_memory
    from export.lcm.tokenizer import write_tokenizer
    from export.lcm.verify import verify

    # 1. check options
    plan = check(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    threads = cfg.threads or torch.get_num_threads()
    model_id = cfg.model_id or sources.default_model_id(cfg.source, cfg.random_init)
    out = cfg.out or Path(model_id)
    stages = ["source", "export fp32"] + [f"quantize {p}" for p in plan.precisions if p != "fp32"] + ["verify", "write"]
    bar = tqdm(total=len(stages), desc="lcm export", unit="stage", disable=cfg.no_progress)
    meter = StageMeter()

    with ArtifactDir(out, overwrite=cfg.overwrite) as tmp, contextlib.ExitStack() as scratch_dir:
        # the PyTorch modules wait on disk beside the output (not in /tmp, often RAM) until they are needed
        scratch = Path(scratch_dir.enter_context(tempfile.TemporaryDirectory(
            prefix=f".{Path(out).name}.source.", suffix=".partial", dir=Path(out).absolute().parent)))

        # 2. source
        bar.set_postfix_str("source")
        with meter.stage("source"):
            if cfg.random_init:
                src = sources.random_to_disk(cfg.random_init, cfg.seed, scratch, with_taesd=plan.taesd is not None)
            else:
                src = sources.load_components(cfg.source, cfg.revision, plan.taesd, scratch)
        verify_side = plan.verify_side
        vae_scale = sources.vae_scale_factor(src)
        bar.update()

        # 3. export fp32, one component at a time
        bar.set_postfix_str("export fp32")
        write_tokenizer(tmp / "tokenizer", src.vocab, src.merges)
        (tmp / "fp32").mkdir()
        files: dict[str, dict[str, str]] = {"fp32": {}}
        for name in onnx_file.components(src):
            side = onnx_file.unet_trace_side(src) if name == "unet" else verify_side
            with meter.stage(f"export fp32 {name}"), src.using(onnx_file.PART[name]) as module:
                onnx_file.export_component(onnx_file.wrap(name, module), name,
                                           onnx_file.sample_inputs(src, name, side, seed=cfg.seed),
                                           tmp / "fp32" / f"{name}.onnx", cfg.opset)
            files["fp32"][name] = f"fp32/{name}.onnx"
        bar.update()

        # 4. quantize / rewrite
        winograd_side = cfg.winograd_size or int(src.config("unet").sample_size) * vae_scale
        calibration = functools.partial(calibration_feeds, src, tmp, files["fp32"], verify_side, cfg.verify_steps,
                                        threads)
        for p in sorted(plan.precisions, key=PRECISIONS.index):  # winograd before int8-winograd, which shares it
            if p == "fp32":
                continue
            bar.set_postfix_str(f"quantize {p}")
            (tmp / p).mkdir()
            files[p] = dict(files["fp32"])
            for name in P.QUANTIZED[p]:
                if name not in files["fp32"]:
                    continue
                if shared := P.shared_component(p, name, files):
                    files[p][name] = shared
                    continue
                with meter.stage(f"quantize {p} {name}"):
                    written = P.make_precision(p, name, tmp / files["fp32"][name], tmp / p / f"{name}.onnx",
                                               winograd_side=winograd_side, vae_scale=vae_scale,
                                               calibration=calibration)
                    release_memory()
                files[p][name] = Path(written).relative_to(tmp).as_posix()  # int8-ov: an OpenVINO IR (.xml)
            bar.update()

        # 5. verify
        bar.set_postfix_str("verify")
        report = verify(src, tmp, files, verify_side, cfg.verify_steps, cfg.seed, threads, meter=meter)
        report.update({"model_id": model_id, "source": src.info, "opset": cfg.opset,
                       "torch": torch.__version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
        for p in (p for p in EXACT if p in report["precisions"]):
            bad = [n for n, r in report["precisions"][p]["components"].items() if not r["ok"]]
            if bad or not report["precisions"][p]["image"]["ok"]:
                raise RuntimeError(f"{p} verification failed for {bad or ['image']}: see the numbers below\n"
                                   + json.dumps(report["precisions"][p], indent=1))
        for p in (p for p in MIN_PSNR if p in report["precisions"]):  # gated on the image only
            if not report["precisions"][p]["image"]["ok"]:
                raise RuntimeError(f"{p} verification failed: image PSNR {report['precisions'][p]['image']['psnr']:.1f} "
                                   f"dB vs diffusers' fp32 image, under the {MIN_PSNR[p]} dB it must reach\n"
                                   + json.dumps(report["precisions"][p], indent=1))
        bar.update()

        # 6. write manifest and report (the resources up to here: hashing the files for the manifest follows)
        bar.set_postfix_str("write")
        report["resources"] = meter.report()
        meter.close()
        write_json(tmp / REPORT, report)
        m = image_manifest(src, model_id, files, plan.default_precision, report)
        m.files = file_table(tmp)
        manifest.write(tmp, m)
        bar.update()
    bar.close()

    # 7. install into the store and pin in the user lock (hashes computed from the files)
    if cfg.add:
        _common.install(cfg, out, model_id=model_id, task="image", fmt="onnx",
                        license=src.info.get("license", "see source"),
                        source={"recipe": "lcm", **{k: v for k, v in src.info.items()
                                                    if isinstance(v, (str, int, float)) and k != "kind"}},
                        description=HELP)
    return Path(out).absolute()


add_arguments = Config.add_arguments  # the registry contract: `edge-run export lcm` flags
main = _common.entry_point(__name__, "lcm")


if __name__ == "__main__":
    raise SystemExit(main())
