"""The EP-context cache: compiled NPU graphs kept in the store so the next load skips compilation.

QNN compiles a graph at session creation (seconds to minutes). onnxruntime can save the compiled
form as an "EP-context" model (``ep.context_enable``): a small ONNX file whose EPContext nodes point
at the EP's binary. We keep those in ``$EDGE_HOME/cache/npu/<key>/`` where the key hashes everything
that makes a compiled graph valid: the model's sha256, onnxruntime's and the EP package's versions,
the provider options, the fallback policy and any fixed dimensions.

Each entry has ``meta.json`` with the sha256 of every file it holds; an entry whose files do not
match (a corrupted or truncated cache) or that fails to load is deleted and rebuilt, never fatal.
Failed compiles (crash, unsupported operators) are cached too, so a model that crashes the compiler
is not retried on every load until the model, the EP or the options change.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

META = "meta.json"
SCHEMA = 1
_hash_memo: dict[tuple[str, int, int], str] = {}
_memo_lock = threading.Lock()


def file_sha256(path: str | Path, *, known: str | None = None) -> str:
    """sha256 of a file, memoised by (path, size, mtime) for this process."""
    p = Path(path)
    st = p.stat()
    memo_key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    with _memo_lock:
        if memo_key in _hash_memo:
            return _hash_memo[memo_key]
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    digest = h.hexdigest()
    with _memo_lock:
        _hash_memo[memo_key] = digest
    return digest


def model_digest(path: str | Path) -> str:
    """sha256 over an ONNX file and its external-data file (``<name>.data``) if any."""
    p = Path(path)
    parts = [file_sha256(p)]
    data = p.with_name(p.name + ".data")
    if data.exists():
        parts.append(file_sha256(data))
    return parts[0] if len(parts) == 1 else hashlib.sha256("".join(parts).encode()).hexdigest()


def cache_key(model_sha: str, *, ep: str, ep_version: str, ort_version: str, options: dict[str, Any],
              strict: bool, free_dims: dict[str, int] | None = None) -> str:
    blob = json.dumps({"schema": SCHEMA, "model": model_sha, "ep": ep, "ep_version": ep_version,
                       "ort": ort_version, "options": {k: str(v) for k, v in sorted(options.items())},
                       "strict": bool(strict), "dims": {k: int(v) for k, v in sorted((free_dims or {}).items())}},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


class ContextCache:
    """Entries under ``root``; one folder per key."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def entry(self, key: str) -> Path:
        return self.root / key

    def lookup(self, key: str) -> dict | None:
        """The entry's meta (with ``dir``) if it is complete and intact; a damaged entry is removed."""
        d = self.entry(key)
        meta_path = d / META
        if not meta_path.exists():
            if d.exists():
                self.remove(key)
            return None
        try:
            meta = json.loads(meta_path.read_text())
            for name, digest in meta.get("files", {}).items():
                if file_sha256(d / name) != digest:
                    raise ValueError(f"{name} does not match its recorded sha256")
        except (OSError, ValueError, json.JSONDecodeError):
            self.remove(key)
            return None
        meta["dir"] = str(d)
        return meta

    def new_workdir(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".compile-", dir=self.root))

    def commit(self, key: str, workdir: Path, meta: dict) -> dict:
        """Record ``workdir``'s files with their hashes and move it into place atomically."""
        files = {p.name: file_sha256(p) for p in sorted(workdir.iterdir()) if p.is_file() and p.name != META}
        meta = {**meta, "schema": SCHEMA, "key": key, "files": files, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        (workdir / META).write_text(json.dumps(meta, indent=1))
        dest = self.entry(key)
        if dest.exists():
            self.remove(key)
        try:
            os.replace(workdir, dest)
        except OSError:      # another process committed the same key first: keep theirs
            shutil.rmtree(workdir, ignore_errors=True)
        return {**meta, "dir": str(dest)}

    def remove(self, key: str) -> None:
        d = self.entry(key)
        trash = d.with_name(f".{d.name}.trash-{os.getpid()}-{threading.get_ident()}")
        try:
            os.replace(d, trash)
        except OSError:
            return
        shutil.rmtree(trash, ignore_errors=True)

    def entries(self) -> list[dict]:
        out = []
        if self.root.exists():
            for d in sorted(self.root.iterdir()):
                if d.is_dir() and not d.name.startswith(".") and (d / META).exists():
                    try:
                        out.append({**json.loads((d / META).read_text()), "dir": str(d)})
                    except (OSError, json.JSONDecodeError):
                        continue
        return out
