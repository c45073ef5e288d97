"""Device profiles: the settings a device's owner would otherwise have to pick (RAM budget, threads, chat
context and slots, image precision and decoder, SAM precision, keep-alive), chosen once per device class.

    PROFILES["pi4-4gb"]                 a frozen Profile; PROFILE_NAMES lists the names (plus "auto")
    detect() -> DeviceFacts             total RAM (a cgroup limit counts as the device's RAM), cores, CPU flags
    pick(facts) -> Choice               what ``auto`` picks for those facts, with the reason (a pure function)
    resolve(name, facts) -> Choice      a named profile, or ``auto``'s pick
    Choice.values(facts)                {setting name: (value, reason)} the profile supplies

edge/config.py applies a profile under the settings a flag or an EDGE_* variable gives (explicit wins,
then the profile, then the built-in default). This module imports only ``edge.cpu`` (no edge/ module
imports it back), so edge/config.py may import it.
"""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

from edge import cpu

GiB = 1 << 30


@dataclass(frozen=True)
class DeviceFacts:
    """What the picker looks at. ``ram_bytes`` is the lower of the machine's RAM and this process's cgroup
    memory limit; ``cores`` the CPUs this process may run on (affinity and cgroup quota)."""

    ram_bytes: int
    cores: int
    flags: frozenset[str] = frozenset()
    machine: str = ""
    board: str = ""
    android: bool = False
    ram_source: str = "/proc/meminfo"

    @property
    def arm(self) -> bool:
        return self.machine.lower() in ("aarch64", "arm64") or self.machine.lower().startswith("armv")

    @property
    def fast_simd(self) -> bool:
        """AVX2 (x86) or the ARMv8.2 dot product (asimddp): what onnxruntime's and llama.cpp's fast int8
        kernels need."""
        return bool(self.flags & {"avx2", "asimddp"})

    def to_dict(self) -> dict:
        return {"ram_bytes": self.ram_bytes, "ram_source": self.ram_source, "cores": self.cores,
                "flags": sorted(self.flags), "machine": self.machine, "board": self.board, "android": self.android}


@dataclass(frozen=True)
class Profile:
    """One device class's choices. None = the built-in default (or the model's own, for precisions).
    ``ram_budget`` is ``min(ram_cap, ram_fraction x the device's RAM)`` so a profile never promises more
    than the device (or its container) has."""

    name: str
    summary: str
    ram_fraction: float
    ram_cap: int | None
    threads: int | None  # at most the cores this process may use; None = all of them
    ctx: int
    chat_slots: int
    image_precision: str | None
    image_decoder: str | None
    sam_precision: str | None
    keep_alive: float
    why: str  # one line: why these choices

    def values(self, facts: DeviceFacts) -> dict[str, tuple[object, str]]:
        """{setting: (value, reason)} for the settings this profile sets (None choices are left out)."""
        budget = int(self.ram_fraction * facts.ram_bytes)
        out: dict[str, tuple[object, str]] = {}
        if self.ram_cap is not None and self.ram_cap < budget:
            out["ram_budget"] = (self.ram_cap, f"{self.ram_cap / GiB:.2f} GiB cap of {self.name}")
        else:
            out["ram_budget"] = (budget, f"{self.ram_fraction:.0%} of {facts.ram_bytes / GiB:.1f} GiB "
                                         f"({facts.ram_source}); the rest is the OS's and the app's")
        if self.threads is not None:
            n = max(1, min(self.threads, facts.cores))
            out["threads"] = (n, f"{self.threads} on {self.name}, at most the {facts.cores} cores this process may use")
        else:
            out["threads"] = (facts.cores, f"every core this process may use ({facts.cores})")
        kv = "half the KV cache of a 4,096-token context" if self.ctx < 4096 else \
            "room for a 4,096-token conversation"
        out["ctx"] = (self.ctx, kv)
        out["chat_slots"] = (self.chat_slots, "one conversation at a time: each slot holds a KV cache"
                             if self.chat_slots == 1 else f"{self.chat_slots} conversations may interleave")
        if self.image_precision is not None:
            out["image_precision"] = (self.image_precision, self.why)
        if self.image_decoder is not None:
            out["image_decoder"] = (self.image_decoder, "TAESD decodes 512x512 in ~1/5 of the VAE's RAM and time")
        if self.sam_precision is not None:
            out["sam_precision"] = (self.sam_precision, "int8 MobileSAM encoder: 4x smaller, faster on small cores")
        out["keep_alive"] = (self.keep_alive, f"idle models leave after {self.keep_alive:g} s on {self.name}")
        return out


