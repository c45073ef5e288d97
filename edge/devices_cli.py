"""`edge-run devices [--json]`: the execution providers found here (CPU, NPU plugins such as
onnxruntime-qnn, built-in EPs) and, for every installed model, what each ONNX component would run on
with the current --device (and whether its compiled NPU graph is already cached)."""

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
    """The ONNX files an installed model loads (NPU components first, from the manifest)."""
    files = model.manifest.onnx_files() or [n for n in model.files if n.endswith(".onnx")]
    return [Path(model.dir) / f for f in dict.fromkeys(files)]


def collect(settings) -> dict:
    from edge import devices
    from edge.registry import Catalog, Store

    out = devices.describe(settings.device)
    store = Store(settings)
    rows = []
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
        for path in model_components(model):
            p = devices.plan(path, settings.device)
            rows.append({"model": entry.id, "task": entry.task,
                         "component": path.relative_to(model.dir).as_posix(), **p})
    out["models"] = rows
    return out


def run(args: argparse.Namespace) -> int:
    """Print (or --json) the providers and each installed model's placement; loads no model."""
    from edge.config import Settings

    info = collect(Settings.from_args(args))
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    print(f"device setting: {info['requested']}    NPU: {info['npu'] or 'none'}")
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
    return 0
