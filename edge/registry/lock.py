"""models.lock: parsing, lookup with close-id suggestions, and appending entries.

Two locks are merged: the one shipped with edge-run (repo root models.lock, packaged as
edge/models.lock) and the user's ($EDGE_HOME/models.lock, written by `edge-run export --add`).
"""

from __future__ import annotations

import difflib
import functools
import os
import re
import tempfile
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from edge.errors import BadRequest, ModelNotFound
from edge.registry.hub import is_hub_ref

TASKS = ("chat", "image", "segment")
FORMATS = ("gguf", "onnx")
SOURCE_KINDS = ("pypi", "hf", "https", "file", "local")
MODEL_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}")
"""What a model id may be: it names a folder under $EDGE_HOME/models, so no '/', no '..', no upper case."""


def check_model_id(model_id: object, param: str = "model") -> str:
    """Return ``model_id`` if it is a valid id (``[a-z0-9][a-z0-9._-]*``, at most 128 characters and not
    only dots), else raise BadRequest naming the value and the rule. Every path built from an id
    (the store, `rm`, `export --add --id`) goes through this."""
    if not isinstance(model_id, str) or not MODEL_ID.fullmatch(model_id) or ".." in model_id:
        shown = model_id if not isinstance(model_id, str) else model_id[:80]
        raise BadRequest(f"model id {shown!r} is not valid: ids are 1-128 characters of a-z, 0-9, '.', '_' and "
                         "'-', start with a letter or digit and contain no '..' (e.g. 'my-model-q4').", param=param)
    return model_id


@dataclass(frozen=True)
class FileEntry:
    """One pinned file: its name inside the model folder, sha256, size and where to get it."""

    name: str
    sha256: str
    size: int
    source: dict[str, Any]


@dataclass(frozen=True)
class ModelEntry:
    id: str
    task: str
    format: str
    license: str
    files: tuple[FileEntry, ...]
    description: str = ""
    default: bool = False
    origin: str = ""  # which lock file it came from
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


@dataclass(frozen=True)
class RecipeEntry:
    """A model `edge-run pull` builds on the user's machine: no file hashes until it is pulled.

    A chat recipe names a hub GGUF (``source = {kind = "hf", repo, quant | file}``); `pull` pins the resolved
    commit, file, size and sha256 in the user lock. An image/segment recipe names an upstream checkpoint
    (``hf`` repo + revision + files, or an ``https`` url) and the ``export`` arguments (recipe name first);
    `pull` downloads it, runs the export, verifies, and pins the result together with the upstream
    commit and every upstream file's sha256 (``upstream`` in the user lock)."""

    id: str
    task: str
    format: str
    license: str
    source: dict[str, Any]
    export: tuple[str, ...] = ()
    description: str = ""
    estimate: dict[str, float] = field(default_factory=dict, compare=False)

    @property
    def export_command(self) -> str:
        """The export `pull` runs, as a person would type it (SOURCE = the downloaded checkpoint)."""
        return " ".join(["edge-run export", self.export[0], "SOURCE", *self.export[1:]]) if self.export else ""

    @property
    def upstream(self) -> str:
        """Where the recipe's files come from, for messages: repo@revision or the url."""
        s = self.source
        return s.get("url") or f"hf.co/{s.get('repo')}" + (f"@{s['revision']}" if s.get("revision") else "")


def _bad(origin: str, msg: str) -> BadRequest:
    return BadRequest(f"{origin}: {msg}", param="models.lock")


def _parse_file(origin: str, mid: str, raw: Any) -> FileEntry:
    if not isinstance(raw, dict):
        raise _bad(origin, f"model {mid!r}: every [[model.files]] entry must be a table.")
    for key in ("name", "sha256", "size", "source"):
        if key not in raw:
            raise _bad(origin, f"model {mid!r}: a [[model.files]] entry lacks {key!r}.")
    if not isinstance(raw["source"], dict):
        raise _bad(origin, f"model {mid!r} file {raw['name']!r}: `source` must be a table, e.g. "
                           "{ kind = \"file\", path = \"model.gguf\" }.")
    if isinstance(raw["size"], bool) or not isinstance(raw["size"], int) or raw["size"] < 0:
        raise _bad(origin, f"model {mid!r} file {raw['name']!r}: size {raw['size']!r} must be a byte count (an "
                           "integer >= 0).")
    if not isinstance(raw["name"], str) or not raw["name"]:
        raise _bad(origin, f"model {mid!r}: file name {raw['name']!r} must be a non-empty string.")
    sha = str(raw["sha256"]).lower()
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise _bad(origin, f"model {mid!r} file {raw['name']!r}: sha256 {raw['sha256']!r} is not 64 hex digits.")
    src = dict(raw["source"])
    if src.get("kind") not in SOURCE_KINDS:
        raise _bad(origin, f"model {mid!r} file {raw['name']!r}: source kind {src.get('kind')!r} is not one of "
                           f"{', '.join(SOURCE_KINDS)}.")
    name = str(raw["name"])
    if name.startswith("/") or "\\" in name or "\0" in name or ".." in Path(name).parts:
        raise _bad(origin, f"model {mid!r}: file name {name!r} must be a relative path inside the model folder.")
    return FileEntry(name=name, sha256=sha, size=int(raw["size"]), source=src)


