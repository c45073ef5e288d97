"""The local model store: $EDGE_HOME/models/<id>/<file>. Pull, verify, remove.

Verification hashes each file once and records (size, mtime, ctime, inode, sha256) in a marker; later
loads re-hash only when the file changed on disk. ctime is in the stamp because a file rewritten in
place can get its old mtime back (``touch -d``, ``cp -p``) but never its old ctime. A file that fails
verification is never used.

Ids name folders, so every path built from an id goes through :func:`check_model_id` and must stay
inside ``models_dir``. A disk that fills up during a pull leaves no partial file behind (DiskFull).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge import manifest as manifests
from edge.config import Settings
from edge.errors import BadRequest, DiskFull, IntegrityError, ModelNotInstalled, OfflineError
from edge.registry import sources
from edge.registry.lock import Catalog, FileEntry, ModelEntry, append_entry, check_model_id

MARKERS = ".verified"


@dataclass
class InstalledModel:
    """A model whose files are present and verified, with its typed manifest (read once, at install check;
    a model without ``edge-model.json``, a GGUF file, gets its task's defaults)."""

    id: str
    task: str
    format: str
    dir: Path
    files: dict[str, Path]
    manifest: manifests.Manifest = field(default_factory=manifests.Manifest)
    entry: ModelEntry | None = None

    @property
    def size(self) -> int:
        return sum(p.stat().st_size for p in self.files.values())


class Store:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.root = settings.models_dir

    # -- paths and status -------------------------------------------------------------------
    def model_dir(self, model_id: str) -> Path:
        """$EDGE_HOME/models/<id>; refuses ids that are not ids (BadRequest) before building a path."""
        d = self.root / check_model_id(model_id)
        if not _inside(d, self.root):
            raise BadRequest(f"model id {model_id!r} would leave the model store; use a plain id.", param="model")
        return d

    def file_path(self, entry: ModelEntry, fe: FileEntry) -> Path:
        d = self.model_dir(entry.id)
        p = d / fe.name
        if not _inside(p, d):
            raise BadRequest(f"model {entry.id!r}: file name {fe.name!r} leaves the model folder.", param="models.lock")
        return p

    @staticmethod
    def stamp(path: Path, sha256: str) -> dict[str, Any]:
        """What the verified marker records: a file whose stamp changed is hashed again."""
        st = path.stat()
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "ino": st.st_ino,
                "sha256": sha256}

    def _marker(self, entry: ModelEntry, fe: FileEntry) -> Path:
        return self.model_dir(entry.id) / MARKERS / (fe.name.replace("/", "__") + ".json")

    def is_installed(self, entry: ModelEntry) -> bool:
        """All files present with the pinned size (cheap; full hashes are checked on load)."""
        for fe in entry.files:
            p = self.file_path(entry, fe)
            if not p.is_file() or p.stat().st_size != fe.size:
                return False
        return True

    # -- verification -----------------------------------------------------------------------
    def verify_file(self, entry: ModelEntry, fe: FileEntry, path: Path | None = None) -> None:
        """Raise IntegrityError unless ``path`` (default: the stored file) matches the lock."""
        path = path or self.file_path(entry, fe)
        try:
            st = path.stat()
        except FileNotFoundError:
            raise ModelNotInstalled(f"model {entry.id!r}: file {fe.name!r} is missing from the store. Run "
                                    f"`edge-run pull {entry.id}` to fetch it again.", param="model") from None
        fix = f"Run `edge-run pull {entry.id} --force` to fetch it again."
        if st.st_size != fe.size:
            raise IntegrityError(f"model {entry.id!r}: file {fe.name!r} is {st.st_size} bytes, models.lock expects "
                                 f"{fe.size} (truncated or wrong file). {fix}", param="model")
        marker = self._marker(entry, fe)
        stamp = self.stamp(path, fe.sha256)
        if path == self.file_path(entry, fe) and marker.exists():
            try:
                if json.loads(marker.read_text()) == stamp:
                    return
            except ValueError:
                pass
        actual = sources.sha256_file(path)
        if actual != fe.sha256:
            raise IntegrityError(f"model {entry.id!r}: file {fe.name!r}: sha256 is {actual}, models.lock expects "
                                 f"{fe.sha256}. The file is corrupted or not the pinned one and will not be "
                                 f"loaded. {fix}", param="model")
        if path == self.file_path(entry, fe):
            marker.parent.mkdir(parents=True, exist_ok=True)
            tmp = marker.with_name(marker.name + f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(stamp))
            os.replace(tmp, marker)  # a kill mid-write leaves the old marker or none, never half of one

    def installed(self, entry: ModelEntry) -> InstalledModel:
        """The verified model, or ModelNotInstalled saying how to get it."""
        if not self.is_installed(entry):
            missing = [fe.name for fe in entry.files if not self.file_path(entry, fe).is_file()]
            what = f"missing {', '.join(missing)}" if missing else "files have the wrong size"
            raise ModelNotInstalled(f"model {entry.id!r} is not installed ({what} in {self.model_dir(entry.id)}). "
                                    f"Run `edge-run pull {entry.id}` while online.", param="model")
        for fe in entry.files:
            self.verify_file(entry, fe)
        d = self.model_dir(entry.id)
        return InstalledModel(id=entry.id, task=entry.task, format=entry.format, dir=d,
                              files={fe.name: self.file_path(entry, fe) for fe in entry.files},
                              manifest=read_manifest(d, entry), entry=entry)

    # -- pull / rm --------------------------------------------------------------------------
    def pull(self, entry: ModelEntry, *, force: bool = False) -> InstalledModel:
        """Fetch every missing or bad file of ``entry``, verify, rename into place."""
        d = self.model_dir(entry.id)
        d.mkdir(parents=True, exist_ok=True)
        for fe in entry.files:
            final = self.file_path(entry, fe)
            if final.exists() and not force:
                try:
                    self.verify_file(entry, fe)
                    continue
                except IntegrityError:
                    pass
            if sources.is_network(fe.source) and self.settings.offline:
                raise OfflineError(f"model {entry.id!r} file {fe.name!r} is not installed and offline mode "
                                   "(EDGE_OFFLINE=1 / --offline) forbids downloading it. Run "
                                   f"`edge-run pull {entry.id}` with the network on.", param="model")
            final.parent.mkdir(parents=True, exist_ok=True)
            partial = final.with_name(final.name + ".partial")
            if force:
                partial.unlink(missing_ok=True)
            base = Path(entry.origin).parent if entry.origin.endswith(".lock") and os.sep in entry.origin else None
            try:
                sources.fetch(fe.source, partial, cache=Path(self.settings.home) / "cache" / "downloads",
                              desc=f"{entry.id}/{fe.name}", base=base)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                partial.unlink(missing_ok=True)
                raise DiskFull(f"the disk holding {self.settings.home} is full: pulling {entry.id}/{fe.name} "
                               f"needs {fe.size / 2**20:.1f} MiB. Free some space (or set EDGE_HOME to a larger "
                               f"disk) and run `edge-run pull {entry.id}` again.", param="model") from None
            try:
                self.verify_file(entry, fe, partial)
            except IntegrityError:
                partial.unlink(missing_ok=True)
                raise
            os.replace(partial, final)
            self._marker(entry, fe).unlink(missing_ok=True)
            self.verify_file(entry, fe)  # writes the marker for the final path
        return self.installed(entry)

    def rm(self, entry: ModelEntry) -> bool:
        d = self.model_dir(entry.id)  # checks the id: never a folder outside the store
        if not d.exists():
            return False
        shutil.rmtree(d)
        return True


