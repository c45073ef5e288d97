"""The Python API: ``Runtime`` — what an app (a Raspberry Pi program, the CLI, the server) imports.

    from edge.api import Runtime
    with Runtime(threads=4, ram_budget="2G") as rt:
        for piece in rt.chat([{"role": "user", "content": "Hi!"}], stream=True):
            print(piece, end="", flush=True)

Thread-safe: every call goes through the one shared scheduler.
"""

from __future__ import annotations

import logging
import threading
from types import ModuleType
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from edge import manifest as mf
from edge.chat.request import ChatRequest, ChatResult
from edge.config import Settings, _parse_bytes
from edge.engines import WORKLOADS, engine_class, resolve
from edge.errors import BadRequest, EdgeError, IntegrityError, ModelLoadError, ModelNotInstalled, check_range
from edge.jobs import JobChain, JobSpec, Priority
from edge.registry import Catalog, InstalledModel, Store
from edge.registry.hub import is_hub_ref
from edge.registry.pull import pull, pull_hub
from edge.scheduler import JobHandle, Scheduler

if TYPE_CHECKING:
    from edge.image.options import ImageOptions
    from edge.registry.lock import ModelEntry
    from edge.segment.postprocess import SegmentResult

log = logging.getLogger("edge.api")


class Runtime:
    """edge-run's Python API, the one door of the CLI, the HTTP server and apps: chat, image and segment
    jobs over one shared scheduler, models pulled, verified and loaded on demand.

    ``Runtime(ram_budget="2G", threads=4, device="cpu")``; use as a context manager or call close().
    ``Runtime(profile="pi4-4gb")`` takes a device profile's choices (edge/profiles.py; the default ``auto``
    picks from this device), under any keyword or EDGE_* variable given.
    Each workload method checks its request once (``edge/<workload>/request.py``), resolves and installs
    the model once, and hands the workload's jobs (``edge/<workload>/api.py``, found through the
    registry in edge/engines.py) to the scheduler; ``*_job`` methods return a handle to await, stream
    or cancel, the others block.
    """

    def __init__(self, *, home: str | None = None, ram_budget: int | str | None = None, threads: int | None = None,
                 device: str | None = None, offline: bool | None = None, keep_alive: float | None = None,
                 max_queue: int | None = None, chat_slots: int | None = None, ctx: int | None = None,
                 auto_pull: bool = True, policy: str | None = None, profile: str | None = None,
                 settings: Settings | None = None):
        if isinstance(ram_budget, str):
            try:
                ram_budget = _parse_bytes(ram_budget)
            except ValueError:
                raise BadRequest(f"`ram_budget` {ram_budget!r} is not a size; use e.g. '2G' or '512M'.",
                                 param="ram_budget") from None
        self.settings = settings or Settings.from_env(home=home, ram_budget=ram_budget, threads=threads,
                                                      device=device, offline=offline, keep_alive=keep_alive,
                                                      max_queue=max_queue, chat_slots=chat_slots, ctx=ctx,
                                                      scheduler=policy, profile=profile)
        self.auto_pull = auto_pull
        self.store = Store(self.settings)
        self._pull_lock = threading.Lock()  # guards the per-model locks below, never held across a download
        self._pull_locks: dict[str, threading.Lock] = {}
        # model id -> (the verified model, its files' stat stamps then): a model is verified and its manifest
        # read once, then only re-stamped (no hashing, no manifest read) until a file changes
        self._verified: dict[str, tuple[InstalledModel, dict[str, dict | None]]] = {}
        self.scheduler = Scheduler(loader=self._load_engine, estimate=self._estimate, threads=self.settings.threads,
                                   ram_budget=self.settings.ram_budget, max_queue=self.settings.max_queue,
                                   keep_alive=self.settings.keep_alive, policy=self.settings.scheduler)

    # -- models ---------------------------------------------------------------------------
    @property
    def catalog(self) -> Catalog:
        return Catalog(self.settings.user_lock)

    def resolve_model(self, model: str | None, *, task: str) -> str:
        """The model id to use for ``task``: the given one (checked; a hub name hf.co/OWNER/REPO[:QUANT] maps to
        the id it was pulled as, and is pulled first when ``auto_pull`` allows) or the task's default."""
        cat = self.catalog
        if model is None:
            entry = self._in_preferred_precision(cat, task) or cat.default_for(task)
            if entry is None:
                recipe = cat.recipe_for(task)
                how = (f"Run `edge-run pull {recipe.id}` (downloads {recipe.upstream} and exports it here)"
                       if recipe is not None else "Export one with `edge-run export ... --add`")
                raise ModelNotInstalled(f"no {task} model is installed. {how}.", param="model")
        elif is_hub_ref(model) and cat.by_hub_ref(model) is None and self.auto_pull:
            with self._model_lock(model):
                entry = pull_hub(self.settings, model, say=lambda line: None).entry
        else:
            entry = cat.get(model)
        if entry.task != task:
            raise BadRequest(f"model {entry.id!r} is a {entry.task} model, not a {task} model.", param="model")
        return entry.id

    def _in_preferred_precision(self, cat: Catalog, task: str) -> "ModelEntry | None":
        """The installed segmentation model in EDGE_SAM_PRECISION (or the profile's), when the task's default
        is not in it and another installed one is; None otherwise (then the task's default applies). Runs on
        every click without a model: a verified model's manifest comes from the cache, not the disk."""
        want = self.settings.sam_precision if task == "segment" else None
        if want is None:
            return None
        default = cat.default_for(task)
        for entry in sorted((e for e in cat if e.task == task), key=lambda e: e is not default):
            verified = self._verified.get(entry.id)
            if verified is not None:
                manifest = verified[0].manifest
            else:
                folder = self.store.model_dir(entry.id)
                if not (folder / mf.MANIFEST_FILE).is_file() or not self.store.is_installed(entry):
                    continue
                manifest = mf.read(folder, model_id=entry.id)
            if manifest.precision == want:
                return entry
        return None

    def _model_lock(self, model_id: str) -> threading.Lock:
        with self._pull_lock:
            return self._pull_locks.setdefault(model_id, threading.Lock())

    def model_for(self, model: str | None, *, task: str) -> str:
        """What every workload door does once per request: resolve ``model`` for ``task`` (the task's
        default when None) and make sure it is installed and verified (see :meth:`ensure`)."""
        model_id = self.resolve_model(model, task=task)
        self.ensure(model_id)
        return model_id

    def ensure(self, model_id: str) -> InstalledModel:
        """Make sure ``model_id`` is installed and verified, pulling it when allowed (``auto_pull``;
        `edge-run serve` allows it only with --allow-pull). An installed model never waits for another
        model's download: the lock taken is this model's own. Once verified, a model is only re-stamped
        (size, mtime, inode of each file) until one of its files changes."""
        entry = self.catalog.get(model_id)
        verified = self._still_verified(entry)  # a loaded model whose file changed is unloaded (IntegrityError)
        if verified is not None:
            return verified
        if self.store.is_installed(entry) or not self.auto_pull:
            model = self.store.installed(entry)  # ModelNotInstalled names `edge-run pull ID` when absent
        else:
            with self._model_lock(model_id):
                model = self.store.installed(entry) if self.store.is_installed(entry) else self.store.pull(entry)
        self._verified[model_id] = (model, self._stamps(entry))
        return model

    def manifest(self, model_id: str) -> mf.Manifest:
        """The typed edge-model.json of an installed model, as read when it was verified."""
        return self.ensure(model_id).manifest

    def pull(self, model_id: str, *, force: bool = False, say=lambda line: None) -> InstalledModel:
        """Download and verify ``model_id``: a pinned id, a recipe (downloaded and exported here: needs the
        export extra) or a hub name hf.co/OWNER/REPO[:QUANT|:FILE] (pinned in the user lock)."""
        with self._model_lock(model_id):
            self._verified.pop(model_id, None)
            model = pull(self.settings, model_id, force=force, say=say)
            self._verified.pop(model.id, None)
            return model

    def _stamps(self, entry: "ModelEntry") -> dict[str, dict | None]:
        stamps: dict[str, dict | None] = {}
        for fe in entry.files:
            try:
                stamps[fe.name] = self.store.stamp(self.store.file_path(entry, fe), fe.sha256)
            except OSError:
                stamps[fe.name] = None
        return stamps

    def _still_verified(self, entry: "ModelEntry") -> InstalledModel | None:
        """The verified model if none of its files changed since; None if it was never verified or a file
        changed (then it is verified again). A file truncated, replaced or deleted under a LOADED model is
        caught here, before a job touches the mapped weights (a truncated mmap is SIGBUS): the model is
        unloaded and the caller gets an IntegrityError naming it and the fix."""
        cached = self._verified.get(entry.id)
        if cached is None:
            return None
        model, want = cached
        now = self._stamps(entry)
        # size, mtime and inode: a hard link or chmod elsewhere changes ctime without touching the bytes
        changed = [name for name, w in want.items() if w is None or now.get(name) is None
                   or any(now[name][k] != w[k] for k in ("size", "mtime_ns", "ino"))]
        if not changed:
            return model
        self._verified.pop(entry.id, None)
        if entry.id not in {m["id"] for m in self.scheduler.loaded()}:
            return None
        # unloaded now if idle; otherwise new jobs keep being refused here until it is
        self.scheduler.unload(entry.id)
        what = "was deleted" if now.get(changed[0]) is None else "changed on disk"
        raise IntegrityError(f"model {entry.id!r}: file {changed[0]!r} {what} while the model was loaded; "
                             f"it is unloaded (or will be once its running jobs end). Run `edge-run pull "
                             f"{entry.id} --force` to restore it, then retry.", param="model")

    def check_loaded(self, model_id: str) -> None:
        """If ``model_id`` is loaded, confirm its files are still the ones it was loaded from (a size and
        stat check, no hashing); IntegrityError (and the model unloaded) if not."""
        if model_id in self._verified:
            self._still_verified(self.catalog.get(model_id))

    def image_options(self, model_id: str) -> "ImageOptions":
        """The precision and default decoder ``model_id`` loads with here (EDGE_IMAGE_PRECISION /
        EDGE_IMAGE_DECODER or the profile's, when the model has them; else the model's), with why."""
        from edge.image.options import image_options

        manifest = self.manifest(model_id)
        return image_options(manifest, precision=self.settings.image_precision, decoder=self.settings.image_decoder,
                             device=self.settings.device)

    def _estimate(self, model_id: str) -> int:
        """RAM ``model_id`` holds once loaded and used, before any measurement: the loaded precision's files
        (mmapped GGUF pages become resident as they are touched, so the whole file counts), plus the KV
        cache of a chat model and the embedding cache of a segmentation model. The scheduler keeps the
        larger of this and what it measures."""
        entry = self.catalog.get(model_id)
        size = entry.size
        # multi-precision exports: only the loaded precision's files count. The doors verified the model
        # (and read its manifest) before submitting; a job submitted directly may reach here first.
        verified = self._verified.get(model_id)
        manifest = verified[0].manifest if verified is not None else None
        if manifest is None and (self.store.model_dir(model_id) / mf.MANIFEST_FILE).is_file():
            manifest = mf.read(self.store.model_dir(model_id), model_id=model_id)
        if isinstance(manifest, mf.ImageManifest):
            from edge.image.options import image_options

            opts = image_options(manifest, precision=self.settings.image_precision,
                                 decoder=self.settings.image_decoder, device=self.settings.device)
            size = self._image_load_bytes(model_id, manifest, opts) or manifest.load_bytes.get(opts.precision) or size
        elif manifest is not None:
            size = manifest.loaded_bytes() or size
        extra = 0
        if entry.task == "chat":
            extra = (64 << 20) + self._kv_bytes(model_id)  # compute buffers and logits, plus every slot's KV stream
        elif entry.task == "segment":
            from edge.segment.engine import cache_budget

            extra = cache_budget(self.settings.ram_budget)  # the embedding cache may fill to its budget
        return int(size * 1.1) + extra

    def _kv_bytes(self, model_id: str) -> int:
        """The KV cache a GGUF chat model is loaded with: a ``ctx``-token stream per chat slot (0 if unknown)."""
        ggufs = sorted(self.store.model_dir(model_id).glob("*.gguf"))
        if not ggufs:
            return 0
        from edge.chat.batch import kv_cache_bytes

        try:
            return kv_cache_bytes(str(ggufs[0]), self.settings.ctx * self.settings.chat_slots)
        except (ValueError, KeyError, OSError) as e:  # a GGUF without these keys: the load's measurement decides
            log.info("no KV estimate for %s: %s", model_id, e)
            return 0

    def _image_load_bytes(self, model_id: str, manifest: "mf.ImageManifest", opts: Any) -> int:
        """The files an image model holds once it has made an image with its default decoder: the text encoder,
        the UNet and that decoder (with external data). The other decoder and the VAE encoder (image-to-image)
        load on first use and are measured then; counting all of a precision's files would refuse an int8
        SD1.5 model with TAESD on a 4 GB device that easily holds it."""
        files = manifest.precisions.get(opts.precision, {})
        folder = self.store.model_dir(model_id)
        total = 0
        for component in ("text_encoder", "unet", f"{opts.decoder}_decoder"):
            rel = files.get(component)
            if rel is None:
                continue
            for path in (folder / rel, folder / (rel + ".data")):
                if path.is_file():
                    total += path.stat().st_size
        return total

    def _load_engine(self, model_id: str, threads: int) -> Any:
        model = self.ensure(model_id)
        cls = engine_class(model.task, model.format)
        extra: dict[str, Any] = {"ram_budget": self.settings.ram_budget}
        if model.task == "chat":
            extra = {"slots": self.settings.chat_slots, "n_ctx": self.settings.ctx}
        elif model.task == "image":
            options = self.image_options(model_id)
            extra.update(precision=options.precision, default_decoder=options.decoder)
        try:
            return cls.load(model, threads=threads, device=self.settings.device, **extra)
        except EdgeError:
            raise
        except Exception as e:  # the library's words (and the file's path) go to the log, not to a client
            log.exception("loading model %s failed", model_id)
            raise ModelLoadError(f"model {model_id!r} could not be loaded ({e.__class__.__name__}); its files pass "
                                 f"their checksums, so this build of its engine cannot read them. Run `edge-run "
                                 f"pull {model_id} --force`, or re-export it with this edge-run version; the "
                                 "server log has the details.", param="model") from None

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

    def jobs(self) -> list[JobHandle]:
        """The queued and running jobs, oldest first (for progress indicators)."""
        return self.scheduler.jobs()

    def close(self) -> None:
        """Cancel running jobs and unload every model (native handles are freed now)."""
        self.scheduler.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- workloads ------------------------------------------------------------------------
    @staticmethod
    def _workload(task: str) -> ModuleType:
        """The module of ``task``'s jobs, as the workload registry (edge/engines.py) names it."""
        return resolve(WORKLOADS[task].api)

    def chat_job(self, messages: list[dict] | ChatRequest, *, model: str | None = None,
                 max_tokens: int | None = None, temperature: float | None = None, top_p: float | None = None,
                 top_k: int | None = None, min_p: float | None = None, seed: int | None = None,
                 stop: list[str] | str | None = None, json_schema: dict | None = None,
                 repeat_penalty: float | None = None, tools: list[dict] | None = None,
                 tool_choice: str | dict | None = None,
                 priority: Priority = Priority.INTERACTIVE, keep_alive: float | None = None) -> JobHandle[ChatResult]:
        """Submit a chat turn (``messages``, or a ChatRequest whose fields replace the sampling keywords);
        the handle's events are Step("prefill") and Step("token", data=text).

        Sampling keywords left None take the model's recommended values (GGUF ``general.sampling.*``), else
        0.8 / 0.95 / 40 / 0.05 / 1.0; no ``seed`` means a random one, reported as the result's ``.seed``.
        ``tools`` (OpenAI function specs) and ``tool_choice`` ("auto" | "none" | "required" |
        {"type": "function", "function": {"name": ...}}) may make the result a call: ``.tool_calls``."""
        req = messages if isinstance(messages, ChatRequest) else ChatRequest(
            messages=messages, max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
            min_p=min_p, seed=seed, stop=stop, json_schema=json_schema, repeat_penalty=repeat_penalty,
            tools=tools, tool_choice=tool_choice)
        return self._workload("chat").chat_job(self, req, model=model, priority=priority, keep_alive=keep_alive)

    def complete_job(self, prompt: str | ChatRequest, *, model: str | None = None,
                     priority: Priority = Priority.INTERACTIVE, keep_alive: float | None = None,
                     **sampling: Any) -> JobHandle[ChatResult]:
        """Submit a raw text completion of ``prompt`` (no chat template; /v1/completions). ``sampling``:
        the keywords of :meth:`chat_job`; or give a ChatRequest made with ChatRequest.completion."""
        req = prompt if isinstance(prompt, ChatRequest) else ChatRequest.completion(prompt, **sampling)
        return self._workload("chat").chat_job(self, req, model=model, priority=priority, keep_alive=keep_alive)

    def chat(self, messages: list[dict], *, stream: bool = False, **kw) -> ChatResult | Iterator[str]:
        """Answer a conversation.

        ``stream=False`` returns a ChatResult (``.text``, ``.usage()``, ``.finish_reason``, ``.seed``,
        ``.tool_calls``);
        ``stream=True`` returns an iterator of text pieces as they are generated (closing it early
        cancels the job). Keyword arguments are those of :meth:`chat_job`.
        """
        handle = self.chat_job(messages, **kw)
        if stream:
            return self._workload("chat").stream_text(handle)
        return handle.result()

    def imagine_job(self, prompt: str | Any, *, model: str | None = None, size: Any = None, steps: int = 4,
                    n: int = 1, seed: int | None = None, guidance_scale: float = 8.0, init_image: Any = None,
                    strength: float = 0.6, decoder: str | None = None, keep_alive: float | None = None,
                    priority: Priority = Priority.BATCH) -> JobHandle[list]:
        """Submit an image job (batch priority, so chat and segmentation stay interactive); ``prompt`` may
        be an edge.image.request.ImageRequest, whose fields replace the keywords.

        The handle's events are Step("text_encode"), Step("image_encode") for img2img, Step("unet")
        per step and Step("decode") per image; ``.result()`` is a list of PIL images whose ``.info``
        holds prompt, seed, steps and model; ``.cancel()`` stops it at the next step.
        """
        from edge.image.request import ImageRequest, parse_size

        req = prompt if isinstance(prompt, ImageRequest) else ImageRequest(
            prompt, *parse_size(size), steps=steps, n=n, seed=seed, guidance_scale=guidance_scale,
            init_image=init_image, strength=strength, decoder=decoder)
        return self._workload("image").imagine_job(self, req, model=model, keep_alive=keep_alive, priority=priority)

    def imagine(self, prompt: str | Any, **kw) -> list:
        """Generate images; blocks until done. Keyword arguments are those of :meth:`imagine_job`
        (size '512x512', steps 1-8, n, seed, guidance_scale, init_image + strength, decoder 'vae'|'taesd')."""
        handle = self.imagine_job(prompt, **kw)
        try:
            return handle.result()
        finally:
            if not handle.done:
                handle.cancel()

    def segment_job(self, image: Any = None, points: Sequence[Sequence[float]] | None = None,
                    box: Sequence[float] | None = None, *, multimask: bool | None = None, prev_mask: Any = None,
                    image_id: str | None = None, model: str | None = None,
                    keep_alive: float | None = None) -> JobChain[SegmentResult]:
        """Submit one click (see :meth:`segment`); ``image`` may be an edge.segment.request.SegmentRequest.
        The image is decoded and every prompt checked here, before any job; the handle runs the decoder
        (interactive) at once when the image's embedding is cached, else the encoder (batch) first."""
        from edge.segment.request import SegmentRequest

        req = image if isinstance(image, SegmentRequest) else SegmentRequest(
            image=image, image_id=image_id, points=points, box=box, multimask=multimask, prev_mask=prev_mask)
        return self._workload("segment").segment_job(self, req, model=model, keep_alive=keep_alive)

    def segment(self, image: Any = None, points: Sequence[Sequence[float]] | None = None,
                box: Sequence[float] | None = None, *, multimask: bool | None = None, prev_mask: Any = None,
                image_id: str | None = None, model: str | None = None) -> SegmentResult:
        """Masks for point / box prompts on ``image`` (a path, bytes, PIL image or array) or on a
        previously embedded ``image_id``.

        points: [(x, y, label)] in image pixels, label 1 = object, 0 = background (default 1).
        box: (x0, y0, x1, y1). multimask: three candidate masks (default: only for a single point).
        prev_mask: a previous SegmentResult / Mask (or 256x256 logits, or an HxW mask) to refine.
        Returns a SegmentResult: ``.masks`` (mask, score, bbox, area, rle()), ``.best``, ``.mask``.
        """
        handle = self.segment_job(image, points, box, multimask=multimask, prev_mask=prev_mask, image_id=image_id,
                                  model=model)
        try:
            return handle.result()
        finally:
            if not handle.done:
                handle.cancel()

    def embed_job(self, image: Any, *, model: str | None = None, keep_alive: float | None = None) -> JobHandle:
        """Submit the image encoder (batch priority); the result is (Embedding, encoder_ran)."""
        return self._workload("segment").embed_job(self, image, model=model, keep_alive=keep_alive)

    def embed(self, image: Any, *, model: str | None = None) -> dict[str, Any]:
        """Encode ``image`` into the embedding cache (no-op if cached). Returns its ``image_id`` (pass it
        to ``segment(image_id=...)``), sizes, and whether the encoder ran."""
        emb, ran = self.embed_job(image, model=model).result()
        return {"image_id": emb.image_id, "size": list(emb.size), "original_size": list(emb.original_size),
                "scale": emb.scale, "encoder_ran": ran}

    def segment_stats(self, *, model: str | None = None) -> dict[str, int]:
        """Encoder / decoder call counts and embedding-cache figures of the loaded segment model."""
        model_id = self.model_for(model, task="segment")
        return self.submit(JobSpec(model_id=model_id, work=lambda engine: engine.stats_steps(),
                                   priority=Priority.INTERACTIVE, label="segment_stats")).result()

