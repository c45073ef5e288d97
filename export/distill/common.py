"""What every distillation recipe shares.

* a typed configuration declared once (a dataclass): CLI flags and config-file keys come from it;
  precedence is flag > config file (TOML or JSON) > default;
* ``Trainer``: an ``accelerate`` Accelerator (one CPU core, many GPUs, or torchrun / accelerate launch
  processes), seeding, per-step deterministic data and noise (so a resumed run is the same run),
  resumable checkpoints (``accelerator.save_state``), a tqdm progress bar, a metrics log, and the
  before / during / after evaluations the report is made of.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

REPORT = "distill-report.json"
LOG = "train_log.jsonl"


# ---------------------------------------------------------------------------------------------- config
def opt(default: Any, help: str, *, choices: tuple | None = None) -> Any:
    """A config field: default, help text (and allowed values), shown by --help and checked on load."""
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class TrainConfig:
    """Options every recipe has. Recipes subclass it (and may change defaults)."""

    out: str | None = opt(None, "output folder (written atomically when training ends)")
    steps: int = opt(1000, "optimizer steps")
    batch_size: int = opt(8, "batch size per process (the global batch is this x the number of processes)")
    lr: float = opt(1e-4, "peak learning rate (AdamW)")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    warmup_steps: int = opt(0, "linear learning-rate warm-up steps")
    lr_schedule: str = opt("constant", "learning-rate schedule after warm-up", choices=("constant", "cosine"))
    max_grad_norm: float = opt(1.0, "clip gradients to this norm (0 = no clipping)")
    seed: int = opt(0, "seed for initialisation, data order and noise")
    mixed_precision: str = opt("no", "accelerate mixed precision (GPUs)", choices=("no", "fp16", "bf16"))
    checkpoint_every: int = opt(500, "save a resumable checkpoint every N steps (0 = only at the end)")
    checkpoints_total: int = opt(2, "how many checkpoints to keep")
    keep_checkpoints: bool = opt(False, "keep the checkpoint folder after the output is written")
    restart: bool = opt(False, "ignore existing checkpoints and start from step 0")
    eval_every: int = opt(0, "evaluate on the held-out set every N steps (0 = only before and after)")
    log_every: int = opt(10, "log the loss every N steps")
    threads: int | None = opt(None, "torch CPU threads (default: torch's choice)")
    cpu: bool = opt(False, "train on the CPU even when a GPU is present")
    overwrite: bool = opt(False, "replace an existing output folder")
    no_progress: bool = opt(False, "no progress bar")


# options that may change between a run and its resumption (everything else must match the checkpoint)
RESUMABLE_CHANGES = {"steps", "checkpoint_every", "checkpoints_total", "keep_checkpoints", "restart", "eval_every",
                     "log_every", "threads", "overwrite", "no_progress", "cpu", "out"}


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _base_type(tp: Any) -> type:
    """int | None -> int."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if args else tp


def add_config_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """--config FILE plus one --flag per field of ``cls`` (all default to None: unset)."""
    parser.add_argument("--config", metavar="FILE", default=None,
                        help="TOML or JSON file with any of the options below as keys (flags override it)")
    types = _field_types(cls)
    common = {f.name for f in dataclasses.fields(TrainConfig)}
    own = parser.add_argument_group(f"{cls.__module__.rsplit('.', 1)[-1].replace('_', '-')} options")
    train = parser.add_argument_group("training options")
    ordered = [f for f in dataclasses.fields(cls) if f.name not in common or f.default != TrainConfig.__dataclass_fields__[
        f.name].default] + [f for f in dataclasses.fields(cls) if f.name in common]
    seen: set[str] = set()
    for f in ordered:
        if f.name in seen:
            continue
        seen.add(f.name)
        group = train if f.name in common else own
        flag = "--" + f.name.replace("_", "-")
        tp = _base_type(types[f.name])
        shown = f" (default {f.default})" if f.default not in (None, False) else ""
        choices = f.metadata.get("choices")
        help_ = f.metadata.get("help", "") + (f" [{'|'.join(choices)}]" if choices else "") + shown
        if tp is bool:
            group.add_argument(flag, action="store_const", const=True, default=None, help=help_)
        else:
            group.add_argument(flag, type=str, default=None, choices=f.metadata.get("choices"),
                               metavar=f.name.upper(), help=help_)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """A TOML (.toml) or JSON (.json) file -> {key: value}; keys may use - or _."""
    from edge.errors import BadRequest

    p = Path(path)
    if not p.is_file():
        raise BadRequest(f"--config {str(p)!r} does not exist; pass a .toml or .json file.", param="config")
    try:
        if p.suffix == ".json":
            data = json.loads(p.read_text())
        else:
            import tomllib

            data = tomllib.loads(p.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"--config {str(p)!r} is not valid {'JSON' if p.suffix == '.json' else 'TOML'}: {e}",
                         param="config") from None
    if not isinstance(data, dict):
        raise BadRequest(f"--config {str(p)!r} must hold a table of options.", param="config")
    return {k.replace("-", "_"): v for k, v in data.items()}


