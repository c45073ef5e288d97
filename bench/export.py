"""Export benchmark: seconds and peak RSS of `edge-run export lcm` per precision, against the laptop target
(issue 19: every precision of the SD1.5-size export within 6 GB), this checkout vs a baseline revision.

    python bench/export.py                       # --random-init sd15: fp32,int8-winograd, then fp32 + each other
    python bench/export.py --runs fp32,int8-winograd --baseline 6f4aaab --json export.json
    python bench/export.py --quick               # the tiny preset (seconds; checks the bench itself)

Each run is a fresh `python -m edge.cli export lcm --random-init PRESET --precisions P` child process. Its
peak RSS is the kernel's high-water mark of that child (``ru_maxrss`` from ``wait4``: exact, no sampling);
its report.json adds the seconds and the sampled peak of every stage (``resources``), which names the stage
that sets the peak. ``--baseline REV`` runs the same commands on ``git archive REV`` (the tree as it was,
in a temp folder; the working tree and its index are not touched); old revisions write no ``resources``.
Times depend on what else the machine runs; peaks do not.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._common import table  # noqa: E402

TARGET_GB = 6.0
PRECISIONS = ("int8", "int8-conv", "winograd", "int8-winograd", "fp16", "qdq")
DEFAULT_RUNS = ["fp32,int8-winograd"] + [f"fp32,{p}" for p in PRECISIONS if p != "int8-winograd"]
GB = 1e9


def run_export(code: Path, preset: str, precisions: str, out: Path, extra: list[str]) -> dict:
    """One export in a child process (the tree at ``code``): exit code, seconds, ru_maxrss, report resources."""
    env = dict(os.environ, PYTHONPATH=str(code), PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "edge.cli", "export", "lcm", "--random-init", preset, "--precisions", precisions,
           "--out", str(out), "--overwrite", "--no-progress", *extra]
    log = out.with_suffix(".log")
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=code, env=env, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    row = {"precisions": precisions, "code": str(code), "exit": proc.returncode, "seconds": round(seconds, 1),
           "peak_rss_bytes": usage.ru_maxrss * 1024, "log": str(log)}
    report = out / "report.json"
    if proc.returncode == 0 and report.exists():
        r = json.loads(report.read_text())
        row["resources"] = r.get("resources")
        row["image"] = {p: v["image"] for p, v in r["precisions"].items()}
    else:
        row["tail"] = log.read_text()[-2000:]
    return row


def heaviest(row: dict) -> str:
    stages = (row.get("resources") or {}).get("stages") or {}
    if not stages:
        return "-"
    name, s = max(stages.items(), key=lambda kv: kv[1]["peak_rss_bytes"])
    return f"{name} ({s['peak_rss_bytes'] / GB:.2f} GB)"


def baseline_tree(rev: str, into: Path) -> Path:
    """The files of revision ``rev`` in ``into`` (git archive: no worktree, no index change)."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the tiny preset instead of sd15")
    ap.add_argument("--runs", nargs="+", default=None, metavar="PRECISIONS",
                    help=f"one export per comma list (default: {' '.join(DEFAULT_RUNS)})")
    ap.add_argument("--baseline", default=None, metavar="REV", help="also run each export on git revision REV")
    ap.add_argument("--target-gb", type=float, default=TARGET_GB, help="peak RSS target (default 6 GB)")
    ap.add_argument("--work", default=None, help="folder for the exports (default: a temp folder, removed)")
    ap.add_argument("--json", default=None, help="write every figure here")
    args = ap.parse_args(argv)

    preset = "tiny" if args.quick else "sd15"
    extra = ["--winograd-size", "256"] if args.quick else []  # the tiny UNet's convolutions are < 16 px at 64 px
    runs = args.runs or (["fp32,int8-winograd"] if args.quick else DEFAULT_RUNS)
    work = Path(args.work or tempfile.mkdtemp(prefix="edge-bench-export-")).absolute()
    work.mkdir(parents=True, exist_ok=True)
    trees = {"this checkout": ROOT}
    if args.baseline:
        trees[f"baseline {args.baseline}"] = baseline_tree(args.baseline, work / "baseline-src")
    rows, results = [], []
    try:
        for precisions in runs:
            for label, code in trees.items():
                out = work / f"{label.split()[0]}-{precisions.replace(',', '+')}"
                print(f"# {label}: export lcm --random-init {preset} --precisions {precisions}", flush=True)
                r = run_export(code, preset, precisions, out, extra)
                r["label"] = label
                results.append(r)
                peak = r["peak_rss_bytes"] / GB
                ok = "FAILED" if r["exit"] else ("yes" if peak <= args.target_gb else "NO")
                rows.append([precisions, label, round(r["seconds"]), round(peak, 2), f"<= {args.target_gb:g}", ok,
                             heaviest(r)])
                if r["exit"]:
                    print(r["tail"], file=sys.stderr)
                shutil.rmtree(out, ignore_errors=True)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(f"`edge-run export lcm --random-init {preset}`, one child process per row; peak = ru_maxrss of the child")
    print(table(["precisions", "code", "seconds", "peak RSS GB", "target GB", "within", "heaviest stage (sampled)"],
                rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"preset": preset, "target_gb": args.target_gb, "runs": results},
                                              indent=1))
    return 0 if all(r["exit"] == 0 and r["peak_rss_bytes"] / GB <= args.target_gb for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
