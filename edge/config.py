"""Settings in one place. Each is declared once (name, type, default, help); env vars (EDGE_*) and
CLI flags come from the declaration, and bad values are rejected with a message naming the value.

This module imports nothing from edge/ but ``edge.errors`` and ``edge.profiles`` (which imports only
``edge.cpu``), so anything may import it:

    add_settings_flags(parser)        # one --flag per setting (a command's own flag of that name wins)
    Settings.from_args(args)          # argparse Namespace -> Settings: flags win over EDGE_* over the
                                      # device profile (--profile / EDGE_PROFILE) over the built-in defaults
    Settings.from_env(**overrides)    # the same without a Namespace (None = not given)
    settings.sources[name]            # where each value came from: argument | flag | env | profile | default
    settings.profile_choice           # the profile applied and why (edge/profiles.py)
    default_threads()                 # the cores this process may use (the default of EDGE_THREADS)

Export recipes use these for home, threads and offline (``Settings.from_args(args).threads``, ``.home``,
``.user_lock``); a Namespace without the settings flags is fine (env vars and defaults apply). They
import nothing from ``edge.cli``. A command that needs a Runtime builds it itself:
``edge.api.Runtime(settings=Settings.from_args(args))``.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, fields, field
from pathlib import Path
from typing import Any, Callable

from edge import profiles
from edge.errors import BadRequest


def _parse_bytes(text: str) -> int:
    """'4G', '512M', '1.5GB', '123456' -> bytes."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    if t and t[-1] in mult:
        return int(float(t[:-1]) * mult[t[-1]])
    return int(float(t))


def _parse_bool(text: str) -> bool:
    t = text.strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(text)


def _default_home() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "edge-run"


_facts: profiles.DeviceFacts | None = None


def device_facts() -> profiles.DeviceFacts:
    """This machine's facts (RAM, cores, CPU flags), detected once per process."""
    global _facts
    if _facts is None:
        _facts = profiles.detect()
    return _facts


def _default_budget() -> int:
    """3/4 of the device's RAM (a cgroup limit lower than the machine's RAM counts as the device's)."""
    return int(device_facts().ram_bytes * 0.75)


