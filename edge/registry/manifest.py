"""Reading ``edge-model.json`` (an export's manifest) in one checked place.

The runtime reads a few common fields itself (``task``, ``precision``, ``load_bytes``, ``version``);
workload engines read their own sections. This module makes sure the document is a JSON object and
that the common fields have the types the runtime relies on, so a damaged or hostile manifest gives
a BadRequest naming the file and the field instead of a TypeError deep inside a load.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from edge.errors import BadRequest

MANIFEST = "edge-model.json"
MAX_BYTES = 4 << 20
"""A manifest is a few KiB; anything this large is not one."""
TASKS = ("chat", "image", "segment")


def _bad(origin: str, msg: str) -> BadRequest:
    return BadRequest(f"{origin}: {msg} Re-export the model (edge-run export ... --add) to rewrite it.",
                      param=MANIFEST)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_manifest(text: str | bytes, origin: str = MANIFEST) -> dict[str, Any]:
    """The manifest as a dict, with its common fields checked; BadRequest naming ``origin`` otherwise."""
    if len(text) > MAX_BYTES:
        raise _bad(origin, f"is {len(text):,} bytes, over the {MAX_BYTES:,} a manifest may have.")
    try:
        doc = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise _bad(origin, f"is not valid JSON ({e.__class__.__name__}).") from None
    if not isinstance(doc, dict):
        raise _bad(origin, f"must be a JSON object, got {type(doc).__name__}.")
    if "version" in doc and (isinstance(doc["version"], bool) or not isinstance(doc["version"], int)
                             or doc["version"] < 1):
        raise _bad(origin, f"`version` must be an integer >= 1, got {doc['version']!r}.")
    if "task" in doc and doc["task"] not in TASKS:
        raise _bad(origin, f"`task` must be one of {', '.join(TASKS)}, got {doc['task']!r}.")
    if "precision" in doc and not isinstance(doc["precision"], str):
        raise _bad(origin, f"`precision` must be a string, got {doc['precision']!r}.")
    lb = doc.get("load_bytes")
    if lb is not None:
        if not isinstance(lb, dict):
            raise _bad(origin, f"`load_bytes` must map precisions to byte counts, got {type(lb).__name__}.")
        for k, v in lb.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise _bad(origin, f"`load_bytes.{k}` must be a byte count >= 0, got {v!r}.")
    for key in ("precisions", "decoders", "unet", "vae", "npu"):
        if key in doc and not isinstance(doc[key], dict):
            raise _bad(origin, f"`{key}` must be a JSON object, got {type(doc[key]).__name__}.")
    return doc


def read_manifest(path: Path, *, model_id: str = "") -> dict[str, Any]:
    """The checked manifest at ``path``; {} when the model has none (single-file GGUF models)."""
    if not path.is_file():
        return {}
    origin = f"model {model_id!r} {MANIFEST}" if model_id else str(path)
    return parse_manifest(path.read_bytes(), origin)


def load_bytes(manifest: dict[str, Any]) -> int | None:
    """RAM the manifest's own precision needs once loaded (multi-precision exports), if it says."""
    lb = manifest.get("load_bytes") or {}
    v = lb.get(manifest.get("precision")) if isinstance(manifest.get("precision"), str) else None
    return int(v) if isinstance(v, (int, float)) and v > 0 else None