def _coerce(name: str, tp: Any, value: Any, choices: tuple | None) -> Any:
    from edge.errors import BadRequest

    base = _base_type(tp)
    flag = "--" + name.replace("_", "-")
    if value is None:
        return None
    try:
        if base is bool:
            if isinstance(value, str):
                if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                    raise ValueError(value)
                value = value.lower() in ("1", "true", "yes")
            out = bool(value)
        elif base is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            out = int(value) if not isinstance(value, str) else int(float(value)) if "e" in value.lower() \
                else int(value)
        elif base is float:
            if isinstance(value, bool):
                raise ValueError(value)
            out = float(value)
            if not math.isfinite(out):
                raise ValueError(value)
        else:
            out = str(value)
    except (TypeError, ValueError):
        raise BadRequest(f"{flag} {value!r} is not a valid {base.__name__}.", param=flag) from None
    if choices and out not in choices:
        raise BadRequest(f"{flag} {out!r} must be one of {', '.join(map(str, choices))}.", param=flag)
    return out


def config_from_args(cls: type, args: argparse.Namespace | None = None, **overrides: Any):
    """Build ``cls`` from defaults, then the --config file, then flags, then ``overrides``."""
    from edge.errors import BadRequest

    types = _field_types(cls)
    names = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    cfg_path = getattr(args, "config", None) if args is not None else None
    cfg_path = overrides.pop("config", None) or cfg_path
    if cfg_path:
        for k, v in load_config_file(cfg_path).items():
            if k not in names:
                close = [n for n in names if n.startswith(k[:4])]
                raise BadRequest(f"unknown option {k!r} in --config {cfg_path}"
                                 + (f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(names)}."),
                                 param="config")
            values[k] = v
    if args is not None:
        for k in names:
            v = getattr(args, k, None)
            if v is not None:
                values[k] = v
    for k, v in overrides.items():
        if k not in names:
            raise TypeError(f"{cls.__name__} has no option {k!r}")
        values[k] = v
    kw = {k: _coerce(k, types[k], v, names[k].metadata.get("choices")) for k, v in values.items()}
    cfg = cls(**kw)
    check_common(cfg)
    return cfg


def check_common(cfg: TrainConfig) -> None:
    from edge.errors import BadRequest

    if not cfg.out:
        raise BadRequest("--out is required: the folder the student is written to.", param="--out")
    for name, low in (("steps", 1), ("batch_size", 1), ("checkpoints_total", 1)):
        if getattr(cfg, name) < low:
            raise BadRequest(f"--{name.replace('_', '-')} must be >= {low}, got {getattr(cfg, name)}.",
                             param=f"--{name.replace('_', '-')}")
    for name in ("checkpoint_every", "eval_every", "log_every", "warmup_steps"):
        if getattr(cfg, name) < 0:
            raise BadRequest(f"--{name.replace('_', '-')} must be >= 0, got {getattr(cfg, name)}.",
                             param=f"--{name.replace('_', '-')}")
    if cfg.lr <= 0:
        raise BadRequest(f"--lr must be > 0, got {cfg.lr}. Try 1e-4.", param="--lr")
    if cfg.threads is not None and cfg.threads < 1:
        raise BadRequest(f"--threads must be >= 1, got {cfg.threads}.", param="--threads")