def default_threads() -> int:
    """The cores this process may use (its CPU affinity), at least 1: the default of EDGE_THREADS."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


DEVICES = ("auto", "cpu", "npu", "qnn", "openvino", "coreml", "nnapi")
SCHEDULER_POLICIES = ("lanes", "priority", "fifo")  # edge/scheduler.py says what each does


def _parse_policy(text: str) -> str:
    t = text.strip().lower()
    if t not in SCHEDULER_POLICIES:
        raise ValueError(text)
    return t


def _parse_device(text: str) -> str:
    t = text.strip().lower()
    if t not in DEVICES:
        raise ValueError(text)
    return t


def _parse_profile(text: str) -> str:
    t = text.strip().lower()
    if t not in profiles.PROFILE_NAMES:
        raise ValueError(text)
    return t


def _parse_choice(*choices: str) -> Callable[[str], str | None]:
    """A parser for a name among ``choices``; "auto" means None (the model's own default)."""
    def parse(text: str) -> str | None:
        t = text.strip().lower()
        if t == "auto":
            return None
        if t not in choices:
            raise ValueError(text)
        return t
    return parse


IMAGE_PRECISIONS = ("fp32", "int8", "int8-conv", "winograd", "int8-winograd", "fp16", "qdq", "int8-ov")  # export/lcm/precisions.py
IMAGE_DECODERS = ("vae", "taesd")
SAM_PRECISIONS = ("fp32", "int8", "qdq", "int8-ov")
SOURCES = ("argument", "flag", "env", "profile", "default")


def setting(env: str, parse: Callable[[str], Any], default: Callable[[], Any], help: str, example: str):
    return field(default_factory=default, metadata={"env": env, "parse": parse, "help": help, "example": example})


@dataclass
class Settings:
    """Runtime settings. Build with :meth:`Settings.from_env`, override with keyword arguments."""

    home: Path = setting("EDGE_HOME", Path, _default_home,
                         "where models and caches live", "/data/edge-run")
    offline: bool = setting("EDGE_OFFLINE", _parse_bool, lambda: False,
                            "forbid any network use", "1")
    ram_budget: int = setting("EDGE_RAM_BUDGET", _parse_bytes, _default_budget,
                              "RAM the loaded models may use (bytes, or 512M / 4G)", "4G")
    threads: int = setting("EDGE_THREADS", int, default_threads,
                           "CPU threads the scheduler hands to engines", "4")
    device: str = setting("EDGE_DEVICE", _parse_device, lambda: "auto",
                          "execution device: " + "|".join(DEVICES), "cpu")
    keep_alive: float = setting("EDGE_KEEP_ALIVE", float, lambda: 300.0,
                                "seconds an idle model stays loaded (-1 = forever, 0 = unload at once)", "600")
    max_queue: int = setting("EDGE_MAX_QUEUE", int, lambda: 64,
                             "jobs that may wait in the scheduler before new ones get Busy", "64")
    ctx: int = setting("EDGE_CTX", int, lambda: 4096,
                       "context window (tokens) chat models are loaded with", "8192")
    chat_slots: int = setting("EDGE_CHAT_SLOTS", int, lambda: 2,
                              "chats a loaded chat model runs at once (decoded in one batch, a KV stream of ctx tokens each)", "2")
    scheduler: str = setting("EDGE_SCHEDULER", _parse_policy, lambda: "lanes",
                             "scheduling policy: lanes (batch work in the OS idle class beside interactive work, "
                             "threads follow the free cores) | priority (one step at a time) | fifo", "lanes")

    profile: str = setting("EDGE_PROFILE", _parse_profile, lambda: "auto",
                           "device profile: " + "|".join(profiles.PROFILE_NAMES) + " (auto picks from the RAM, "
                           "cores and CPU flags; `edge-run devices` shows the pick and why)", "pi4-4gb")
    image_precision: str | None = setting("EDGE_IMAGE_PRECISION", _parse_choice(*IMAGE_PRECISIONS), lambda: None,
                                          "image model precision to load when the model has it: "
                                          + "|".join(IMAGE_PRECISIONS) + "|auto (= the model's default)",
                                          "int8-winograd")
    image_decoder: str | None = setting("EDGE_IMAGE_DECODER", _parse_choice(*IMAGE_DECODERS), lambda: None,
                                        "image decoder when a request does not name one: vae|taesd|auto "
                                        "(= the model's default)", "taesd")
    sam_precision: str | None = setting("EDGE_SAM_PRECISION", _parse_choice(*SAM_PRECISIONS), lambda: None,
                                        "segmentation model precision preferred when several are installed: "
                                        + "|".join(SAM_PRECISIONS) + "|auto", "int8")

    def __post_init__(self) -> None:
        # where each value came from; from_env fills these in (a Settings built directly is all defaults)
        self.sources: dict[str, str] = {f.name: "default" for f in fields(self)}
        self.reasons: dict[str, str] = {}
        self.profile_choice: profiles.Choice | None = None

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, *, facts: profiles.DeviceFacts | None = None,
                 _given_by: str = "argument", _given_none: tuple[str, ...] = (), **overrides: Any) -> "Settings":
        """Read EDGE_* variables; keyword overrides (None = not given) win over them, and both over the
        device profile (``profile``: EDGE_PROFILE, default auto), which wins over the built-in defaults.
        ``facts``: the device to pick for (default: this machine, detected once)."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for f in fields(cls):
            name = f.metadata["env"]
            if overrides.get(f.name) is not None or f.name in _given_none:
                values[f.name], sources[f.name] = overrides.get(f.name), _given_by
            elif env.get(name) not in (None, ""):
                raw = env[name]
                try:
                    values[f.name] = f.metadata["parse"](raw)
                except (ValueError, TypeError):
                    raise BadRequest(f"{name}={raw!r} is not valid: {f.metadata['help']}; for example "
                                     f"{name}={f.metadata['example']}.", param=name) from None
                sources[f.name] = "env"
        # the profile fills what was not given (an explicit "auto" for a precision/decoder is given: None)
        profile = values.get("profile", "auto")
        if profile not in profiles.PROFILE_NAMES:  # a keyword override is not parsed: check it here
            raise BadRequest(f"`profile` must be one of {', '.join(profiles.PROFILE_NAMES)}, got {profile!r}. Use "
                             "e.g. profile='pi4-4gb', or 'auto' to pick from this device.", param="profile")
        facts = facts or device_facts()
        choice = profiles.resolve(profile, facts)
        reasons: dict[str, str] = {}
        for setting_name, (value, why) in choice.profile.values(facts).items():
            if setting_name not in sources:
                values[setting_name], sources[setting_name], reasons[setting_name] = value, "profile", why
        s = cls(**values)
        s.sources.update(sources)
        s.reasons = reasons
        s.profile_choice = choice
        s.validate()
        return s

    @classmethod
    def from_args(cls, args: argparse.Namespace, env: dict[str, str] | None = None) -> "Settings":
        """Settings for a command: its flags (from :func:`add_settings_flags`; absent or None = not
        given) win over the EDGE_* variables, which win over the device profile, which wins over the
        defaults. A bad flag value is a BadRequest naming the flag, the value and an example."""
        overrides: dict[str, Any] = {}
        given_none: list[str] = []
        for f in fields(cls):
            raw = getattr(args, f.name, None)
            if raw is None:
                continue
            if isinstance(raw, bool):
                overrides[f.name] = raw
                continue
            try:
                overrides[f.name] = f.metadata["parse"](str(raw))
            except (ValueError, TypeError):
                flag = "--" + f.name.replace("_", "-")
                raise BadRequest(f"{flag} {raw!r} is not valid: {f.metadata['help']}; for example "
                                 f"{flag} {f.metadata['example']}.", param=flag) from None
            if overrides[f.name] is None:  # `--image-decoder auto`: given; it means the model's default
                given_none.append(f.name)
        return cls.from_env(env, _given_by="flag", _given_none=tuple(given_none), **overrides)

    def validate(self) -> None:
        if self.threads < 1:
            raise BadRequest(f"`threads` must be at least 1, got {self.threads}.", param="threads")
        if self.ram_budget < (64 << 20):
            raise BadRequest(f"`ram_budget` must be at least 64M, got {self.ram_budget} bytes. "
                             "Use e.g. EDGE_RAM_BUDGET=2G.", param="ram_budget")
        if self.max_queue < 1:
            raise BadRequest(f"`max_queue` must be at least 1, got {self.max_queue}.", param="max_queue")
        if not (256 <= self.ctx <= 131072):
            raise BadRequest(f"`ctx` must be between 256 and 131072 tokens, got {self.ctx}. Use e.g. 4096.",
                             param="ctx")
        if self.chat_slots < 1:
            raise BadRequest(f"`chat_slots` must be at least 1, got {self.chat_slots}.", param="chat_slots")
        if self.scheduler not in SCHEDULER_POLICIES:
            raise BadRequest(f"`scheduler` must be one of {', '.join(SCHEDULER_POLICIES)}, got {self.scheduler!r}.",
                             param="scheduler")
        if self.device not in DEVICES:
            raise BadRequest(f"`device` must be one of {', '.join(DEVICES)}, got {self.device!r}.", param="device")

    @property
    def models_dir(self) -> Path:
        return Path(self.home) / "models"

    @property
    def user_lock(self) -> Path:
        """models.lock entries added on this machine (by `edge-run export --add`)."""
        return Path(self.home) / "models.lock"


def add_settings_flags(p: argparse.ArgumentParser) -> None:
    """One --flag per Settings field (same name, same help, same parser as its EDGE_* variable)."""
    g = p.add_argument_group("runtime settings (each also read from its environment variable)")
    for f in fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        if flag in p._option_string_actions:  # the command defines its own (e.g. an export recipe's --threads)
            continue
        if f.type in (bool, "bool"):
            g.add_argument(flag, action="store_const", const=True, default=None,
                           help=f"{f.metadata['help']} [{f.metadata['env']}]")
        else:
            g.add_argument(flag, default=None, metavar=f.metadata["env"].removeprefix("EDGE_"),
                           help=f"{f.metadata['help']} [{f.metadata['env']}]")


def describe() -> list[tuple[str, str, str]]:
    """(env var, default, help) for every setting, for `edge-run --help` and the README."""
    return [(f.metadata["env"], f.metadata["example"], f.metadata["help"]) for f in fields(Settings)]
