"""What an artifact's manifest (``edge-model.json``) says about its files' NPU readiness.

An NPU artifact (written by ``edge-run export npu``) carries an ``npu`` section::

    "npu": {"schema": 1, "target": "qnn-htp", "default_quant": "a16w8",
            "components": {"<file path relative to the folder>": {
                "role": "unet", "quant": "a16w8", "static": true, "device": "npu" | "cpu",
                "inputs": {"sample": [1, 4, 64, 64], ...},
                "adapter": null | "sam_low_res_decoder", "per_call_dims": {"num_points": 16},
                "provider_options": {...}, "shape_hint": "..."}}}

``device: cpu`` marks a component the artifact deliberately leaves on the CPU (e.g. LCM's img2img
encoder); strict NPU mode accepts it. Files not listed are not NPU-ready. The section's types are
edge.manifest.NpuSection / NpuComponent.
"""

from __future__ import annotations

import threading
from pathlib import Path

from edge import manifest as manifests
from edge.errors import EdgeError

_cache: dict[Path, tuple[tuple[int, int, int], manifests.Manifest]] = {}
_lock = threading.Lock()


def find_manifest(path: Path, depth: int = 2) -> tuple[Path, manifests.Manifest] | None:
    """The typed manifest of the artifact folder holding ``path`` (looked up ``depth`` folders up); None
    when there is none or it does not load (the store reports a broken manifest when the model loads).

    Each session a model opens asks for its file's entry, so a manifest is read once per change on disk
    (its size, mtime and inode key a small cache), not once per session.
    """
    folder = Path(path).resolve().parent
    for _ in range(depth):
        m = folder / manifests.MANIFEST_FILE
        try:
            st = m.stat()
        except OSError:
            folder = folder.parent
            continue
        stamp = (st.st_size, st.st_mtime_ns, st.st_ino)
        with _lock:
            hit = _cache.get(m)
        if hit is not None and hit[0] == stamp:
            return folder, hit[1]
        try:
            doc = manifests.load(m)
        except EdgeError:
            return None
        with _lock:
            _cache[m] = (stamp, doc)
        return folder, doc
    return None


def component_for(path: str | Path) -> dict | None:
    """The manifest's NPU entry for ``path`` as a dict (plus ``_root``, ``_rel``), or None when the file is
    not part of an NPU artifact."""
    found = find_manifest(Path(path))
    if found is None:
        return None
    folder, manifest = found
    if manifest.npu is None:
        return None
    try:
        rel = Path(path).resolve().relative_to(folder).as_posix()
    except ValueError:
        return None
    comp = manifest.npu.components.get(rel)
    return {**comp.to_dict(), "_root": str(folder), "_rel": rel} if comp is not None else None