_SMALL_WHY = "int8 UNet + Winograd convolutions: the fastest precision on small ARM cores, ~1/4 of fp32's RAM"
PROFILES: dict[str, Profile] = {p.name: p for p in (
    Profile("pi4-4gb", "Raspberry Pi 4 (4 GB), 4x Cortex-A72 without the ARMv8.2 dot product",
            ram_fraction=0.65, ram_cap=int(2.5 * GiB), threads=4, ctx=2048, chat_slots=1,
            image_precision="int8-winograd", image_decoder="taesd", sam_precision="int8", keep_alive=120.0,
            why=_SMALL_WHY),
    Profile("pi5-8gb", "Raspberry Pi 5 (8 GB), 4x Cortex-A76", ram_fraction=0.7, ram_cap=int(5.5 * GiB), threads=4,
            ctx=4096, chat_slots=2, image_precision="int8-winograd", image_decoder="taesd", sam_precision="int8",
            keep_alive=300.0, why=_SMALL_WHY),
    Profile("phone-8gb", "an 8 GB phone (Android kills apps that hold much RAM in the background)",
            ram_fraction=0.5, ram_cap=4 * GiB, threads=4, ctx=4096, chat_slots=1, image_precision="int8-winograd",
            image_decoder="taesd", sam_precision="int8", keep_alive=60.0, why=_SMALL_WHY),
    Profile("laptop", "a laptop or desktop (the built-in defaults)", ram_fraction=0.75, ram_cap=None, threads=None,
            ctx=4096, chat_slots=2, image_precision=None, image_decoder=None, sam_precision=None, keep_alive=300.0,
            why="the model's own default precision and decoder"),
)}
PROFILE_NAMES = ("auto", *PROFILES)


@dataclass(frozen=True)
class Choice:
    """A profile and why it applies (``picked_by``: "auto" or "named")."""

    profile: Profile
    reason: str
    picked_by: str = "named"

    @property
    def name(self) -> str:
        return self.profile.name


def pick(facts: DeviceFacts) -> Choice:
    """The profile ``auto`` gives a device with these facts: RAM first (it decides what can load), then
    Android, then whether the CPU has fast int8 kernels."""
    ram = facts.ram_bytes / GiB
    if ram < 5:
        return Choice(PROFILES["pi4-4gb"], f"{ram:.1f} GiB of RAM (< 5 GiB): a 4 GB-class device", "auto")
    if facts.android:
        return Choice(PROFILES["phone-8gb"], f"Android with {ram:.1f} GiB of RAM", "auto")
    if ram < 12 and (facts.arm or not facts.fast_simd):
        cpu_kind = "an ARM CPU" if facts.arm else "no AVX2"
        return Choice(PROFILES["pi5-8gb"], f"{ram:.1f} GiB of RAM (< 12 GiB) and {cpu_kind}: a Pi 5-class device",
                      "auto")
    return Choice(PROFILES["laptop"], f"{ram:.1f} GiB of RAM, {facts.cores} cores"
                  + (", AVX2" if "avx2" in facts.flags else ""), "auto")


def resolve(name: str, facts: DeviceFacts | None = None) -> Choice:
    """The named profile, or ``auto``'s pick for ``facts`` (detected when None). ``name`` is checked by
    the caller (edge/config.py refuses unknown names naming EDGE_PROFILE)."""
    if name == "auto":
        return pick(facts or detect())
    return Choice(PROFILES[name], f"named by --profile / EDGE_PROFILE")


# ---------------------------------------------------------------------------------------------- detection


def _read(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace").strip()
    except OSError:
        return ""


def _own_cgroup_dirs(controller: str, root: str) -> list[str]:
    """This process's cgroup folders for ``controller`` (v1: /proc/self/cgroup names the group inside the
    mounted hierarchy; v2: the unified "0::" line), innermost first, up to the mount root."""
    out = []
    for line in _read("/proc/self/cgroup").splitlines():
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if (controller in controllers.split(",")) or (controllers == "" and line.startswith("0::")):
            parts = [p for p in path.strip().split("/") if p]
            out += [root + "/" + "/".join(parts[:n]) if n else root for n in range(len(parts), -1, -1)]
    return out


def cgroup_memory_limit() -> int | None:
    """The tightest cgroup memory limit over this process's group and its parents in bytes (v2 ``memory.max``,
    v1 ``memory.limit_in_bytes``), or None when there is none. The group comes from /proc/self/cgroup, so a
    process placed in a capped child group (a container, a systemd slice, a test harness) sees its cap."""
    limits = []
    dirs = _own_cgroup_dirs("memory", "/sys/fs/cgroup/memory") + _own_cgroup_dirs("", "/sys/fs/cgroup")
    for folder in dirs + ["/sys/fs/cgroup/memory", "/sys/fs/cgroup"]:
        for name in ("memory.limit_in_bytes", "memory.max"):
            text = _read(f"{folder}/{name}")
            if text.isdigit() and int(text) < (1 << 60):  # v1 writes a huge number for "no limit"
                limits.append(int(text))
    return min(limits) if limits else None


def cgroup_cpu_limit() -> float | None:
    """CPUs this process's cgroup may use (v2 ``cpu.max`` quota / period), or None when unlimited."""
    quota, _, period = _read("/sys/fs/cgroup/cpu.max").partition(" ")
    if quota.isdigit() and period.strip().isdigit() and int(period) > 0:
        return int(quota) / int(period)
    return None


def detect() -> DeviceFacts:
    """The facts of the machine this process runs on."""
    import psutil

    ram, source = int(psutil.virtual_memory().total), "/proc/meminfo"
    limit = cgroup_memory_limit()
    if limit is not None and limit < ram:
        ram, source = limit, "cgroup memory limit"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cgroup_cpu_limit()
    if quota is not None:
        cores = max(1, min(cores, int(quota)))
    board = _read("/proc/device-tree/model").rstrip("\x00")
    android = "ANDROID_ROOT" in os.environ or hasattr(sys, "getandroidapilevel")
    return DeviceFacts(ram_bytes=ram, cores=cores, flags=cpu.cpu_flags(), machine=platform.machine(), board=board,
                       android=android, ram_source=source)
