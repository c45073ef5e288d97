"""Any GGUF on the Hugging Face hub, by name: ``hf.co/OWNER/REPO[:QUANT|:FILE]`` (Ollama's and llama.cpp's
spelling). Resolving a name asks the hub once for the repository's files at a revision; the result is a
models.lock entry pinning the repository, the resolved commit, the file, its size and its sha256, which the
store then downloads (through huggingface_hub: resume, ``HF_ENDPOINT``) and verifies like any other entry.

After the first pull the entry lives in ``$EDGE_HOME/models.lock``, so the same name works offline.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from edge.errors import BadRequest, DownloadError

HUB_PREFIXES = ("hf.co/", "huggingface.co/", "hf://")
_PART = r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}"
_TAG = r"[A-Za-z0-9][A-Za-z0-9._+-]{0,199}"
HUB_REF = rf"(?:hf\.co/|huggingface\.co/|hf://){_PART}/{_PART}(?::{_TAG})?"
"""A hub GGUF name as the API's ``model`` field takes it (the server's schema documents this pattern)."""
_REF = re.compile(rf"(?:hf\.co/|huggingface\.co/|hf://)(?P<owner>{_PART})/(?P<repo>{_PART})(?::(?P<tag>{_TAG}))?")
DEFAULT_QUANTS = ("Q4_K_M", "Q4_K_S", "Q4_0", "Q4_1", "Q5_K_M", "Q6_K", "Q8_0")
"""The quantization picked when a name gives none: Ollama's and llama.cpp's default first."""
_SPLIT = re.compile(r"-\d{5}-of-\d{5}\.gguf$", re.IGNORECASE)


@dataclass(frozen=True)
class HubRef:
    """A parsed ``hf.co/OWNER/REPO[:TAG]``; ``tag`` is a quantization (Q4_K_M) or a file name (*.gguf)."""

    owner: str
    repo: str
    tag: str | None = None

    @property
    def repo_id(self) -> str:
        return f"{self.owner}/{self.repo}"

    def __str__(self) -> str:
        return f"hf.co/{self.repo_id}" + (f":{self.tag}" if self.tag else "")

    @property
    def model_id(self) -> str:
        """The store id of this name: lower case, '/' and ':' become '--' (a hash keeps long ids unique)."""
        raw = f"{self.owner}--{self.repo}" + (f"--{self.tag}" if self.tag else "")
        mid = re.sub(r"[^a-z0-9._-]+", "-", raw.lower()).replace("..", ".").strip("-.") or "hub"
        if len(mid) > 128:
            mid = mid[:115].rstrip("-.") + "-" + hashlib.sha256(raw.encode()).hexdigest()[:12]
        return mid


def is_hub_ref(name: object) -> bool:
    """True when ``name`` is spelled as a hub GGUF name (``hf.co/...``), whether or not it is valid."""
    return isinstance(name, str) and name.startswith(HUB_PREFIXES)


def parse_ref(name: str, param: str = "model") -> HubRef:
    """``hf.co/OWNER/REPO[:QUANT|:FILE]`` -> HubRef, or BadRequest naming the value and the form."""
    m = _REF.fullmatch(name.strip()) if isinstance(name, str) else None
    if m is None or ".." in name:
        raise BadRequest(f"{str(name)[:120]!r} is not a hub model name. Use hf.co/OWNER/REPO, hf.co/OWNER/REPO:QUANT "
                         "(e.g. hf.co/Qwen/Qwen2.5-0.5B-Instruct-GGUF:Q4_K_M) or hf.co/OWNER/REPO:FILE.gguf.",
                         param=param)
    return HubRef(m["owner"], m["repo"], m["tag"])


@dataclass(frozen=True)
class HubFile:
    """One GGUF a name resolved to: the commit it was read at, its path in the repo, size and sha256."""

    repo_id: str
    commit: str
    file: str
    size: int
    sha256: str
    license: str


def _ggufs(siblings: list[Any]) -> list[Any]:
    return [s for s in siblings if s.rfilename.lower().endswith(".gguf") and "mmproj" not in s.rfilename.lower()]


def pick_file(ref: HubRef, siblings: list[Any]) -> Any:
    """The sibling ``ref`` names: its FILE, the GGUF whose name ends in its QUANT, or the default quant."""
    ggufs = _ggufs(siblings)
    names = sorted(s.rfilename for s in ggufs)
    if not ggufs:
        raise BadRequest(f"{ref.repo_id} has no .gguf file. edge-run runs GGUF chat models from the hub; export other "
                         "checkpoints with `edge-run export llm`.", param="model")
    if ref.tag and ref.tag.lower().endswith(".gguf"):
        hits = [s for s in ggufs if s.rfilename == ref.tag or s.rfilename.rsplit("/", 1)[-1] == ref.tag]
        what = f"no file {ref.tag!r}"
    else:
        tags = [ref.tag] if ref.tag else list(DEFAULT_QUANTS)
        hits = []
        for tag in tags:
            pat = re.compile(rf"(^|[-_.]){re.escape(tag)}(-\d{{5}}-of-\d{{5}})?\.gguf$", re.IGNORECASE)
            hits = [s for s in ggufs if pat.search(s.rfilename.rsplit("/", 1)[-1])]
            if hits:
                break
        if not hits and not ref.tag and len(ggufs) == 1:
            hits = ggufs
        what = f"no {ref.tag} file" if ref.tag else f"none of the default quantizations {', '.join(DEFAULT_QUANTS)}"
    if not hits:
        raise BadRequest(f"{ref.repo_id} has {what}. Its GGUF files: {', '.join(names[:20])}. Name one as "
                         f"hf.co/{ref.repo_id}:FILE.gguf or hf.co/{ref.repo_id}:QUANT.", param="model")
    if any(_SPLIT.search(s.rfilename) for s in hits):
        raise BadRequest(f"{ref} is split into several GGUF files ({hits[0].rfilename} ...); edge-run pulls single-file "
                         "GGUFs. Pick a smaller quantization.", param="model")
    if len(hits) > 1:
        raise BadRequest(f"{ref} matches several files ({', '.join(s.rfilename for s in hits)}); name one as "
                         f"hf.co/{ref.repo_id}:FILE.gguf.", param="model")
    return hits[0]


def _license(info: Any) -> str:
    card = getattr(info, "card_data", None)
    lic = card.get("license") if card is not None and hasattr(card, "get") else None
    if not lic:
        lic = next((t.split(":", 1)[1] for t in (getattr(info, "tags", None) or []) if t.startswith("license:")), None)
    return str(lic) if lic else "unknown (see the model card)"


def resolve(ref: HubRef, *, revision: str | None = None, endpoint: str | None = None) -> HubFile:
    """Ask the hub which file ``ref`` names at ``revision`` (default: the main branch) and its pins."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        info = HfApi(endpoint=endpoint).model_info(ref.repo_id, revision=revision, files_metadata=True)
    except RepositoryNotFoundError:
        raise BadRequest(f"the hub has no repository {ref.repo_id!r} (or it is private/gated: log in with `hf auth "
                         "login`). Check the name.", param="model") from None
    except RevisionNotFoundError:
        raise BadRequest(f"{ref.repo_id} has no revision {revision!r}.", param="model") from None
    except (HfHubHTTPError, OSError) as e:
        raise DownloadError(f"cannot read {ref.repo_id} from the hub ({str(e).splitlines()[0][:200]}). Check your "
                            "network or HF_ENDPOINT, then run `edge-run pull` again.") from None
    chosen = pick_file(ref, list(info.siblings or []))
    lfs = chosen.lfs
    sha = lfs.sha256 if lfs is not None else None
    size = lfs.size if lfs is not None else chosen.size
    if not sha or not isinstance(size, int) or not info.sha:
        raise DownloadError(f"the hub did not give the sha256, size and commit of {ref.repo_id}/{chosen.rfilename}; "
                            "edge-run pins all three before downloading. Check HF_ENDPOINT.")
    return HubFile(ref.repo_id, info.sha, chosen.rfilename, int(size), sha.lower(), _license(info))


def lock_entry(model_id: str, ref: HubRef | str, hub: HubFile, description: str = "") -> dict[str, Any]:
    """The models.lock [[model]] table pinning ``hub`` as chat model ``model_id``."""
    return {"id": model_id, "task": "chat", "format": "gguf", "license": hub.license,
            "description": description or f"{ref} (pulled from the hub)", "hub": str(ref),
            "files": [{"name": "model.gguf", "sha256": hub.sha256, "size": hub.size,
                       "source": {"kind": "hf", "repo": hub.repo_id, "file": hub.file, "revision": hub.commit}}]}
