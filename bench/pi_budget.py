"""The Raspberry Pi budget, proven under a kernel-enforced memory cap (issue 20.3).

    python bench/pi_budget.py [--caps 3.5G,2G] [--profile pi4-4gb] [--json out.json]

One process (the Python API, as a Pi app uses it) runs: chat -> a 512x512 4-step image with the SD1.5-size
LCM at the profile's precision and decoder -> segmentation clicks on a 1024-px photo (MobileSAM size) ->
chat again -> another image. It runs once without a cap (the reference) and once per cap inside a cgroup v1
memory group (``memory.limit_in_bytes``, and ``memory.memsw.limit_in_bytes`` when swap accounting exists;
RLIMIT_AS where cgroups are not writable). Per phase: the process's peak RSS (VmHWM, reset before each phase
through /proc/self/clear_refs) and the cgroup's peak; the evictions in order; whether the kernel OOM-killed
anything; and whether every output (chat text, image PNG pixels, masks) is identical to the uncapped run's.

The models are full-size architectures with seeded random weights (speed and memory do not depend on the
weight values), exported once into ~/.cache/edge-run-bench and installed into a bench EDGE_HOME.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CACHE = Path.home() / ".cache" / "edge-run-bench"
LCM_DIR = CACHE / "lcm-sd15-random"          # shared with bench/image.py
SAM_DIR = CACHE / "sam-mobilesam-random-int8"
CGROUP_ROOT = Path("/sys/fs/cgroup/memory")
GiB = 1 << 30


def _size(text: str) -> int:
    from edge.config import _parse_bytes

    return _parse_bytes(text)


# ---------------------------------------------------------------------------------------------- setup
def ensure_exports() -> tuple[Path, Path]:
    """The SD1.5-size LCM (fp32 + int8-winograd, with TAESD) and MobileSAM-size SAM (int8) exports, made once."""
    if not (LCM_DIR / "edge-model.json").exists():
        print(f"# exporting the SD1.5-size LCM to {LCM_DIR} (once, minutes) ...", flush=True)
        subprocess.run([sys.executable, "-m", "edge.cli", "export", "lcm", "--random-init", "sd15", "--precisions",
                        "fp32,int8,int8-winograd", "--default-precision", "int8-winograd", "--out", str(LCM_DIR),
                        "--overwrite", "--no-progress"], check=True)
    manifest = json.loads((LCM_DIR / "edge-model.json").read_text())
    if "int8-winograd" not in manifest.get("precisions", {}):
        raise SystemExit(f"{LCM_DIR} has no int8-winograd precision; delete it and run again")
    if not (SAM_DIR / "edge-model.json").exists():
        print(f"# exporting the MobileSAM-size SAM to {SAM_DIR} (once) ...", flush=True)
        subprocess.run([sys.executable, "-m", "edge.cli", "export", "sam", "--random-init", "mobilesam",
                        "--precision", "int8", "--out", str(SAM_DIR), "--overwrite"], check=True)
    return LCM_DIR, SAM_DIR


def ensure_home(home: Path, lcm: Path, sam: Path) -> Path:
    """A bench EDGE_HOME with the default chat model and the two exports installed (pinned in its lock)."""
    from edge.config import Settings
    from edge.registry import Catalog, Store, add_local_model

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import bench_home

    s = Settings.from_env(env={}, home=home)
    cat = Catalog(s.user_lock)
    chat = next(e for e in cat if e.default and e.task == "chat")
    if not Store(s).is_installed(chat):
        src = bench_home() / "models" / chat.id
        shutil.copytree(src, s.models_dir / chat.id, dirs_exist_ok=True)
    for folder, mid, task in ((lcm, "lcm-sd15-random", "image"), (sam, "mobilesam-random-int8", "segment")):
        if mid not in cat.entries or not Store(s).is_installed(cat.entries[mid]):
            print(f"# installing {mid} into {home} ...", flush=True)
            add_local_model(s, folder, model_id=mid, task=task, fmt="onnx", license="Apache-2.0",
                            description="seeded random weights, full-size architecture (bench)")
    return home


def photo_1024() -> "np.ndarray":
    """A deterministic 1024x768 photo-like image: gradients, discs and boxes (what SAM segments)."""
    import numpy as np

    h, w = 768, 1024
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([x / w * 180 + 40, y / h * 160 + 50, (x + y) / (w + h) * 120 + 60], -1)
    for cx, cy, r, col in ((300, 380, 150, (230, 60, 50)), (720, 300, 110, (40, 90, 220)), (640, 600, 80, (250, 210, 40))):
        img[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = col
    img[100:220, 80:260] = (30, 160, 70)
    return img.clip(0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------- child
def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        pass


def _own_cgroup() -> Path | None:
    """The capped group the parent put this child in (None for the uncapped reference run)."""
    if not os.environ.get("EDGE_PI_CAPPED"):
        return None
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            p = CGROUP_ROOT / path.lstrip("/")
            return p if path != "/" and (p / "memory.max_usage_in_bytes").exists() else None
    return None


def child(home: Path, profile: str, out: Path, ram_budget: str | None = None) -> int:
    """The phases, in this process; writes the figures and the output hashes to ``out``."""
    import numpy as np

    from edge.api import Runtime

    cg = _own_cgroup()
    phases: list[dict] = []
    outputs: dict[str, str] = {}
    rt = Runtime(home=str(home), profile=profile, ram_budget=ram_budget)
    photo = photo_1024()

    def phase(name: str, fn) -> None:
        _reset_peak()
        if cg is not None:
            (cg / "memory.max_usage_in_bytes").write_text("0")
        t0 = time.perf_counter()
        error = None
        try:
            outputs[name] = fn()
        except Exception as e:  # noqa: BLE001 - an OutOfMemory is a figure here, not a crash
            error = f"{e.__class__.__name__}: {getattr(e, 'message', e)}"
        phases.append({"phase": name, "seconds": round(time.perf_counter() - t0, 2), "peak_rss": _status("VmHWM"),
                       "rss_after": _status("VmRSS"),
                       "cgroup_peak": int((cg / "memory.max_usage_in_bytes").read_text()) if cg else None,
                       "loaded": [m["id"] for m in rt.ps()], "error": error,
                       "evicted": [list(e) for e in rt.scheduler.metrics.evicted]})
        print(f"#   {name}: {phases[-1]['seconds']} s, peak RSS {phases[-1]['peak_rss'] / 2**20:.0f} MiB"
              + (f", error {error}" if error else ""), flush=True)

    def chat(q: str):
        return lambda: hashlib.sha256(rt.chat([{"role": "user", "content": q}], temperature=0, max_tokens=48,
                                              seed=1).text.encode()).hexdigest()

    def image(prompt: str, seed: int):
        def run():
            imgs = rt.imagine(prompt, size="512x512", steps=4, seed=seed)
            arr = np.asarray(imgs[0].image if hasattr(imgs[0], "image") else imgs[0])
            return hashlib.sha256(arr.tobytes()).hexdigest()
        return run

    def clicks():
        h = hashlib.sha256()
        first = rt.segment(photo, points=[(300, 380, 1)])
        h.update(np.stack([m.mask for m in first.masks]).tobytes())
        for pts in ([(720, 300, 1)], [(640, 600, 1), (300, 380, 0)], [(170, 160, 1)]):
            h.update(np.stack([m.mask for m in rt.segment(image_id=first.image_id, points=pts).masks]).tobytes())
        return h.hexdigest()

    try:
        phase("chat", chat("Name three colours of the rainbow."))
        phase("image", image("a lighthouse at dusk", 7))
        phase("segment", clicks)
        phase("chat again", chat("What is the capital of France?"))
        phase("image again", image("a red bicycle by a canal", 8))
    finally:
        rt.close()
    out.write_text(json.dumps({"phases": phases, "outputs": outputs, "settings": {
        "profile": profile, "ram_budget": rt.settings.ram_budget, "threads": rt.settings.threads}}, indent=1))
    return 0


# ---------------------------------------------------------------------------------------------- parent
def run_capped(home: Path, profile: str, cap: int | None, work: Path, ram_budget: str | None = None) -> dict:
    """The child under ``cap`` bytes (None: no cap): its figures, exit status and the kernel's OOM count."""
    out = work / f"result-{cap or 'uncapped'}.json"
    out.unlink(missing_ok=True)
    argv = [sys.executable, __file__, "--child", "--home", str(home), "--profile", profile, "--out", str(out),
            *(["--ram-budget", ram_budget] if ram_budget else [])]
    cg = None
    preexec = None
    how = "none"
    if cap is not None:
        if os.access(CGROUP_ROOT, os.W_OK):
            cg = CGROUP_ROOT / f"edge-pi-{os.getpid()}-{cap}"
            cg.mkdir(exist_ok=True)
            (cg / "memory.limit_in_bytes").write_text(str(cap))
            if (cg / "memory.memsw.limit_in_bytes").exists():
                (cg / "memory.memsw.limit_in_bytes").write_text(str(cap))
            procs = cg / "cgroup.procs"
            how = "cgroup v1 memory.limit_in_bytes"

            def preexec():
                procs.write_text(str(os.getpid()))
        else:
            how = "RLIMIT_AS"

            def preexec():
                resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    t0 = time.perf_counter()
    proc = subprocess.run(argv, preexec_fn=preexec, env={**os.environ, **({"EDGE_PI_CAPPED": "1"} if cap else {})})
    res = {"cap": cap, "how": how, "exit": proc.returncode, "seconds": round(time.perf_counter() - t0, 1),
           "oom_killed": proc.returncode == -9}
    if cg is not None:
        control = (cg / "memory.oom_control").read_text()
        res["oom_kill_count"] = int(next((l.split()[1] for l in control.splitlines() if l.startswith("oom_kill ")), 0))
        res["failcnt"] = int((cg / "memory.failcnt").read_text())
        res["cgroup_peak_total"] = int((cg / "memory.max_usage_in_bytes").read_text())
        cg.rmdir()
    if out.exists():
        res.update(json.loads(out.read_text()))
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--caps", default="3.5G,2G", help="memory caps to run under, comma-separated (default 3.5G,2G)")
    p.add_argument("--profile", default="pi4-4gb", help="device profile (default pi4-4gb)")
    p.add_argument("--home", default=str(CACHE / "pi-home"), help="bench EDGE_HOME")
    p.add_argument("--json", default=None, help="write all figures here")
    p.add_argument("--ram-budget", default=None, help="override the profile's RAM budget (e.g. 1.6G)")
    p.add_argument("--no-reference", action="store_true", help="skip the uncapped run (outputs are not compared)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        return child(Path(a.home), a.profile, Path(a.out), a.ram_budget)
    lcm, sam = ensure_exports()
    home = ensure_home(Path(a.home), lcm, sam)
    work = Path(a.home).parent / "pi-work"
    work.mkdir(parents=True, exist_ok=True)
    caps = [_size(c) for c in a.caps.split(",") if c.strip()]
    flags = sorted({f for f in Path("/proc/cpuinfo").read_text().split() if f in ("avx2", "avx512f", "avx512_vnni",
                                                                                   "amx_tile", "asimddp")})
    print(f"# {os.cpu_count()} CPUs, flags {','.join(flags) or '-'}; profile {a.profile}; caps {a.caps}", flush=True)
    runs = []
    for cap in ([] if a.no_reference else [None]) + caps:
        print(f"# run: {'no cap' if cap is None else f'cap {cap / GiB:.2f} GiB'}", flush=True)
        runs.append(run_capped(home, a.profile, cap, work, a.ram_budget))
    ref = runs[0].get("outputs", {}) if not a.no_reference else {}
    print("\n| cap | phase | seconds | peak RSS | cgroup peak | loaded after | error |")
    print("|---|---|---|---|---|---|---|")
    for r in runs:
        cap = "none" if r["cap"] is None else f"{r['cap'] / GiB:.2f} GiB"
        for ph in r.get("phases", []):
            cgp = f"{ph['cgroup_peak'] / 2**20:,.0f} MiB" if ph.get("cgroup_peak") else "-"
            print(f"| {cap} | {ph['phase']} | {ph['seconds']} | {ph['peak_rss'] / 2**20:,.0f} MiB | {cgp} | "
                  f"{', '.join(ph['loaded']) or '-'} | {ph['error'] or ''} |")
    print()
    for r in runs[0 if a.no_reference else 1:]:
        same = {k: r.get("outputs", {}).get(k) == v for k, v in ref.items()}
        evicted = r["phases"][-1]["evicted"] if r.get("phases") else []
        print(f"cap {r['cap'] / GiB:.2f} GiB ({r['how']}): exit {r['exit']}, OOM kills {r.get('oom_kill_count', '-')}, "
              f"budget {r.get('settings', {}).get('ram_budget', 0) / GiB:.2f} GiB, outputs identical to uncapped: "
              f"{all(same.values()) and len(same) == len(r.get('outputs', {}))} {same}")
        print("  evictions in order: " + ("; ".join(f"{m} ({why})" for m, why in evicted) or "none"))
    if a.json:
        Path(a.json).write_text(json.dumps({"flags": flags, "runs": runs}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
