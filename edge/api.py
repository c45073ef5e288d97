"""The Python API: ``Runtime`` — what an app (a Raspberry Pi program, the CLI, the server) imports.

    from edge.api import Runtime
    with Runtime(threads=4, ram_budget="2G") as rt:
        for piece in rt.chat([{"role": "user", "content": "Hi!"}], stream=True):
            print(piece, end="", flush=True)

Thread-safe: every call goes through the one shared scheduler.
"""

from __future__ import annotations

import importlib
import logging
import threading
from typing import Any

from edge.chat.api import ChatAPI
from edge.config import Settings, _parse_bytes
from edge.engines import engine_class
from edge.errors import BadRequest, EdgeError, IntegrityError, ModelLoadError, ModelNotInstalled, check_range
from edge.jobs import JobSpec
from edge.registry import Catalog, InstalledModel, Store
from edge.scheduler import JobHandle, Scheduler

log = logging.getLogger("edge.api")


def _optional_mixins() -> list[type]:
    """Workload API mixins that exist in this install (edge/<workload>/api.py)."""
    out = []
    for module, name in (("edge.image.api", "ImageAPI"), ("edge.segment.api", "SegmentAPI")):
        try:
            out.append(getattr(importlib.import_module(module), name))
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
    return out


class RuntimeCore:
    """Settings, model catalog and store, and the shared scheduler."""

    def __init__(self, *, home: str | None = None, ram_budget: int | str | None = None, threads: int | None = None,
                 device: str | None = None, offline: bool | None = None, keep_alive: float | None = None,
                 max_queue: int | None = None, chat_slots: int | None = None, ctx: int | None = None,
                 auto_pull: bool = True, policy: str | None = None, settings: Settings | None = None):
        if isinstance(ram_budget, str):
            try:
                ram_budget = _parse_bytes(ram_budget)
            except ValueError:
                raise BadRequest(f"`ram_budget` {ram_budget!r} is not a size; use e.g. '2G' or '512M'.",
                                 param="ram_budget") from None
        self.settings = settings or Settings.from_env(home=home, ram_budget=ram_budget, threads=threads,
                                                      device=device, offline=offline, keep_alive=keep_alive,
                                                      max_queue=max_queue, chat_slots=chat_slots, ctx=ctx,
                                                      scheduler=policy)
        self.auto_pull = auto_pull
        self.store = Store(self.settings)
        self._pull_lock = threading.Lock()  # guards the per-model locks below, never held across a download
        self._pull_locks: dict[str, threading.Lock] = {}
        self._stamps: dict[str, dict[str, dict]] = {}  # model id -> file name -> stat stamp taken at load
        self.scheduler = Scheduler(loader=self._load_engine, estimate=self._estimate, threads=self.settings.threads,
                                   ram_budget=self.settings.ram_budget, max_queue=self.settings.max_queue,
                                   keep_alive=self.settings.keep_alive, policy=self.settings.scheduler)

    # -- models ---------------------------------------------------------------------------
    @property
    def catalog(self) -> Catalog:
        return Catalog(self.settings.user_lock)

    def resolve_model(self, model: str | None, *, task: str) -> str:
        """The model id to use for ``task``: the given one (checked) or the task's default."""
        cat = self.catalog
        if model is None:
            entry = cat.default_for(task)
            if entry is None:
                raise ModelNotInstalled(f"no {task} model is known. Export one with `edge-run export ... --add` "
                                        "or add it to models.lock.", param="model")
        else:
            entry = cat.get(model)
        if entry.task != task:
            raise BadRequest(f"model {entry.id!r} is a {entry.task} model, not a {task} model.", param="model")
        return entry.id

    def _model_lock(self, model_id: str) -> threading.Lock:
        with self._pull_lock:
            return self._pull_locks.setdefault(model_id, threading.Lock())

    def ensure(self, model_id: str) -> InstalledModel:
        """Make sure ``model_id`` is installed and verified, pulling it when allowed (``auto_pull``;
        `edge-run serve` allows it only with --allow-pull). An installed model never waits for another
        model's download: the lock taken is this model's own."""
        entry = self.catalog.get(model_id)
        self.check_loaded(model_id)  # a loaded model whose file changed is unloaded first (IntegrityError)
        if self.store.is_installed(entry) or not self.auto_pull:
            return self.store.installed(entry)  # ModelNotInstalled names `edge-run pull ID` when absent
        with self._model_lock(model_id):
            if self.store.is_installed(entry):
                return self.store.installed(entry)
            return self.store.pull(entry)

    def pull(self, model_id: str, *, force: bool = False) -> InstalledModel:
        entry = self.catalog.get(model_id)
        with self._model_lock(model_id):
            return self.store.pull(entry, force=force)

    def check_loaded(self, model_id: str) -> None:
        """If ``model_id`` is loaded, confirm its files are still the ones it was loaded from (a size and
        stat check, no hashing). A file truncated, replaced or deleted under a loaded model is caught
        here, before a job touches the mapped weights (a truncated mmap is SIGBUS): the model is
        unloaded and the caller gets an IntegrityError naming it and the fix."""
        stamps = self._stamps.get(model_id)
        if not stamps or model_id not in {m["id"] for m in self.scheduler.loaded()}:
            return
        entry = self.catalog.get(model_id)
        for fe in entry.files:
            want = stamps.get(fe.name)
            path = self.store.file_path(entry, fe)
            try:
                now = self.store.stamp(path, fe.sha256)
            except OSError:
                now = None
            # size, mtime and inode: a hard link or chmod elsewhere changes ctime without touching the bytes
            same = now is not None and want is not None and all(now[k] == want[k] for k in ("size", "mtime_ns", "ino"))
            if want is not None and not same:
                # unloaded now if idle; otherwise new jobs keep being refused here until it is
                if self.scheduler.unload(model_id):
                    self._stamps.pop(model_id, None)
                what = "was deleted" if now is None else "changed on disk"
                raise IntegrityError(f"model {model_id!r}: file {fe.name!r} {what} while the model was loaded; "
                                     f"it is unloaded (or will be once its running jobs end). Run `edge-run pull "
                                     f"{model_id} --force` to restore it, then retry.", param="model")

    def _estimate(self, model_id: str) -> int:
        from edge.registry.manifest import load_bytes, read_manifest

        entry = self.catalog.get(model_id)
        size = entry.size
        # multi-precision exports: only the loaded precision's files count
        load = load_bytes(read_manifest(self.store.model_dir(model_id) / "edge-model.json", model_id=model_id))
        if load:
            size = load
        if entry.task == "chat":
            size += 64 << 20  # KV cache + compute buffers of a small model at the default context
        return int(size * 1.1)

    def _load_engine(self, model_id: str, threads: int) -> Any:
        model = self.ensure(model_id)
        cls = engine_class(model.task, model.format)
        extra: dict[str, Any] = {"ram_budget": self.settings.ram_budget}
        if model.task == "chat":
            extra = {"slots": self.settings.chat_slots, "n_ctx": self.settings.ctx}
        stamps = {fe.name: self.store.stamp(model.files[fe.name], fe.sha256)
                  for fe in (model.entry.files if model.entry else ())}
        try:
            engine = cls.load(model, threads=threads, device=self.settings.device, **extra)
        except EdgeError:
            raise
        except Exception as e:  # the library's words (and the file's path) go to the log, not to a client
            log.exception("loading model %s failed", model_id)
            raise ModelLoadError(f"model {model_id!r} could not be loaded ({e.__class__.__name__}); its files pass "
                                 f"their checksums, so this build of its engine cannot read them. Run `edge-run "
                                 f"pull {model_id} --force`, or re-export it with this edge-run version; the "
                                 "server log has the details.", param="model") from None
        self._stamps[model_id] = stamps
        return engine

    # -- scheduler ------------------------------------------------------------------------
    def submit(self, spec: JobSpec) -> JobHandle:
        """Every door's jobs pass here: keep_alive is checked (NaN would mean never unloaded) and a loaded
        model's files are confirmed unchanged before the job may touch them."""
        if spec.keep_alive is not None:
            check_range("keep_alive", spec.keep_alive, -1, 10_000_000,
                        "Give seconds (e.g. 300), 0 to unload at once, or -1 to keep the model loaded.")
        self.check_loaded(spec.model_id)
        return self.scheduler.submit(spec)

    def pin(self, model_id: str, pinned: bool = True) -> None:
        """Keep ``model_id`` loaded once loaded: never evicted for space or by keep-alive."""
        self.scheduler.pin(self.catalog.get(model_id).id, pinned)

    def ps(self) -> list[dict[str, Any]]:
        """Loaded models with their RAM footprint, running jobs and idle time."""
        return self.scheduler.loaded()

    def close(self) -> None:
        """Cancel running jobs and unload every model (native handles are freed now)."""
        self.scheduler.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Runtime(ChatAPI, *_optional_mixins(), RuntimeCore):
    """edge-run's Python API: chat (and image / segment) behind one shared scheduler.

    ``Runtime(ram_budget="2G", threads=4, device="cpu")``; use as a context manager or call close().
    """