def _load(text: str, origin: str) -> dict:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise _bad(origin, f"not valid TOML ({e}).") from None


def _parse_recipe(origin: str, raw: dict) -> RecipeEntry:
    missing = [k for k in ("id", "task", "format", "source") if k not in raw]
    if missing:
        raise _bad(origin, f"recipe {raw.get('id')!r} lacks {', '.join(missing)}.")
    try:
        rid = check_model_id(raw["id"])
    except BadRequest as e:
        raise _bad(origin, e.message) from None
    src, export = raw["source"], raw.get("export", [])
    if raw["task"] not in TASKS or raw["format"] not in FORMATS:
        raise _bad(origin, f"recipe {rid!r}: task must be one of {', '.join(TASKS)} and format one of "
                           f"{', '.join(FORMATS)}.")
    if not isinstance(src, dict) or src.get("kind") not in ("hf", "https"):
        raise _bad(origin, f"recipe {rid!r}: `source` must be a table of kind \"hf\" (repo = ...) or \"https\" "
                           "(url = ...).")
    if src["kind"] == "hf" and not isinstance(src.get("repo"), str):
        raise _bad(origin, f"recipe {rid!r}: an hf source needs `repo` (OWNER/NAME).")
    if src["kind"] == "https" and not str(src.get("url", "")).startswith(("https://", "http://")):
        raise _bad(origin, f"recipe {rid!r}: an https source needs `url`.")
    if not isinstance(export, list) or not all(isinstance(a, str) for a in export):
        raise _bad(origin, f"recipe {rid!r}: `export` must be a list of strings: the export recipe's name and its "
                           "options, e.g. [\"lcm\", \"--precisions\", \"fp32,int8\"].")
    if raw["format"] == "onnx" and not export:
        raise _bad(origin, f"recipe {rid!r}: an onnx recipe needs `export` (how `pull` builds it).")
    if raw["format"] == "gguf" and (export or src["kind"] != "hf"):
        raise _bad(origin, f"recipe {rid!r}: a gguf recipe is a hub GGUF (source kind \"hf\", no `export`).")
    estimate = raw.get("estimate", {})
    if not isinstance(estimate, dict) or not all(isinstance(v, (int, float)) for v in estimate.values()):
        raise _bad(origin, f"recipe {rid!r}: `estimate` must be a table of numbers.")
    return RecipeEntry(id=rid, task=raw["task"], format=raw["format"], license=str(raw.get("license", "unknown")),
                       source=dict(src), export=tuple(export), description=str(raw.get("description", "")),
                       estimate=dict(estimate))


def parse_recipes(text: str, origin: str = "models.lock") -> list[RecipeEntry]:
    recipes = _load(text, origin).get("recipe", [])
    if not isinstance(recipes, list) or not all(isinstance(r, dict) for r in recipes):
        raise _bad(origin, "`recipe` must be an array of tables ([[recipe]]).")
    return [_parse_recipe(origin, raw) for raw in recipes]


def parse_lock(text: str, origin: str = "models.lock") -> list[ModelEntry]:
    """Parse a models.lock document into entries; malformed entries raise BadRequest naming them."""
    doc = _load(text, origin)
    out = []
    models = doc.get("model", [])
    if not isinstance(models, list):
        raise _bad(origin, "`model` must be an array of tables ([[model]]).")
    for raw in models:
        if not isinstance(raw, dict):
            raise _bad(origin, "every [[model]] entry must be a table.")
        mid = raw.get("id")
        if not mid:
            raise _bad(origin, "a [[model]] entry has no id.")
        try:
            check_model_id(mid)
        except BadRequest as e:
            raise _bad(origin, e.message) from None
        if raw.get("task") not in TASKS:
            raise _bad(origin, f"model {mid!r}: task {raw.get('task')!r} is not one of {', '.join(TASKS)}.")
        if raw.get("format") not in FORMATS:
            raise _bad(origin, f"model {mid!r}: format {raw.get('format')!r} is not one of {', '.join(FORMATS)}.")
        raw_files = raw.get("files", [])
        if not isinstance(raw_files, list):
            raise _bad(origin, f"model {mid!r}: `files` must be an array of tables ([[model.files]]).")
        files = tuple(_parse_file(origin, mid, f) for f in raw_files)
        if not files:
            raise _bad(origin, f"model {mid!r} lists no files.")
        known = {"id", "task", "format", "license", "files", "description", "default"}
        out.append(ModelEntry(id=mid, task=raw["task"], format=raw["format"], license=str(raw.get("license", "unknown")),
                              files=files, description=str(raw.get("description", "")), default=bool(raw.get("default")),
                              origin=origin, extra={k: v for k, v in raw.items() if k not in known}))
    return out


