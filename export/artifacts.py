"""Atomic artifact folders: everything is written into a temp folder beside the destination and
renamed into place only after verification passed, so no half-written artifact is ever left.

A run killed outright (kill -9, power loss) leaves only its temp folder, never ``out``; the next run
for the same ``out`` deletes such leftovers first. A disk that fills up is a DiskFull error naming the
folder, with the temp folder removed."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from edge.manifest import MANIFEST_FILE as MANIFEST  # the name is defined once, in edge.manifest

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
        for stale in parent.glob(f".{self.out.name}.*.partial"):  # left by a killed run
            shutil.rmtree(stale, ignore_errors=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.", suffix=".partial", dir=parent))
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self.tmp is not None
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            if _disk_full(exc):
                from edge.errors import DiskFull

                raise DiskFull(f"the disk holding {str(self.out.parent)!r} is full; nothing was written to "
                               f"{str(self.out)!r}. Free some space or choose another --out, then export again.",
                               param="out") from None
            return
        if self.out.exists():
            old = self.out.with_name(f".{self.out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(self.out, old)
            os.replace(self.tmp, self.out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.tmp, self.out)


def _disk_full(exc: BaseException | None) -> bool:
    """True when ``exc`` (or what it was raised from) is ENOSPC; libraries often wrap the OSError."""
    import errno

    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(exc):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def file_table(folder: Path) -> list[dict]:
    """name, sha256, size of every regular file in ``folder`` (recursively), for manifests and models.lock;
    the manifest itself is left out (it cannot carry its own hash)."""
    rows = []
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p != folder / MANIFEST:
            rows.append({"name": p.relative_to(folder).as_posix(), "sha256": sha256_file(p), "size": p.stat().st_size})
    return rows
