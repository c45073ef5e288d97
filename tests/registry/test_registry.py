"""models.lock parsing, the store, and every source kind — HTTP ones against real local servers."""

from __future__ import annotations

import hashlib
import http.server
import os
import threading
from pathlib import Path

import pytest

from edge.config import Settings
from edge.errors import BadRequest, DownloadError, IntegrityError, ModelNotFound, ModelNotInstalled, OfflineError
from edge.registry import Catalog, Store, parse_lock
from edge.registry.lock import append_entry, parse_recipes

PAYLOAD = os.urandom(3 * (1 << 20) + 12345)
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class FileServer(http.server.ThreadingHTTPServer):
    """Serves PAYLOAD at any path with Range support; can cut the first response short; also
    answers like the Hugging Face hub's resolve endpoint (X-Repo-Commit, ETag)."""

    def __init__(self, cut_first_after: int | None = None):
        self.cut = cut_first_after
        self.requests: list[tuple[str, str, str | None]] = []
        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def _headers(self, start: int):
        body_len = len(PAYLOAD) - start
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(body_len))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{SHA}"')
        self.send_header("X-Repo-Commit", "0123456789abcdef0123456789abcdef01234567")
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        self.end_headers()

    def _start(self) -> int:
        rng = self.headers.get("Range")
        self.server.requests.append((self.command, self.path, rng))
        return int(rng.split("=")[1].split("-")[0]) if rng else 0

    def do_HEAD(self):
        self._start()
        self._headers(0)

    def do_GET(self):
        start = self._start()
        self._headers(start)
        body = PAYLOAD[start:]
        if self.server.cut is not None:
            body, self.server.cut = body[: self.server.cut], None
            self.wfile.write(body)
            self.wfile.flush()
            self.connection.shutdown(2)
            return
        self.wfile.write(body)


def lock_for(source: dict, sha: str = SHA, size: int = len(PAYLOAD), mid: str = "m1") -> str:
    src = ", ".join(f'{k} = "{v}"' for k, v in source.items())
    return f"""
[[model]]
id = "{mid}"
task = "chat"
format = "gguf"
license = "MIT"
[[model.files]]
name = "model.gguf"
sha256 = "{sha}"
size = {size}
source = {{ {src} }}
"""


@pytest.fixture
def settings(tmp_path, monkeypatch) -> Settings:
    return Settings.from_env(env={}, home=tmp_path / "home")


def entry_from(text: str, tmp_path: Path):
    lock = tmp_path / "test.lock"
    lock.write_text(text)
    return parse_lock(text, str(lock))[0]


def test_bundled_lock_pins_the_default_model():
    e = Catalog(None).get("smollm2-135m-instruct-q4_1")
    assert e.task == "chat" and e.format == "gguf" and e.default
    assert e.files[0].source["kind"] == "pypi" and e.files[0].size == 98362432


def test_unknown_id_suggests_close_ids():
    with pytest.raises(ModelNotFound, match=r"smollm2-135m-instruct-q4_1"):
        Catalog(None).get("smollm2-135m-instruct-q4")


@pytest.mark.parametrize("bad, msg", [
    ('id = "x"\ntask = "video"\nformat = "gguf"', "task 'video'"),
    ('id = "x"\ntask = "chat"\nformat = "safetensors"', "format 'safetensors'"),
    ('id = "x"\ntask = "chat"\nformat = "gguf"\n[[model.files]]\nname = "a"\nsha256 = "zz"\nsize = 1\n'
     'source = { kind = "file", path = "a" }', "not 64 hex digits"),
    ('id = "x"\ntask = "chat"\nformat = "gguf"\n[[model.files]]\nname = "../a"\nsha256 = "' + "0" * 64 +
     '"\nsize = 1\nsource = { kind = "file", path = "a" }', "relative path"),
])
def test_malformed_lock_entries_are_rejected_with_the_reason(bad, msg):
    with pytest.raises(BadRequest, match=msg):
        parse_lock("[[model]]\n" + bad)


def test_https_download_resumes_after_an_interruption(settings, tmp_path):
    srv = FileServer(cut_first_after=1 << 20)
    try:
        entry = entry_from(lock_for({"kind": "https", "url": srv.url + "/m.gguf"}), tmp_path)
        store = Store(settings)
        with pytest.raises(DownloadError, match="interrupted.*resumes"):
            store.pull(entry)
        partial = store.file_path(entry, entry.files[0]).with_name("model.gguf.partial")
        assert partial.stat().st_size == 1 << 20
        assert not store.file_path(entry, entry.files[0]).exists()  # never a half file under the real name
        m = store.pull(entry)
        assert m.files["model.gguf"].read_bytes() == PAYLOAD
        assert srv.requests[-1][2] == f"bytes={1 << 20}-", "the second pull did not resume with a Range request"
    finally:
        srv.shutdown()