def read_manifest(folder: Path, entry: ModelEntry) -> manifests.Manifest:
    """The checked manifest of an installed model; its task's defaults when it has none."""
    if not (folder / manifests.MANIFEST_FILE).is_file():
        return manifests.Manifest.default(entry.task, entry.format)
    return manifests.read(folder, model_id=entry.id, task=entry.task if entry.task in manifests.TASKS else None)


def _inside(path: Path, root: Path) -> bool:
    """True when ``path`` (resolved, following links) lies strictly inside ``root``."""
    p, r = path.resolve(), root.resolve()  # once each: resolving walks every component (runs per request)
    return p != r and p.is_relative_to(r)


def add_local_model(settings: Settings, folder: str | Path, *, model_id: str, task: str, fmt: str,
                    license: str = "unknown", source: dict[str, Any] | None = None,
                    description: str = "", extra: dict[str, Any] | None = None) -> ModelEntry:
    """Copy an exported artifact folder into the store and pin it in the user lock ($EDGE_HOME/models.lock).

    Every file's sha256 is computed here from the file itself; ``extra`` adds tables to the entry (e.g. the
    ``upstream`` pins `edge-run pull` records for a recipe).
    """
    folder = Path(folder)
    store = Store(settings)
    dest = store.model_dir(model_id)  # checks the id before anything is copied
    tmp = dest.with_name(f".{model_id}.adding")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        shutil.copytree(folder, tmp, ignore=shutil.ignore_patterns(MARKERS, "*.partial"))
    except (OSError, shutil.Error) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if "No space left" in str(e) or getattr(e, "errno", None) == errno.ENOSPC:
            raise DiskFull(f"the disk holding {settings.home} is full: adding {model_id!r} to the store needs "
                           "more space. Free some and run the export with --add again.", param="model") from None
        raise
    files = []
    for p in sorted(tmp.rglob("*")):
        if p.is_file():
            rel = p.relative_to(tmp).as_posix()
            files.append({"name": rel, "sha256": sources.sha256_file(p), "size": p.stat().st_size,
                          "source": {"kind": "local", "path": str((folder / rel).absolute()), **(source or {})}})
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    entry = {"id": model_id, "task": task, "format": fmt, "license": license, "description": description,
             **(extra or {}), "files": files}
    append_entry(settings.user_lock, entry)
    return Catalog(settings.user_lock).get(model_id)
