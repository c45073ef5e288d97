"""`edge-run devices [--json]`: what this machine is (RAM -- a cgroup limit counts --, cores, CPU flags),
the device profile chosen and why, every setting with where it came from (flag, env, profile, default),
the execution providers found here (CPU, NPU plugins such as onnxruntime-qnn, built-in EPs) and, for
every installed model, what each ONNX component would run on with the current --device (and whether its
compiled NPU graph is already cached), and the precision / decoder an image model loads with."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("devices", help="execution devices found here and what each installed model would use",
                              description="List execution providers (CPU, NPU, ...) and, per installed model and "
                                          "ONNX component, the device --device would pick.")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def model_components(model) -> list[Path]:
    """The ONNX files (and OpenVINO IR) an installed model loads (NPU components first, from the manifest)."""
    files = model.manifest.onnx_files() or [n for n in model.files if n.endswith((".onnx", ".xml"))]  # .xml: int8-ov IR
    return [Path(model.dir) / f for f in dict.fromkeys(files)]


def is_sam_decoder(model, path: Path) -> bool:
    """The SAM decoder of a segmentation model: it answers clicks, and its mask logits are cut at 0 (so
    OpenVINO keeps it f32, edge.segment.predictor)."""
    from edge.manifest import ImageManifest

    return not isinstance(model.manifest, ImageManifest) and path.stem == "decoder"


def component_backend(model, path: Path, device: str):
    """The backend the engine would open ``path`` (a file of the installed ``model``) on: what
    edge.devices.cpu_backend picks for its precision -- the image precision folder it sits in, or the SAM
    manifest's encoder precision (the decoder answers clicks)."""
    from edge.devices import cpu_backend
    from edge.manifest import ImageManifest
    from edge.segment.engine import encoder_precision

    manifest = model.manifest
    if isinstance(manifest, ImageManifest):
        rel = path.relative_to(model.dir).as_posix()
        precision = next((p for p, files in manifest.precisions.items() if rel in files.values()), None)
        return cpu_backend(device, precision)
    if is_sam_decoder(model, path):
        return cpu_backend(device, "fp32", click=True)
    return cpu_backend(device, encoder_precision(manifest, path))


def profile_report(settings) -> dict:
    """The detected facts, the profile and why, and each setting's value, source and reason."""
    from dataclasses import fields

    from edge.config import device_facts

    choice = settings.profile_choice
    rows = []
    for f in fields(settings):
        value = getattr(settings, f.name)
        rows.append({"setting": f.name, "env": f.metadata["env"], "value": str(value) if value is not None else None,
                     "source": settings.sources.get(f.name, "default"), "why": settings.reasons.get(f.name, "")})
    return {"detected": device_facts().to_dict(),
            "profile": {"name": choice.name if choice else settings.profile, "picked_by":
                        choice.picked_by if choice else "named", "why": choice.reason if choice else "",
                        "summary": choice.profile.summary if choice else ""},
            "settings": rows}


def collect(settings) -> dict:
    from edge import devices
    from edge.image.options import image_options
    from edge.registry import Catalog, Store

    out = profile_report(settings)
    out.update(devices.describe(settings.device))
    store = Store(settings)
    rows: list[dict] = []
    images: list[dict] = []  # what each image model loads with (the profile's choices or the model's)
    for entry in Catalog(settings.user_lock):
        if not store.is_installed(entry):
            continue
        if entry.format != "onnx":
            rows.append({"model": entry.id, "task": entry.task, "component": "-", "device": "cpu",
                         "why": f"{entry.format} runs on llama.cpp (CPU)"})
            continue
        try:
            model = store.installed(entry)
        except Exception as e:  # noqa: BLE001 - one broken model must not hide the others
            rows.append({"model": entry.id, "task": entry.task, "component": "-", "device": "error", "why": str(e)})
            continue
        if entry.task == "image":
            o = image_options(model.manifest, precision=settings.image_precision, decoder=settings.image_decoder,
                              device=settings.device)
            images.append({"model": entry.id, "precision": o.precision, "precision_why": o.precision_why,
                           "decoder": o.decoder, "decoder_why": o.decoder_why})
        for path in model_components(model):
            backend = component_backend(model, path, settings.device)
            p = devices.plan(path, backend.device, keep_f32=is_sam_decoder(model, path))
            if backend.device != settings.device or (settings.device == "auto" and p["device"] == "cpu"):
                p["why"] = f"{backend.why}; {p['why']}"  # the backend auto picked, and why
            rows.append({"model": entry.id, "task": entry.task,
                         "component": path.relative_to(model.dir).as_posix(), **p})
    out["models"] = rows
    out["image_models"] = images
    return out


def run(args: argparse.Namespace) -> int:
    """Print (or --json) the providers and each installed model's placement; loads no model."""
    from edge.config import Settings

    info = collect(Settings.from_args(args))
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    d, prof = info["detected"], info["profile"]
    print(f"detected: {d['ram_bytes'] / 2**30:.1f} GiB RAM ({d['ram_source']}), {d['cores']} cores, {d['machine']}"
          + (f", {d['board']}" if d["board"] else "") + (", Android" if d["android"] else ""))
    print(f"          CPU flags: {' '.join(d['flags']) or 'none found'}")
    print(f"profile:  {prof['name']} ({prof['picked_by']}: {prof['why']}) -- {prof['summary']}")
    print("\nsettings (source: flag > env > profile > default)")
    w = max(len(r["setting"]) for r in info["settings"])
    for r in info["settings"]:
        value = r["value"] if r["value"] is not None else "(the model's)"
        if r["setting"] == "ram_budget":
            value = f"{int(r['value']) / 2**30:.2f} GiB"
        print(f"  {r['setting']:<{w}}  {value:<22} {r['source']:<8} {r['why']}")
    print(f"\ndevice setting: {info['requested']}    NPU: {info['npu'] or 'none'}")
    print("\nexecution providers")
    for p in info["providers"]:
        print(f"  {p['device']:<9} {p['provider']:<28} {p['kind']:<11} {p['version']:<8} {p['source']}"
              + (f"  ({p['detail']})" if p["detail"] else ""))
    for dev, why in info["missing"].items():
        print(f"  {dev:<9} not available: {why}")
    if info["models"]:
        print("\ninstalled models")
        w = max(len(r["model"]) for r in info["models"])
        c = max(len(r["component"]) for r in info["models"])
        for r in info["models"]:
            print(f"  {r['model']:<{w}}  {r['component']:<{c}}  {r['device']:<6} {r['why']}")
    else:
        print("\nno installed models")
    for r in info["image_models"]:
        print(f"\nimage model {r['model']}: precision {r['precision']} ({r['precision_why']}); "
              f"decoder {r['decoder']} ({r['decoder_why']})")
    return 0