def test_mismatching_download_is_deleted_and_named(settings, tmp_path):
    srv = FileServer()
    try:
        wrong = "ab" * 32
        entry = entry_from(lock_for({"kind": "https", "url": srv.url + "/m.gguf"}, sha=wrong), tmp_path)
        store = Store(settings)
        with pytest.raises(IntegrityError) as err:
            store.pull(entry)
        msg = str(err.value)
        assert "model.gguf" in msg and wrong in msg and SHA in msg and "edge-run pull m1 --force" in msg
        d = store.model_dir("m1")
        assert not any(p.name.startswith("model.gguf") for p in d.iterdir())
    finally:
        srv.shutdown()


def test_corrupted_installed_file_is_never_loaded(settings, tmp_path):
    src = tmp_path / "src.gguf"
    src.write_bytes(PAYLOAD)
    entry = entry_from(lock_for({"kind": "file", "path": str(src)}), tmp_path)
    store = Store(settings)
    store.pull(entry)
    path = store.file_path(entry, entry.files[0])
    with open(path, "r+b") as f:  # flip one byte, same size
        f.seek(1000)
        f.write(bytes([PAYLOAD[1000] ^ 0xFF]))
    with pytest.raises(IntegrityError, match="sha256 is [0-9a-f]{64}, models.lock expects " + SHA):
        store.installed(entry)
    with open(path, "r+b") as f:  # truncated
        f.truncate(100)
    with pytest.raises(ModelNotInstalled, match="edge-run pull m1"):
        store.installed(entry)


def test_hf_source_downloads_through_huggingface_hub_from_a_local_hub(settings, tmp_path):
    srv = FileServer()
    try:
        entry = entry_from(lock_for({"kind": "hf", "repo": "org/tiny", "file": "tiny.gguf", "revision": "main",
                                     "endpoint": srv.url}), tmp_path)
        m = Store(settings).pull(entry)
        assert m.files["model.gguf"].read_bytes() == PAYLOAD
        assert any(p == "/org/tiny/resolve/main/tiny.gguf" for _, p, _ in srv.requests)
    finally:
        srv.shutdown()


def test_offline_mode_names_the_model_and_the_fix(tmp_path):
    s = Settings.from_env(env={"EDGE_OFFLINE": "1"}, home=tmp_path / "h")
    entry = entry_from(lock_for({"kind": "https", "url": "http://127.0.0.1:9/never"}), tmp_path)
    with pytest.raises(OfflineError, match=r"'m1'.*EDGE_OFFLINE=1.*edge-run pull m1"):
        Store(s).pull(entry)


def test_user_lock_entries_append_and_replace(tmp_path):
    lock = tmp_path / "models.lock"
    e = {"id": "x", "task": "image", "format": "onnx", "license": "MIT",
         "files": [{"name": "a.onnx", "sha256": "0" * 64, "size": 1, "source": {"kind": "local", "path": "/a"}}]}
    append_entry(lock, e)
    append_entry(lock, {**e, "license": "Apache-2.0"})
    cat = Catalog(lock)
    assert cat.get("x").license == "Apache-2.0" and len([m for m in cat if m.id == "x"]) == 1


def test_bad_settings_are_rejected_with_the_variable_and_an_example():
    with pytest.raises(BadRequest, match=r"EDGE_RAM_BUDGET='lots'.*EDGE_RAM_BUDGET=4G"):
        Settings.from_env(env={"EDGE_RAM_BUDGET": "lots"})
    with pytest.raises(BadRequest, match=r"EDGE_DEVICE='gpu'"):
        Settings.from_env(env={"EDGE_DEVICE": "gpu"})


@pytest.mark.parametrize("rid", ["lcm-dreamshaper-v7-onnx", "mobilesam-onnx", "qwen2.5-0.5b-instruct-q4_k_m"])
def test_recipe_entries_name_the_one_pull_command(rid):
    cat = Catalog(None)
    assert rid in cat.recipes and rid not in cat.entries  # no unverified hashes in the lock
    how = "downloaded from" if rid.startswith("qwen") else "built on this machine from"
    with pytest.raises(ModelNotInstalled, match=f"is not installed \\({how} .*\\)\\. Run: edge-run pull {rid}$"):
        cat.get(rid)


@pytest.mark.parametrize("bad, msg", [
    ('source = { kind = "ftp", repo = "a/b" }\nexport = ["lcm"]', 'kind \\"hf\\"'),
    ('source = { kind = "hf" }\nexport = ["lcm"]', "needs `repo`"),
    ('source = { kind = "hf", repo = "a/b" }\nexport = "edge-run export lcm"', "`export` must be a list"),
    ('source = { kind = "hf", repo = "a/b" }', "an onnx recipe needs `export`"),
    ('source = { kind = "hf", repo = "a/b" }\nexport = ["lcm"]\nestimate = { minutes = "ten" }', "table of numbers"),
])
def test_malformed_recipes_are_rejected_with_the_reason(bad, msg):
    text = f'[[recipe]]\nid = "r1"\ntask = "image"\nformat = "onnx"\n{bad}\n'
    with pytest.raises(BadRequest, match=msg):
        parse_recipes(text)
