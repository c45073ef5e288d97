"""``edge-model.json``, the manifest of an exported model: one typed, versioned, checked module.

Every reader and every writer goes through here (export recipes write with :func:`write`, the runtime
reads with :func:`load` / :func:`read` once per model load and hands engines the typed object)::

    MANIFEST_FILE                       "edge-model.json", the only definition of the name
    VERSION                             the manifest version this runtime writes and reads (older too)
    DEFAULT_SIZE, SIZE_MULTIPLE         image defaults (512 px, sides a multiple of 8), defined once

    Manifest                            common fields: version, task, format, id, family, recipe,
                                        source_recipe, source, precision, load_bytes, files, verify, npu
      ChatManifest(Manifest)            task "chat": model_file, context_length, kv (KvLayout), bos/eos
                                        tokens, add_bos, chat_template, quants (GGUF), architecture
      ImageManifest(Manifest)           task "image": precisions, tokenizer, scheduler, unet (UNetInfo),
                                        vae (VaeInfo), decoders ({name: DecoderInfo}), default_decoder,
                                        size_multiple, default_size
      SegmentManifest(Manifest)         task "segment": components, inputs
    NpuSection / NpuComponent           the ``npu`` section NPU artifacts carry (see edge/npu/artifact.py)

    load(path, *, model_id=None, task=None) -> Manifest     the checked manifest at ``path``
    read(folder, *, model_id=None, task=None) -> Manifest   folder / MANIFEST_FILE
    write(folder, manifest) -> Path                         atomic (temp file + os.replace)
    Manifest.from_dict(doc, origin) / .to_dict()            the JSON object <-> the typed manifest
    Manifest.default(task, format) -> Manifest              what a model without a manifest (a GGUF
                                                            file) gets: every field at its default
    Manifest.loaded_bytes() / .onnx_files()                 RAM and files of the default precision

Checks: the file is at most ``MAX_BYTES``, valid JSON without NaN/Infinity, an object; every known
field has its type (and range); a field the file lacks gets its default here. A failed check is a
BadRequest naming the file (``model 'x': edge-model.json`` when a model id is known, so no path of
the store reaches an HTTP client), the field and the fix. Fields this version does not know are kept
in ``extra`` and written back unchanged. ``task`` picks the class (``Manifest.from_dict`` of a doc
without a task is a plain Manifest; ``load(..., task="image")`` supplies the task the caller expects
and refuses another).

Versions: 1 is the current version. Exports written before the field existed carry no version (or
the LCM recipe's ``"schema": 1``) and load as version 1; a version newer than ``VERSION`` is refused
with "upgrade edge-run".
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping

from edge.errors import BadRequest, ModelNotInstalled

MANIFEST_FILE = "edge-model.json"
VERSION = 1
MAX_BYTES = 4 << 20
"""A manifest is a few KiB; anything this large is not one."""
TASKS = ("chat", "image", "segment")
FORMATS = ("onnx", "gguf")
DEFAULT_SIZE = 512
"""Image side (px) when neither the request nor the manifest says."""
SIZE_MULTIPLE = 8
"""Image sides must be a multiple of this (the VAE's downscale factor)."""
REEXPORT = f"or re-export the model (`edge-run export ... --add`) to rewrite its {MANIFEST_FILE}."


def _bad(origin: str, msg: str, fix: str = "") -> BadRequest:
    return BadRequest(f"{origin}: {msg} {fix or 'Re-export the model (`edge-run export ... --add`) to rewrite it.'}",
                      param=MANIFEST_FILE)


# -- the typed documents ------------------------------------------------------------------------------
@dataclass
class _Doc:
    """A JSON object with typed fields; keys it does not know are kept in ``extra``."""

    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def _parse(cls, doc: Any, origin: str, where: str = "") -> "_Doc":
        if not isinstance(doc, Mapping):
            raise _bad(origin, f"`{where}` must be a JSON object, got {_show(doc)}." if where
                       else f"must be a JSON object, got {type(doc).__name__}.")
        hints = _hints(cls)
        kw: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in doc.items():
            if not isinstance(key, str):
                raise _bad(origin, f"`{where or 'manifest'}` has a non-string key {key!r}.")
            f = _fields(cls).get(key)
            if f is None:
                extra[key] = value
                continue
            path = f"{where}.{key}" if where else key
            kw[key] = _check(_coerce(value, hints[key], path, origin, f), path, origin, f)
        return cls(**kw, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object: known fields (None left out), then the keys this version did not know."""
        out: dict[str, Any] = {}
        for name in _fields(type(self)):
            value = getattr(self, name)
            if value is not None:
                out[name] = _plain(value)
        for k, v in self.extra.items():
            out.setdefault(k, v)
        return out


@dataclass
class KvLayout(_Doc):
    """The KV cache of an ONNX chat graph (past_key_values.<i>.key/value)."""

    num_layers: int = field(default=0, metadata={"min": 1})
    num_kv_heads: int = field(default=0, metadata={"min": 1})
    head_dim: int = field(default=0, metadata={"min": 1})
    vocab_size: int | None = None


@dataclass
class UNetInfo(_Doc):
    time_cond_proj_dim: int | None = field(default=None, metadata={"min": 1, "example": 256})
    in_channels: int = 4
    cross_attention_dim: int | None = None


@dataclass
class VaeInfo(_Doc):
    """Stable Diffusion 1.x values by default."""

    scaling_factor: float = field(default=0.18215, metadata={"min": 0})
    scale_factor: int = field(default=SIZE_MULTIPLE, metadata={"min": 1})
    latent_channels: int = field(default=4, metadata={"min": 1})


@dataclass
class DecoderInfo(_Doc):
    scaling_factor: float = field(default=0.18215, metadata={"min": 0})


@dataclass
class NpuComponent(_Doc):
    """One file of an NPU artifact (key: its path relative to the folder)."""

    role: str = ""
    quant: str = ""
    static: bool = False
    device: str = field(default="npu", metadata={"choices": ("npu", "cpu")})
    inputs: dict[str, list[Any]] | None = None
    adapter: str | None = None
    head: str | None = None
    context: int | None = field(default=None, metadata={"min": 1})
    per_call_dims: dict[str, int] | None = None
    provider_options: dict[str, Any] | None = None
    shape_hint: str | None = None


@dataclass
class NpuSection(_Doc):
    schema: int = 1
    target: str = "qnn-htp"
    default_quant: str | None = None
    schemes: list[str] = field(default_factory=list)
    components: dict[str, NpuComponent] = field(default_factory=dict)


@dataclass
class Manifest(_Doc):
    """The fields every export has. ``origin`` names the file in error messages (not written)."""

    TASK: ClassVar[str] = ""

    version: int = field(default=VERSION, metadata={"min": 1})
    task: str | None = field(default=None, metadata={"choices": TASKS})
    format: str = field(default="onnx", metadata={"choices": FORMATS})
    id: str | None = None
    family: str | None = None
    recipe: str | None = None
    source_recipe: str | None = None
    source: dict[str, Any] | None = None
    precision: str | None = None
    load_bytes: dict[str, int] = field(default_factory=dict, metadata={"min": 0, "example": {"fp32": 1 << 20}})
    files: list[dict[str, Any]] = field(default_factory=list)
    verify: dict[str, Any] | None = None
    npu: NpuSection | None = None
    origin: str = field(default="", repr=False, compare=False)

    @classmethod
    def from_dict(cls, doc: Any, origin: str = MANIFEST_FILE) -> "Manifest":
        """The typed manifest of ``doc`` (the class its ``task`` names; ``cls``'s task when it has none)."""
        if not isinstance(doc, Mapping):
            raise _bad(origin, f"must be a JSON object, got {type(doc).__name__}.")
        doc = dict(doc)
        if "version" not in doc and "schema" in doc:  # the LCM recipe's name for it before `version`
            doc["version"] = doc.pop("schema")
        task = doc.get("task") or cls.TASK
        if task not in ("", *TASKS):
            raise _bad(origin, f"`task` must be one of {', '.join(TASKS)}, got {_show(task)}.")
        if cls.TASK and task != cls.TASK:
            raise _bad(origin, f"`task` is {task!r}, but a {cls.TASK} model was expected.",
                       f"Use a {cls.TASK} model, {REEXPORT}")
        if task:
            doc["task"] = task
        m = typing.cast(Manifest, _CLASSES.get(task, cls)._parse(doc, origin))
        if m.version > VERSION:
            raise _bad(origin, f"`version` is {m.version}; this edge-run reads manifests up to version {VERSION}.",
                       "Upgrade edge-run (pip install -U edge-run).")
        m.origin = origin
        return m

    @staticmethod
    def default(task: str | None, format: str = "onnx") -> "Manifest":
        """The manifest of a model that has none (a GGUF file): every field at its default."""
        return _CLASSES.get(task or "", Manifest)(task=task, format=format)

    def loaded_bytes(self) -> int | None:
        """RAM the manifest's own precision needs once loaded (multi-precision exports), if it says."""
        v = self.load_bytes.get(self.precision) if self.precision else None
        return int(v) if v else None

    def onnx_files(self) -> list[str]:
        """The files (relative paths) the default precision loads, NPU components first; [] when the
        manifest does not list them (then every .onnx file of the model is one)."""
        if self.npu is None or not self.npu.components:
            return []
        default = self.precision
        return list(dict.fromkeys(rel for rel, comp in self.npu.components.items()
                                  if "/" not in rel or rel.split("/")[0] in (default, "cpu") or comp.quant == default))


@dataclass
class ChatManifest(Manifest):
    """A chat model: GGUF (``quants``) or ONNX (``model_file`` + ``kv`` + tokens + template)."""

    TASK: ClassVar[str] = "chat"

    task: str = field(default="chat", metadata={"choices": TASKS})
    model_file: str = "model.onnx"
    context_length: int | None = field(default=None, metadata={"min": 1, "example": 2048})
    kv: KvLayout | None = None
    bos_token_id: int | None = None
    bos_token: str | None = None
    eos_token: str | None = None
    eos_token_ids: list[int] = field(default_factory=list)
    add_bos: bool = False
    chat_template: str | None = None
    quants: dict[str, str] = field(default_factory=dict)
    architecture: str | None = None


@dataclass
class ImageManifest(Manifest):
    """An LCM export: ONNX files per precision ({precision: {component: path}}) and what the pipeline
    needs to run them."""

    TASK: ClassVar[str] = "image"

    task: str = field(default="image", metadata={"choices": TASKS})
    precision: str | None = "fp32"
    precisions: dict[str, dict[str, str]] = field(default_factory=dict)
    tokenizer: str = "tokenizer/tokenizer.json"
    scheduler: dict[str, Any] = field(default_factory=dict)
    """The diffusers LCMScheduler config (edge.image.lcm_schedule.LCMScheduler.from_config)."""
    unet: UNetInfo = field(default_factory=UNetInfo)
    vae: VaeInfo = field(default_factory=VaeInfo)
    decoders: dict[str, DecoderInfo] = field(default_factory=dict)
    default_decoder: str = "vae"
    size_multiple: int = field(default=SIZE_MULTIPLE, metadata={"min": 1})
    default_size: int = field(default=DEFAULT_SIZE, metadata={"min": 1})

    def onnx_files(self) -> list[str]:
        return super().onnx_files() or list(dict.fromkeys(self.precisions.get(self.precision or "fp32", {}).values()))


@dataclass
class SegmentManifest(Manifest):
    """A MobileSAM export (encoder.onnx + decoder.onnx)."""

    TASK: ClassVar[str] = "segment"

    task: str = field(default="segment", metadata={"choices": TASKS})
    precision: str | None = "fp32"
    components: dict[str, str] = field(default_factory=dict)
    """Precision of each graph: {"encoder": "int8", "decoder": "fp32"}."""
    inputs: dict[str, Any] = field(default_factory=dict)


_CLASSES: dict[str, type[Manifest]] = {"chat": ChatManifest, "image": ImageManifest, "segment": SegmentManifest}


# -- files --------------------------------------------------------------------------------------------
def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse(text: str | bytes, origin: str = MANIFEST_FILE, *, task: str | None = None) -> Manifest:
    """The typed manifest in ``text`` (size cap, strict JSON, then :meth:`Manifest.from_dict`)."""
    if len(text) > MAX_BYTES:
        raise _bad(origin, f"is {len(text):,} bytes, over the {MAX_BYTES:,} a manifest may have.")
    try:
        doc = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise _bad(origin, f"is not valid JSON ({e.__class__.__name__}).") from None
    return (_CLASSES[task] if task else Manifest).from_dict(doc, origin)


def load(path: str | Path, *, model_id: str | None = None, task: str | None = None) -> Manifest:
    """The checked manifest at ``path``; ``task`` (chat | image | segment) is what the caller expects.

    Errors name ``model '<id>': edge-model.json`` when ``model_id`` is given, else the path.
    ModelNotInstalled when the file is missing.
    """
    path = Path(path)
    origin = f"model {model_id!r}: {MANIFEST_FILE}" if model_id else str(path)
    try:
        with open(path, "rb") as f:
            text = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise ModelNotInstalled(f"{origin} is missing; the folder is not an exported model. Export one with "
                                "`edge-run export ...` (it writes the manifest).", param=MANIFEST_FILE) from None
    except OSError as e:
        raise _bad(origin, f"cannot be read ({e.__class__.__name__}).") from None
    return parse(text, origin, task=task)


def read(folder: str | Path, *, model_id: str | None = None, task: str | None = None) -> Manifest:
    """:func:`load` of ``folder / MANIFEST_FILE``."""
    return load(Path(folder) / MANIFEST_FILE, model_id=model_id, task=task)


def write(folder: str | Path, manifest: Manifest | Mapping[str, Any]) -> Path:
    """Write ``folder / MANIFEST_FILE`` atomically (temp file + os.replace); a dict is checked first."""
    if not isinstance(manifest, Manifest):
        manifest = Manifest.from_dict(manifest, f"manifest for {folder}")
    path = Path(folder) / MANIFEST_FILE
    tmp = path.with_name(f".{MANIFEST_FILE}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(manifest.to_dict(), indent=2, default=str) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# -- the checks ---------------------------------------------------------------------------------------
_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if f.name not in ("extra", "origin")}


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _describe(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args if a is not type(None))
    if origin is dict:
        return f"a JSON object of {_describe(args[1])} values"
    if origin is list:
        return f"a list of {_describe(args[0])} values"
    if dataclasses.is_dataclass(tp):
        return "a JSON object"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, "a JSON value")


def _fix(f: dataclasses.Field) -> str:
    example = f.metadata.get("example")
    if example is None:
        example = f.default if f.default is not dataclasses.MISSING else None
    if example is None or (f.default_factory is not dataclasses.MISSING and "example" not in f.metadata):
        return f"Fix the field {REEXPORT}"
    return f"Fix the field (e.g. `\"{f.name}\": {json.dumps(example)}`) {REEXPORT}"


def _coerce(value: Any, tp: Any, where: str, origin: str, f: dataclasses.Field) -> Any:
    kind, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if kind in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, where, origin, f)

    def wrong() -> BadRequest:
        return _bad(origin, f"`{where}` must be {_describe(tp)}, got {_show(value)}.", _fix(f))

    if tp is bool:
        if not isinstance(value, bool):
            raise wrong()
        return value
    if tp is int:
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong()
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise wrong()
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise wrong()
        return value
    if kind is dict:
        if not isinstance(value, Mapping):
            raise wrong()
        return {k: _check(_coerce(v, args[1], f"{where}.{k}", origin, f), f"{where}.{k}", origin, f)
                for k, v in value.items()}
    if kind is list:
        if not isinstance(value, list):
            raise wrong()
        return [_coerce(v, args[0], f"{where}[{i}]", origin, f) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return tp._parse(value, origin, where)
    return value


def _check(value: Any, where: str, origin: str, f: dataclasses.Field) -> Any:
    lo, choices = f.metadata.get("min"), f.metadata.get("choices")
    if lo is not None and isinstance(value, (int, float)) and not isinstance(value, bool) and value < lo:
        raise _bad(origin, f"`{where}` must be >= {lo}, got {_show(value)}.", _fix(f))
    if choices and isinstance(value, str) and value not in choices:
        raise _bad(origin, f"`{where}` must be one of {', '.join(choices)}, got {_show(value)}.", _fix(f))
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, _Doc):
        return value.to_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