def bundled_lock_text() -> str:
    """The models.lock shipped with edge-run (EDGE_LOCK overrides it, for tests and forks)."""
    override = os.environ.get("EDGE_LOCK")
    if override:
        return Path(override).read_text()
    return resources.files("edge").joinpath("models.lock").read_text()


@functools.lru_cache(maxsize=16)
def _parsed_lock(text: str, origin: str) -> tuple[ModelEntry, ...]:
    """parse_lock, once per document text: a Catalog is made for every request (a TOML parse and its checks
    were ~3 ms of each; the entries are frozen). A malformed lock raises every time (errors are not cached)."""
    return tuple(parse_lock(text, origin))


@functools.lru_cache(maxsize=4)
def _parsed_recipes(text: str, origin: str) -> tuple[RecipeEntry, ...]:
    return tuple(parse_recipes(text, origin))


class Catalog:
    """All known models: bundled lock + user lock (user entries may not shadow bundled ids)."""

    def __init__(self, user_lock: Path | None = None):
        self.entries: dict[str, ModelEntry] = {}
        bundled = bundled_lock_text()
        for e in _parsed_lock(bundled, "models.lock"):
            self.entries[e.id] = e
        self.recipes: dict[str, RecipeEntry] = {r.id: r for r in _parsed_recipes(bundled, "models.lock")}
        if user_lock is not None and user_lock.exists():
            for e in _parsed_lock(user_lock.read_text(), str(user_lock)):
                self.entries.setdefault(e.id, e)

    def get(self, model_id: str) -> ModelEntry:
        """The entry for ``model_id``, or ModelNotFound suggesting close ids."""
        if model_id in self.entries:
            return self.entries[model_id]
        if model_id in self.recipes:
            from edge.errors import ModelNotInstalled

            r = self.recipes[model_id]
            how = "downloaded from" if r.format == "gguf" else "built on this machine from"
            raise ModelNotInstalled(f"model {model_id!r} is not installed ({how} {r.upstream}). Run: edge-run pull "
                                    f"{model_id}", param="model")
        if is_hub_ref(model_id):
            hub = self.by_hub_ref(model_id)
            if hub is not None:
                return hub
            from edge.errors import ModelNotInstalled

            raise ModelNotInstalled(f"{model_id} has not been pulled here. Run: edge-run pull {model_id}",
                                    param="model")
        close = difflib.get_close_matches(model_id, list(self.entries) + list(self.recipes), n=3, cutoff=0.4)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ModelNotFound(f"unknown model {model_id!r}.{hint} See `edge-run models` for the list.", param="model")

    def by_hub_ref(self, name: str) -> ModelEntry | None:
        """The pinned entry a hub name (hf.co/OWNER/REPO[:TAG]) was pulled as, if any."""
        from edge.registry.hub import parse_ref

        ref = parse_ref(name)
        for e in self.entries.values():
            if e.extra.get("hub") == str(ref) or e.id == ref.model_id:
                return e
        return None

    def recipe_for(self, task: str) -> RecipeEntry | None:
        """The first recipe of ``task`` (what `pull` offers when no such model is installed)."""
        return next((r for r in self.recipes.values() if r.task == task), None)

    def default_for(self, task: str) -> ModelEntry | None:
        cands = [e for e in self.entries.values() if e.task == task]
        for e in cands:
            if e.default:
                return e
        return cands[0] if cands else None

    def __iter__(self):
        return iter(self.entries.values())


def entry_to_toml(entry: dict[str, Any]) -> str:
    """One [[model]] table as TOML text (for appending to a lock)."""
    import tomli_w

    return tomli_w.dumps({"model": [entry]})


def append_entry(lock_path: Path, entry: dict[str, Any]) -> None:
    """Add or replace ``entry`` (a dict in models.lock's shape) in ``lock_path``, atomically."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    import tomli_w

    doc: dict[str, Any] = {"version": 1, "model": []}
    if lock_path.exists():
        doc = tomllib.loads(lock_path.read_text())
        doc.setdefault("model", [])
    doc["model"] = [m for m in doc["model"] if m.get("id") != entry["id"]] + [entry]
    parse_lock(tomli_w.dumps(doc), str(lock_path))  # validate before writing
    fd, tmp = tempfile.mkstemp(dir=lock_path.parent, prefix=".models.lock.")
    with os.fdopen(fd, "w") as f:
        f.write("# Models added on this machine by `edge-run export --add`. sha256s computed here.\n")
        f.write(tomli_w.dumps(doc))
    os.replace(tmp, lock_path)
