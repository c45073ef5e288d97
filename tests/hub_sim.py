"""A local imitation of the Hugging Face hub's file API on 127.0.0.1, for the real ``huggingface_hub`` client
(set ``HF_ENDPOINT`` to :attr:`HubSim.url`). No hub is reachable from the test machines.

What it answers, with the headers the client reads:
* ``GET /api/models/OWNER/REPO[/revision/REV]`` (``?blobs=true``): id, sha (the commit), siblings with
  size, blobId (git blob sha1) and, for large/binary files, ``lfs`` {sha256, size, pointerSize}; cardData.
* ``HEAD|GET /OWNER/REPO/resolve/REV/PATH``: X-Repo-Commit, ETag (the sha256 of an LFS file, else the git
  blob sha1), X-Linked-Etag / X-Linked-Size for LFS files, Content-Length, Accept-Ranges, and ``Range``
  requests answered with 206.
Faults: :meth:`HubSim.cut` drops the connection once after N bytes of a file; :meth:`HubSim.corrupt` serves
other bytes than the ones the listing hashes (a tampered mirror or a bad disk).
"""

from __future__ import annotations

import hashlib
import http.server
import json
import re
import threading
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

LFS_SUFFIXES = (".gguf", ".safetensors", ".bin", ".pt", ".onnx", ".onnx_data")


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    commit: str
    files: dict[str, bytes]
    license: str = "apache-2.0"
    served: dict[str, bytes] = field(default_factory=dict)  # path -> bytes served instead (corrupt)


class HubSim(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self._cuts: dict[str, int] = {}
        super().__init__(("127.0.0.1", 0), _Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def add_repo(self, repo_id: str, files: dict[str, bytes], *, license: str = "apache-2.0") -> str:
        """Publish ``files`` as ``repo_id`` at a new commit; returns the commit sha."""
        commit = hashlib.sha1(repo_id.encode() + b"".join(sorted(hashlib.sha256(v).digest() for v in files.values()))
                              ).hexdigest()
        self.repos[repo_id] = Repo(commit, dict(files), license)
        return commit

    def add_folder(self, repo_id: str, folder: Path, **kw) -> str:
        return self.add_repo(repo_id, {p.relative_to(folder).as_posix(): p.read_bytes()
                                       for p in sorted(folder.rglob("*")) if p.is_file()}, **kw)

    def cut(self, repo_id: str, path: str, after: int) -> None:
        """Drop the connection once, ``after`` bytes into the next GET of ``path``."""
        self._cuts[f"{repo_id}/{path}"] = after

    def corrupt(self, repo_id: str, path: str) -> None:
        """Serve flipped bytes for ``path`` while the listing and headers keep the true hashes."""
        repo = self.repos[repo_id]
        good = repo.files[path]
        repo.served[path] = bytes([good[0] ^ 0xFF]) + good[1:]

    def ranged_gets(self, path_suffix: str) -> list[str]:
        return [r for m, p, r in self.requests if m == "GET" and p.endswith(path_suffix) and r]

    def shutdown(self) -> None:  # noqa: D102
        super().shutdown()
        self.server_close()


def _is_lfs(path: str) -> bool:
    return path.endswith(LFS_SUFFIXES)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: HubSim
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def _json(self, code: int, obj) -> None:
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if code == 404:
            self.send_header("X-Error-Code", "RepoNotFound")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _repo(self, repo_id: str, rev: str) -> Repo | None:
        repo = self.server.repos.get(repo_id)
        if repo is None or rev not in ("main", repo.commit):
            return None
        return repo

    def _route(self) -> None:
        path = urllib.parse.urlparse(self.path).path
        self.server.requests.append((self.command, path, self.headers.get("Range")))
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path)
        if m:
            return self._listing(m[1], urllib.parse.unquote(m[2] or "main"))
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if m:
            return self._file(m[1], urllib.parse.unquote(m[2]), urllib.parse.unquote(m[3]))
        self._json(404, {"error": "not found"})

    do_GET = do_HEAD = _route

    def _listing(self, repo_id: str, rev: str) -> None:
        repo = self._repo(repo_id, rev)
        if repo is None:
            return self._json(404, {"error": f"Repository {repo_id} not found"})
        siblings = []
        for name, data in sorted(repo.files.items()):
            row = {"rfilename": name, "size": len(data), "blobId": git_blob_sha1(data)}
            if _is_lfs(name):
                row["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            siblings.append(row)
        self._json(200, {"_id": repo_id, "id": repo_id, "modelId": repo_id, "sha": repo.commit, "private": False,
                         "tags": ["gguf", f"license:{repo.license}"], "cardData": {"license": repo.license},
                         "siblings": siblings})

    def _file(self, repo_id: str, rev: str, name: str) -> None:
        repo = self._repo(repo_id, rev)
        if repo is None or name not in repo.files:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound" if repo else "RepoNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        true = repo.files[name]
        data = repo.served.get(name, true)
        etag = hashlib.sha256(true).hexdigest() if _is_lfs(name) else git_blob_sha1(true)
        start = 0
        rng = self.headers.get("Range")
        if rng and self.command == "GET":
            start = int(rng.split("=")[1].split("-")[0])
        self.send_response(206 if start else 200)
        self.send_header("X-Repo-Commit", repo.commit)
        self.send_header("ETag", f'"{etag}"')
        if _is_lfs(name):
            self.send_header("X-Linked-Etag", f'"{etag}"')
            self.send_header("X-Linked-Size", str(len(true)))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(data) - start))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if self.command == "HEAD":
            return
        body = data[start:]
        key = f"{repo_id}/{name}"
        if key in self.server._cuts:
            after = self.server._cuts.pop(key)
            self.wfile.write(body[:after])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
            return
        self.wfile.write(body)
