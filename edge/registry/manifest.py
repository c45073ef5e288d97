"""Deprecated: the dict view of ``edge-model.json`` for callers not yet on :mod:`edge.manifest`.

Everything here goes through edge.manifest (one reader, one set of checks); it is removed once the
last caller reads the typed manifest (InstalledModel.manifest / edge.manifest.read).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edge import manifest as _m


def parse_manifest(text: str | bytes, origin: str = _m.MANIFEST_FILE) -> dict[str, Any]:
    """The checked manifest as a dict; BadRequest naming ``origin`` and the field otherwise."""
    return _m.parse(text, origin).to_dict()


def read_manifest(path: Path, *, model_id: str = "") -> dict[str, Any]:
    """The checked manifest at ``path`` as a dict; {} when the model has none (single-file GGUF models)."""
    if not Path(path).is_file():
        return {}
    return _m.load(path, model_id=model_id or None).to_dict()


def load_bytes(manifest: dict[str, Any]) -> int | None:
    """RAM the manifest's own precision needs once loaded (multi-precision exports), if it says."""
    return _m.Manifest.from_dict(manifest).loaded_bytes() if manifest else None
