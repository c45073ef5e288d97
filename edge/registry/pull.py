"""`edge-run pull` for what models.lock cannot pin in advance: a hub GGUF by name, and the recipes.

* ``hf.co/OWNER/REPO[:QUANT|:FILE]`` and chat recipes (a curated hub GGUF): resolve the file at a commit,
  download and verify it (the store), then pin repo, commit, file, size and sha256 in the user lock.
* image / segment recipes: download the upstream checkpoint at its pinned revision, export it on this
  machine with the recipe's options (the export verifies every artifact against PyTorch), install the
  result and pin it in the user lock with the upstream commit and every upstream file's sha256
  (``upstream``), so a later pull downloads exactly the same checkpoint or refuses.

The export runs in its own process (``python -m edge.cli export ...``): the runtime never imports torch,
and the export's memory is returned to the system when it ends.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from edge.config import Settings
from edge.errors import BadRequest, DiskFull, DownloadError, EdgeError, IntegrityError, OfflineError
from edge.registry import hub, sources
from edge.registry.lock import Catalog, RecipeEntry, append_entry, parse_lock
from edge.registry.store import InstalledModel, Store, add_local_model

EXPORT_NEEDS = {"image": ("torch", "diffusers", "transformers", "onnx"),
                "segment": ("torch", "timm", "onnx", "mobile_sam")}
INSTALL_EXPORT = "pip install torch==2.14.1 torchvision==0.29.1 'edge-run[export]'"
Say = Callable[[str], None]


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _check_online(settings: Settings, what: str) -> None:
    if settings.offline:
        raise OfflineError(f"{what} is not installed and offline mode (EDGE_OFFLINE=1 / --offline) forbids "
                           f"downloading it. Run `edge-run pull {what}` with the network on.", param="model")


# -- hub GGUFs ------------------------------------------------------------------------------------
def pull_hub(settings: Settings, name: str, *, force: bool = False, say: Say = print) -> InstalledModel:
    """Pull ``name`` (hf.co/OWNER/REPO[:TAG]) as a chat model whose id is derived from the name.

    An already pinned name downloads its pinned commit and file (offline: nothing to ask the hub); a new
    one is resolved first. The lock entry is written only after the file verified."""
    ref = hub.parse_ref(name)
    pinned = Catalog(settings.user_lock).by_hub_ref(name)
    store = Store(settings)
    if pinned is not None and pinned.extra.get("hub"):
        return store.pull(pinned, force=force)
    _check_online(settings, str(ref))
    found = hub.resolve(ref, revision=None)
    say(f"{ref}: {found.file} at {found.commit[:12]}, {_gib(found.size)}, sha256 {found.sha256[:16]}...")
    return _install_gguf(settings, ref.model_id, ref, found, force=force)


def _install_gguf(settings: Settings, model_id: str, ref: hub.HubRef | str, found: hub.HubFile, *,
                  force: bool, description: str = "") -> InstalledModel:
    """Download + verify through the store with an in-memory entry, then pin it in the user lock."""
    import tomli_w

    table = hub.lock_entry(model_id, ref, found, description)
    entry = parse_lock(tomli_w.dumps({"model": [table]}), str(settings.user_lock))[0]
    model = Store(settings).pull(entry, force=force)  # a bad sha256 raises before anything is pinned
    append_entry(settings.user_lock, table)
    return model


# -- recipes --------------------------------------------------------------------------------------
def pull_recipe(settings: Settings, recipe: RecipeEntry, *, force: bool = False, say: Say = print
                ) -> InstalledModel:
    """Build ``recipe`` here: a hub GGUF is pinned and downloaded; an export recipe downloads its upstream
    checkpoint, exports, verifies and installs it. Already installed (and verified): nothing to do."""
    cat = Catalog(settings.user_lock)
    store = Store(settings)
    pinned = cat.entries.get(recipe.id)
    if pinned is not None and store.is_installed(pinned) and not force:
        return store.installed(pinned)
    if recipe.format == "gguf":
        if pinned is not None:
            return store.pull(pinned, force=force)
        _check_online(settings, recipe.id)
        ref = hub.HubRef(*recipe.source["repo"].split("/", 1), recipe.source.get("file") or recipe.source.get("quant"))
        found = hub.resolve(ref, revision=recipe.source.get("revision"))
        say(f"{recipe.id}: {ref} -> {found.file} at {found.commit[:12]}, {_gib(found.size)}")
        return _install_gguf(settings, recipe.id, ref, found, force=force, description=recipe.description)
    return _export_recipe(settings, recipe, pins=(pinned.extra.get("upstream") if pinned is not None else None),
                          say=say)


def _export_recipe(settings: Settings, recipe: RecipeEntry, *, pins: dict | None, say: Say) -> InstalledModel:
    # 1. can this machine do it: the export extra, the network, the disk
    missing = [m for m in EXPORT_NEEDS.get(recipe.task, ()) if not _importable(m)]
    if missing:
        raise BadRequest(f"`edge-run pull {recipe.id}` exports the model on this machine and needs the export extra "
                         f"(missing: {', '.join(missing)}). Install it with: {INSTALL_EXPORT}", param="model")
    _check_online(settings, recipe.id)
    work = settings.home / "cache" / "recipes" / recipe.id
    upstream_dir, staging = work / "upstream", work / "export"
    files = _upstream_files(recipe, pins)
    need = sum(f["size"] for f in files) + 2 * int(recipe.estimate.get("artifact_gb", 0) * 2**30)
    free = shutil.disk_usage(_existing_parent(settings.home)).free
    est = recipe.estimate
    say(f"{recipe.id}: downloads {_gib(sum(f['size'] for f in files))} ({len(files)} files) from {recipe.upstream}"
        + (f" at {pins['revision'][:12]} (pinned)" if pins and pins.get("revision") else " (pinned)" if pins else "")
        + f", then runs `{recipe.export_command}`"
        + (f": about {est['export_minutes']:g} min on 2 cores, peak RAM about {est['peak_ram_gb']:g} GB"
           if "export_minutes" in est and "peak_ram_gb" in est else "")
        + f". Needs {_gib(need)} free disk ({_gib(free)} free).")
    if free < need:
        raise DiskFull(f"pulling {recipe.id} needs {_gib(need)} of free disk under {settings.home}, {_gib(free)} is "
                       "free. Free some space or set EDGE_HOME to a larger disk.", param="model")
    t0 = time.monotonic()
    # 2. the upstream checkpoint, verified against the listing (first pull) or the pins (later pulls)
    say(f"[1/3] download {recipe.upstream}")
    source_path, upstream = _download_upstream(recipe, files, pins, upstream_dir)
    # 3. export in its own process (torch stays out of the runtime; its memory goes back when it ends)
    say(f"[2/3] export: {recipe.export_command}")
    argv = [sys.executable, "-m", "edge.cli", "export", recipe.export[0], str(source_path), *recipe.export[1:],
            "--out", str(staging), "--overwrite"]
    code = subprocess.call(argv, env={**os.environ, "EDGE_HOME": str(settings.home)})
    if code != 0 or not staging.is_dir():
        raise EdgeError(f"the export of {recipe.id} failed (exit {code}; its message is above). The downloaded "
                        f"checkpoint stays in {upstream_dir}: run `edge-run pull {recipe.id}` again after fixing it.")
    # 4. install and pin (artifact hashes from the files, upstream pins beside them)
    say(f"[3/3] install {recipe.id}")
    add_local_model(settings, staging, model_id=recipe.id, task=recipe.task, fmt=recipe.format,
                    license=recipe.license, source={"recipe": recipe.id},
                    description=recipe.description or f"built by `edge-run pull {recipe.id}`",
                    extra={"upstream": upstream, "export": list(recipe.export)})
    shutil.rmtree(work, ignore_errors=True)
    model = Store(settings).installed(Catalog(settings.user_lock).get(recipe.id))
    say(f"{recipe.id}: exported and verified in {time.monotonic() - t0:.0f} s")
    return model


def _importable(module: str) -> bool:
    """True when ``module`` is installed (found without importing it: torch takes seconds to import)."""
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False


def _existing_parent(p: Path) -> Path:
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _upstream_files(recipe: RecipeEntry, pins: dict | None) -> list[dict[str, Any]]:
    """[{name, size, sha256 | git_sha1}] of the upstream checkpoint: from the pins, else asked from the source."""
    if pins:
        return [dict(f) for f in pins["files"]]
    src = recipe.source
    if src["kind"] == "https":
        name = src["url"].rstrip("/").rsplit("/", 1)[-1].split("?")[0] or "checkpoint"
        return [{"name": name, "size": _content_length(src["url"])}]
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    try:
        info = HfApi(endpoint=src.get("endpoint")).model_info(src["repo"], revision=src.get("revision"),
                                                              files_metadata=True)
    except (HfHubHTTPError, OSError) as e:
        raise DownloadError(f"cannot read {recipe.upstream} from the hub ({str(e).splitlines()[0][:200]}). Check your "
                            f"network or HF_ENDPOINT, then run `edge-run pull {recipe.id}` again.") from None
    wanted = src.get("files")
    out = []
    for s in info.siblings or []:
        if wanted is not None and s.rfilename not in wanted:
            continue
        row: dict[str, Any] = {"name": s.rfilename, "size": int(s.lfs.size if s.lfs else s.size or 0)}
        if s.lfs is not None:
            row["sha256"] = s.lfs.sha256
        elif s.blob_id:
            row["git_sha1"] = s.blob_id
        out.append(row)
    absent = sorted(set(wanted or ()) - {r["name"] for r in out})
    if absent or not out:
        raise DownloadError(f"{recipe.upstream} lacks {', '.join(absent) or 'every file'} the recipe needs; check "
                            "`files` of the recipe in models.lock.")
    return [{**r, "commit": info.sha} for r in out]


def _content_length(url: str) -> int:
    import urllib.request

    req = urllib.request.Request(url, method="HEAD", headers={"User-Agent": sources.USER_AGENT})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return int(r.headers.get("Content-Length") or 0)
    except (OSError, ValueError):
        return 0


def _git_blob_sha1(path: Path) -> str:
    h = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        while b := f.read(sources.CHUNK):
            h.update(b)
    return h.hexdigest()


def _download_upstream(recipe: RecipeEntry, files: list[dict[str, Any]], pins: dict | None, dest: Path
                       ) -> tuple[Path, dict[str, Any]]:
    """Download every upstream file into ``dest`` (resuming), check each against its expected hash, and
    return the path to export from and the pins to record (commit, and every file's sha256 and size)."""
    src = recipe.source
    dest.mkdir(parents=True, exist_ok=True)
    commit = (pins or {}).get("revision") or (files[0].get("commit") if files else None)
    got: list[dict[str, Any]] = []
    for f in files:
        target = dest / f["name"]
        if not sources._inside(target, dest):  # noqa: SLF001 - a listing naming ../ must not write outside
            raise DownloadError(f"{recipe.upstream} names the file {f['name']!r}, which leaves the download folder.")
        target.parent.mkdir(parents=True, exist_ok=True)
        if src["kind"] == "https":
            partial = target.with_name(target.name + ".partial")
            if not target.exists():
                sources.http_download(src["url"], partial, desc=f"{recipe.id}/{f['name']}")
                os.replace(partial, target)
        elif not target.exists():
            sources.fetch_hf({"repo": src["repo"], "file": f["name"], "revision": commit,
                              "endpoint": src.get("endpoint")}, target, desc=f"{recipe.id}/{f['name']}")
        sha = sources.sha256_file(target)
        expected, kind = f.get("sha256"), "sha256"
        if expected is None and f.get("git_sha1"):
            expected, actual, kind = f["git_sha1"], _git_blob_sha1(target), "git blob sha1"
        else:
            actual = sha
        if expected and actual != expected:
            target.unlink()
            why = "pinned in your models.lock at the first pull" if pins else "the hub lists"
            raise IntegrityError(f"{recipe.id}: upstream file {f['name']!r} has {kind} {actual}, but {why} {expected}. "
                                 f"The file was deleted; run `edge-run pull {recipe.id}` again.", param="model")
        got.append({"name": f["name"], "sha256": sha, "size": target.stat().st_size})
    upstream = {"kind": src["kind"], **({"repo": src["repo"], "revision": commit} if src["kind"] == "hf"
                                        else {"url": src["url"]}), "files": got}
    source_path = dest / files[0]["name"] if src["kind"] == "https" else dest
    return source_path, upstream


def pull(settings: Settings, name: str, *, force: bool = False, say: Say = print) -> InstalledModel:
    """What `edge-run pull NAME` does: a hub name, a recipe, or a pinned model id."""
    if hub.is_hub_ref(name):
        return pull_hub(settings, name, force=force, say=say)
    cat = Catalog(settings.user_lock)
    if name in cat.recipes:
        return pull_recipe(settings, cat.recipes[name], force=force, say=say)
    return Store(settings).pull(cat.get(name), force=force)
