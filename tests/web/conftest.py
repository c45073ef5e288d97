"""Fixtures for the playground's browser tests: one real `edge-run serve` process whose EDGE_HOME holds
the real SmolLM2 chat model plus the tiny seeded LCM and MobileSAM exports (built through the real
recipes by tests/support.py), and a real headless Debian Chromium
driven by Python playwright (never a downloaded browser)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from support import ServerProcess, edge_env

ARTIFACTS = Path(os.environ.get("EDGE_WEB_ARTIFACTS", Path(__file__).resolve().parent / "artifacts"))
CHROMIUM = os.environ.get("EDGE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]




@pytest.fixture(scope="session")
def web_home(workloads_home) -> Path:
    """A fresh EDGE_HOME with all three workloads (tests/conftest.py builds and caches the tiny exports)."""
    return workloads_home


@pytest.fixture(scope="session")
def web_server(web_home):
    """A real `edge-run serve` process (offline) over web_home."""
    srv = ServerProcess(web_home, env=edge_env(
        web_home, EDGE_OFFLINE="1", EDGE_KEEP_ALIVE="-1", EDGE_MAX_QUEUE="64"))
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def pw():
    """Python playwright, started once (its sync API cannot be started twice in one thread)."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium); "
                    "the tests never download a browser")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        yield p


def _context(pw, profile: Path, **options):
    """Headless Debian Chromium with a fresh profile; every request it makes is recorded."""
    ctx = pw.chromium.launch_persistent_context(str(profile), executable_path=CHROMIUM, headless=True,
                                                args=CHROMIUM_ARGS, **options)
    ctx.requests = []  # every URL the browser asked for, whatever the page
    ctx.on("request", lambda req: ctx.requests.append(req.url))
    return ctx


@pytest.fixture(scope="session")
def browser_context(pw, tmp_path_factory):
    """A desktop window: 1280 x 900, a mouse."""
    ctx = _context(pw, tmp_path_factory.mktemp("chromium-profile"), viewport={"width": 1280, "height": 900})
    yield ctx
    ctx.close()


@pytest.fixture(scope="module")
def desktop_context(pw, tmp_path_factory):
    """Another desktop window, for pages of other servers than web_server (browser_context's requests
    must all go to web_server: test_page_talks_to_no_other_host reads them)."""
    ctx = _context(pw, tmp_path_factory.mktemp("chromium-desktop"), viewport={"width": 1280, "height": 900})
    yield ctx
    ctx.close()


@pytest.fixture(scope="module")
def phone_context(pw, tmp_path_factory):
    """A phone: 390 x 844 CSS px, a touch screen (touch events, no mouse), the mobile viewport rules."""
    ctx = _context(pw, tmp_path_factory.mktemp("chromium-phone"), viewport={"width": 390, "height": 844},
                   device_scale_factor=2, is_mobile=True, has_touch=True)
    yield ctx
    ctx.close()


def _open_page(ctx, url: str):
    """A fresh tab on the playground at ``url``, once its first /v1/models answer is shown;
    page.console_errors collects JS errors."""
    pg = ctx.new_page()
    pg.console_errors = []
    pg.on("pageerror", lambda e: pg.console_errors.append(str(e)))
    pg.on("console", lambda m: m.type == "error" and pg.console_errors.append(m.text))
    pg.goto(url + "/")
    pg.wait_for_selector("#status-models[data-ready='1']", timeout=20_000)
    return pg


@pytest.fixture(scope="session")
def open_page():
    """open_page(context, server_url): a tab on another server or in another browser context."""
    return _open_page


@pytest.fixture()
def page(browser_context, web_server):
    """A fresh tab on the playground (every workload installed)."""
    pg = _open_page(browser_context, web_server.url)
    yield pg
    pg.close()


@pytest.fixture()
def bare_server(tmp_path):
    """A real `edge-run serve` over an empty EDGE_HOME: no model installed (each test gets its own, as
    tests may install into it)."""
    home = tmp_path / "home"
    home.mkdir()
    srv = ServerProcess(home, env=edge_env(home, EDGE_OFFLINE="1", EDGE_KEEP_ALIVE="-1"))
    srv.home = home
    yield srv
    srv.stop()
