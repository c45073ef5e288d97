"""What an artifact's manifest (``edge-model.json``) says about its files' NPU readiness.

An NPU artifact (written by ``edge-run export npu``) carries an ``npu`` section::

    "npu": {"schema": 1, "target": "qnn-htp", "default_quant": "a16w8",
            "components": {"<file path relative to the folder>": {
                "role": "unet", "quant": "a16w8", "static": true, "device": "npu" | "cpu",
                "inputs": {"sample": [1, 4, 64, 64], ...},
                "adapter": null | "sam_low_res_decoder", "per_call_dims": {"num_points": 16},
                "provider_options": {...}, "shape_hint": "..."}}}

``device: cpu`` marks a component the artifact deliberately leaves on the CPU (e.g. LCM's img2img
encoder); strict NPU mode accepts it. Files not listed are not NPU-ready.
"""

from __future__ import annotations

import json
from pathlib import Path

MANIFEST = "edge-model.json"


def find_manifest(path: Path, depth: int = 2) -> tuple[Path, dict] | None:
    """The manifest of the artifact folder holding ``path`` (looked up ``depth`` folders up)."""
    folder = Path(path).resolve().parent
    for _ in range(depth):
        m = folder / MANIFEST
        if m.is_file():
            try:
                return folder, json.loads(m.read_text())
            except (OSError, json.JSONDecodeError):
                return None
        folder = folder.parent
    return None


def component_for(path: str | Path) -> dict | None:
    """The manifest's NPU entry for ``path``, or None when the file is not part of an NPU artifact."""
    found = find_manifest(Path(path))
    if found is None:
        return None
    folder, manifest = found
    comps = (manifest.get("npu") or {}).get("components") or {}
    try:
        rel = Path(path).resolve().relative_to(folder).as_posix()
    except ValueError:
        return None
    comp = comps.get(rel)
    return {**comp, "_root": str(folder), "_rel": rel} if isinstance(comp, dict) else None


def npu_summary(manifest: dict) -> dict | None:
    npu = manifest.get("npu")
    return npu if isinstance(npu, dict) and npu.get("components") else None
