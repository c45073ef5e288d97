"""Fixtures for the playground's browser tests: one real `edge-run serve` process whose EDGE_HOME holds
the real SmolLM2 chat model plus the tiny seeded LCM and MobileSAM exports (built through the real
recipes, with the helpers of tests/image and tests/segment), and a real headless Debian Chromium
driven by Python playwright (never a downloaded browser)."""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent
ARTIFACTS = Path(os.environ.get("EDGE_WEB_ARTIFACTS", Path(__file__).resolve().parent / "artifacts"))
CHROMIUM = os.environ.get("EDGE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
IMAGE_MODEL = "lcm-tiny-random"
SEG_MODEL = "mobilesam-tiny-test"


def _load(name: str, path: Path):
    """Import another test folder's conftest under its own name (they are not a package)."""
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


root_conftest = _load("edge_tests_root_conftest", TESTS / "conftest.py")
seg_conftest = _load("edge_tests_segment_conftest", TESTS / "segment" / "conftest.py")
CHAT_MODEL = root_conftest.CHAT_MODEL


def _export_key(files: tuple[str, ...]) -> str:
    """Exports are cached between runs, keyed by the code that builds them and the exporting libraries."""
    h = hashlib.sha256()
    for p in files:
        h.update((ROOT / p).read_bytes())
    for dist in ("torch", "onnx", "onnxruntime", "diffusers", "transformers", "mobilesam-mirror"):
        try:
            h.update(f"{dist}={importlib.metadata.version(dist)}".encode())
        except importlib.metadata.PackageNotFoundError:
            pass
    return h.hexdigest()[:16]


def _build_lcm(out: Path) -> None:
    """`edge-run export lcm --random-init tiny --precisions fp32` (the recipe verifies itself)."""
    from export.recipes import lcm_onnx

    p = argparse.ArgumentParser()
    lcm_onnx.add_arguments(p)
    lcm_onnx.run(p.parse_args(["--random-init", "tiny", "--out", str(out), "--precisions", "fp32",
                               "--threads", str(root_conftest.THREADS), "--no-progress"]))


def _build_sam(out: Path) -> None:
    from export.recipes.sam_onnx import build_sam

    seg_conftest._export(build_sam("tiny", seed=0), out, "fp32")


@pytest.fixture(scope="session")
def web_exports() -> dict[str, Path]:
    """The tiny LCM and MobileSAM export folders (built at most once per session, then cached)."""
    out = {}
    root = root_conftest.CACHE / "web-exports"
    for name, build, code in (
            ("lcm", _build_lcm, ("export/recipes/lcm_onnx.py", "export/artifacts.py")),
            ("sam", _build_sam, ("export/recipes/sam_onnx.py", "export/artifacts.py", "tests/segment/conftest.py"))):
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


@pytest.fixture(scope="session")
def web_home(web_exports, chat_model_path, tmp_path_factory) -> Path:
    """A fresh EDGE_HOME with all three workloads installed through the registry."""
    from edge.config import Settings
    from edge.registry import add_local_model

    home = tmp_path_factory.mktemp("edge-home-web")
    s = Settings.from_env(env={}, home=home)
    add_local_model(s, web_exports["lcm"], model_id=IMAGE_MODEL, task="image", fmt="onnx", license="Apache-2.0",
                    source={"recipe": "lcm", "random_init": "tiny", "seed": 0})
    add_local_model(s, web_exports["sam"], model_id=SEG_MODEL, task="segment", fmt="onnx", license="Apache-2.0",
                    source={"recipe": "sam", "random_init": "tiny", "seed": 0})
    dest = home / "models" / CHAT_MODEL
    dest.mkdir(parents=True, exist_ok=True)
    try:
        os.link(chat_model_path, dest / "model.gguf")
    except OSError:
        shutil.copy(chat_model_path, dest / "model.gguf")
    return home


@pytest.fixture(scope="session")
def web_server(web_home):
    """A real `edge-run serve` process (offline) over web_home."""
    srv = root_conftest.ServerProcess(web_home, env=root_conftest.edge_env(
        web_home, EDGE_OFFLINE="1", EDGE_KEEP_ALIVE="-1", EDGE_MAX_QUEUE="64"))
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def browser_context(tmp_path_factory):
    """Headless Debian Chromium with a fresh profile; every request it makes is recorded."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium); "
                    "the tests never download a browser")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM, headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1280, "height": 900})
        ctx.requests = []  # every URL the browser asked for, whatever the page
        ctx.on("request", lambda req: ctx.requests.append(req.url))
        yield ctx
        ctx.close()


@pytest.fixture()
def page(browser_context, web_server):
    """A fresh tab on the playground; page.console_errors collects JS errors."""
    pg = browser_context.new_page()
    pg.console_errors = []
    pg.on("pageerror", lambda e: pg.console_errors.append(str(e)))
    pg.on("console", lambda m: m.type == "error" and pg.console_errors.append(m.text))
    pg.goto(web_server.url + "/")
    pg.wait_for_selector("#status-models[data-ready='1']", timeout=20_000)
    yield pg
    pg.close()
