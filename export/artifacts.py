"""Atomic artifact folders: everything is written into a temp folder beside the destination and
renamed into place only after verification passed, so no half-written artifact is ever left."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

MANIFEST = "edge-model.json"
REPORT = "report.json"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


class ArtifactDir:
    """Context manager: ``with ArtifactDir(out) as tmp: ...write files into tmp...``.

    On success the temp folder replaces ``out`` (an existing ``out`` is replaced only when
    ``overwrite``); on any exception it is deleted and ``out`` is untouched.
    """

    def __init__(self, out: str | Path, *, overwrite: bool = False):
        self.out = Path(out).absolute()
        self.overwrite = overwrite
        self.tmp: Path | None = None

    def __enter__(self) -> Path:
        from edge.errors import BadRequest

        parent = self.out.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            if not os.access(parent, os.W_OK):
                raise PermissionError(parent)
        except (PermissionError, OSError) as e:
            raise BadRequest(f"output folder {str(parent)!r} is not writable ({e.__class__.__name__}). "
                             "Choose another --out.", param="out") from None
        if self.out.exists() and not self.overwrite:
            raise BadRequest(f"output {str(self.out)!r} already exists. Remove it or pass --overwrite.",
                             param="out")
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.", suffix=".partial", dir=parent))
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self.tmp is not None
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        if self.out.exists():
            old = self.out.with_name(f".{self.out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(self.out, old)
            os.replace(self.tmp, self.out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.tmp, self.out)


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def file_table(folder: Path) -> list[dict]:
    """name, sha256, size of every regular file in ``folder`` (recursively), for manifests and models.lock."""
    rows = []
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            rows.append({"name": p.relative_to(folder).as_posix(), "sha256": sha256_file(p), "size": p.stat().st_size})
    return rows