def require_path(value: str | None, flag: str, what: str) -> Path:
    """An existing file or folder given by ``flag`` (clear message otherwise)."""
    from edge.errors import BadRequest

    if not value:
        raise BadRequest(f"{flag} is required: {what}.", param=flag)
    p = Path(value).expanduser()
    if not p.exists():
        raise BadRequest(f"{flag} {value!r} does not exist: {what}.", param=flag)
    return p


# ---------------------------------------------------------------------------------------------- seeds
def seed_int(*parts: int) -> int:
    """A 63-bit seed derived from integers (seed, step, rank ...), stable across runs and machines."""
    import numpy as np

    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint64)[0] >> 1)


# ---------------------------------------------------------------------------------------------- trainer
class StepCounter:
    """The step number, saved and restored with the checkpoints."""

    def __init__(self) -> None:
        self.step = 0

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])


def lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    def f(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.lr_schedule == "cosine":
            span = max(1, cfg.steps - cfg.warmup_steps)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - cfg.warmup_steps) / span)))
        return 1.0

    return f


class Trainer:
    """One recipe run: Accelerator, optimizer + schedule, checkpoints, progress, log, evaluations.

    Every process runs the same code::

        tr = Trainer(cfg, "llm-kd")
        student, opt = tr.setup(student)                  # prepared for the processes (DDP if several)
        tr.register(ema)                                  # extra state saved in checkpoints
        report = tr.fit(loss_fn, evaluate)                # resumes if checkpoints exist
        tr.write_output(report, write)                    # main process writes, atomically
    """

    def __init__(self, cfg: TrainConfig, recipe: str):
        import torch
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        from edge.errors import BadRequest

        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.cfg = cfg
        self.recipe = recipe
        self.acc = Accelerator(cpu=cfg.cpu, mixed_precision=cfg.mixed_precision)
        set_seed(cfg.seed)
        self.out = Path(cfg.out).expanduser().absolute()
        if self.out.exists() and not cfg.overwrite:
            raise BadRequest(f"output {str(self.out)!r} already exists. Remove it or pass --overwrite.", param="--out")
        self.ckpt_dir = self.out.with_name(self.out.name + ".checkpoints")
        self.counter = StepCounter()
        self.acc.register_for_checkpointing(self.counter)
        self.history: list[dict] = []
        self.model = None
        self.optimizer = None
        self.scheduler = None
        self.params: list = []

    # -- properties ---------------------------------------------------------------------------
    @property
    def is_main(self) -> bool:
        return self.acc.is_main_process

    @property
    def device(self):
        return self.acc.device

    @property
    def world(self) -> int:
        return self.acc.num_processes

    @property
    def rank(self) -> int:
        return self.acc.process_index

    # -- setup --------------------------------------------------------------------------------
    def setup(self, model, params: list | None = None):
        """AdamW over ``params`` (default: the trainable parameters of ``model``) and the LR schedule;
        ``model`` and the optimizer are prepared by accelerate (DDP when there are several processes)."""
        import torch

        params = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        self.model, self.optimizer = self.acc.prepare(model, opt)
        # stepped once per optimizer step (not prepared: accelerate would step it once per process)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(getattr(self.optimizer, "optimizer", self.optimizer),
                                                           lr_lambda(self.cfg))
        self.acc.register_for_checkpointing(self.scheduler)
        self.params = params
        return self.model, self.optimizer

    def register(self, obj) -> None:
        """Extra state (an EMA network ...) saved in and restored from checkpoints."""
        self.acc.register_for_checkpointing(obj)

    def unwrap(self, model=None):
        return self.acc.unwrap_model(model if model is not None else self.model)

    # -- deterministic data and noise ---------------------------------------------------------
    def generator(self, step: int, stream: int = 0):
        """A torch.Generator for this step and process (the same draws when a run resumes)."""
        import torch

        return torch.Generator().manual_seed(seed_int(self.cfg.seed, step, self.rank, stream))

    def batch_indices(self, step: int, n: int) -> list[int]:
        """This process's share of the step's global batch: epochs are seeded permutations of the
        ``n`` items, processes take disjoint slices."""
        import numpy as np

        global_bs = self.cfg.batch_size * self.world
        per_epoch = max(1, n // global_bs)
        epoch, k = divmod(step, per_epoch)
        perm = np.random.default_rng(seed_int(self.cfg.seed, epoch, 7919)).permutation(n)
        if n < global_bs:
            perm = np.resize(perm, global_bs)
        start = k * global_bs + self.rank * self.cfg.batch_size
        return [int(i) for i in perm[start:start + self.cfg.batch_size]]

    # -- checkpoints --------------------------------------------------------------------------
    def _config_identity(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self.cfg).items() if k not in RESUMABLE_CHANGES}

    def checkpoints(self) -> list[Path]:
        if not self.ckpt_dir.is_dir():
            return []
        return sorted(p for p in self.ckpt_dir.glob("step-*") if p.is_dir() and (p / "done").exists())

    def resume(self) -> int:
        """Load the latest complete checkpoint (unless --restart); returns the step to continue from."""
        from edge.errors import BadRequest

        if self.cfg.restart:
            if self.is_main:
                shutil.rmtree(self.ckpt_dir, ignore_errors=True)
            self.acc.wait_for_everyone()
            return 0
        found = self.checkpoints()
        if not found:
            return 0
        saved = json.loads((self.ckpt_dir / "config.json").read_text())
        mine = json.loads(json.dumps(self._config_identity(), default=str))
        diff = {k: (saved.get(k), v) for k, v in mine.items() if saved.get(k) != v}
        if diff:
            shown = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(diff.items())[:4])
            raise BadRequest(f"checkpoints in {str(self.ckpt_dir)!r} were made with other options ({shown}). Use the "
                             "same options to resume, or pass --restart to start over.", param="--restart")
        self.acc.load_state(str(found[-1]))
        log = self.ckpt_dir / LOG
        if log.exists():
            rows = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
            self.history = [h for h in rows if h.get("step", 0) <= self.counter.step]
        if self.is_main:
            print(f"distill {self.recipe}: resumed from {found[-1]}", flush=True)
        return self.counter.step

    def save(self, step: int) -> None:
        self.counter.step = step
        path = self.ckpt_dir / f"step-{step:07d}"
        if self.is_main:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            (self.ckpt_dir / "config.json").write_text(json.dumps(self._config_identity(), indent=1, default=str))
        self.acc.wait_for_everyone()
        self.acc.save_state(str(path))
        if self.is_main:
            (path / "done").write_text(str(step))  # a checkpoint without it was interrupted mid-save
            (self.ckpt_dir / LOG).write_text("".join(json.dumps(h) + "\n" for h in self.history))
            for old in self.checkpoints()[:-self.cfg.checkpoints_total]:
                shutil.rmtree(old, ignore_errors=True)
        self.acc.wait_for_everyone()

    # -- the loop -----------------------------------------------------------------------------
    def fit(self, loss_fn: Callable[[int], tuple[Any, dict]], evaluate: Callable[[], dict] | None = None,
            after_step: Callable[[int], None] | None = None, stop_after: int | None = None) -> dict:
        """Train to ``cfg.steps`` optimizer steps. ``loss_fn(step) -> (loss, metrics)`` computes this
        process's loss; ``after_step(step)`` runs after each optimizer step (an EMA update);
        ``evaluate() -> metrics`` runs on the main process before training, every ``eval_every`` steps
        and after. ``stop_after``: stop (with a checkpoint) after that many steps of this call, as an
        interrupted run would. Returns the report (before, after, change, history, timing)."""
        from tqdm import tqdm

        cfg = self.cfg
        start = self.resume()
        before_path = self.ckpt_dir / "before.json"
        before = None
        eval_s = 0.0
        if evaluate is not None:
            inner = evaluate

            def evaluate() -> dict:  # noqa: F811 - the same evaluation, timed
                nonlocal eval_s
                t = time.perf_counter()
                out = inner()
                eval_s += time.perf_counter() - t
                return out

            if start and before_path.exists():
                before = json.loads(before_path.read_text())
            elif self.is_main:
                before = evaluate()
                self.ckpt_dir.mkdir(parents=True, exist_ok=True)
                before_path.write_text(json.dumps(before))
            self.acc.wait_for_everyone()
        end = cfg.steps if stop_after is None else min(cfg.steps, start + stop_after)
        bar = tqdm(total=cfg.steps, initial=start, desc=f"distill {self.recipe}", unit="step",
                   disable=cfg.no_progress or not self.is_main, dynamic_ncols=True)
        t0 = time.perf_counter()
        eval_before_loop = eval_s
        for step in range(start, end):
            self.model.train()
            loss, metrics = loss_fn(step)
            self.acc.backward(loss)
            if cfg.max_grad_norm and self.acc.sync_gradients:
                self.acc.clip_grad_norm_(self.params, cfg.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            if after_step is not None:
                after_step(step)
            done = step + 1
            if cfg.log_every and (done % cfg.log_every == 0 or done == cfg.steps):
                row = {"step": done, "loss": float(self.acc.reduce(loss.detach(), "mean")),
                       "lr": self.scheduler.get_last_lr()[0]}
                row.update({k: float(self.acc.reduce(v.detach(), "mean")) if hasattr(v, "detach") else v
                            for k, v in metrics.items()})
                self.history.append(row)
                bar.set_postfix(loss=f"{row['loss']:.4g}")
            if evaluate is not None and cfg.eval_every and done % cfg.eval_every == 0 and done != cfg.steps:
                if self.is_main:
                    self.history.append({"step": done, "eval": evaluate()})
                self.acc.wait_for_everyone()
            if done != cfg.steps and ((cfg.checkpoint_every and done % cfg.checkpoint_every == 0) or done == end):
                self.save(done)
            bar.update(1)
        bar.close()
        if end < cfg.steps:
            return {"recipe": self.recipe, "stopped_at_step": end, "checkpoints": str(self.ckpt_dir)}
        train_s = time.perf_counter() - t0 - (eval_s - eval_before_loop)
        self.counter.step = cfg.steps
        after = None
        if evaluate is not None and self.is_main:
            after = evaluate()
            self.history.append({"step": cfg.steps, "eval": after})
        self.acc.wait_for_everyone()
        return {"recipe": self.recipe, "config": dataclasses.asdict(cfg), "processes": self.world,
                "device": str(self.device), "resumed_from_step": start, "train_seconds": round(train_s, 2),
                "eval_seconds": round(eval_s, 2),
                "before": before, "after": after, "change": relative_change(before, after),
                "history": self.history}

    def write_output(self, report: dict, write: Callable[[Path], None]) -> Path:
        """Main process: ``write(tmp)`` into a temp folder, add the report and the log, rename into
        place (export.artifacts.ArtifactDir), then drop the checkpoints (unless --keep-checkpoints)."""
        from export.artifacts import ArtifactDir, write_json

        if self.is_main:
            with ArtifactDir(self.out, overwrite=self.cfg.overwrite) as tmp:
                write(tmp)
                write_json(tmp / REPORT, {k: v for k, v in report.items() if k != "history"})
                (tmp / LOG).write_text("".join(json.dumps(h, default=str) + "\n" for h in report["history"]))
            if not self.cfg.keep_checkpoints:
                shutil.rmtree(self.ckpt_dir, ignore_errors=True)
        self.acc.wait_for_everyone()
        return self.out

    def end(self) -> None:
        """Release the process group (torchrun / accelerate launch) at the end of a run."""
        self.acc.end_training()
        try:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


def relative_change(before: dict | None, after: dict | None) -> dict:
    """{metric: (after - before) / |before|} for the numeric metrics both have."""
    if not before or not after:
        return {}
    out = {}
    for k, b in before.items():
        a = after.get(k)
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b:
            out[k] = (a - b) / abs(b)
    return out
