"""`edge-run pull` from the hub, as a user runs it: the real huggingface_hub client against a local imitation of
the hub's file API (tests/hub_sim.py, through HF_ENDPOINT), the real CLI in a subprocess, the real exports.

* a hub GGUF by name (hf.co/OWNER/REPO:QUANT) -> pinned in the user lock -> `edge-run chat --model <name>`;
* a pull that loses its connection resumes; a corrupted file is refused and nothing is pinned;
* recipes: a tiny diffusers LCM repo and a tiny MobileSAM checkpoint are downloaded, exported, verified and
  installed by one `pull`, ending in working `imagine` / `segment`; the upstream commit and file hashes are
  pinned and a later pull of changed upstream bytes is refused.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from hub_sim import HubSim
from support import CHAT_MODEL, ROOT, ServerProcess, chat_model_cached, edge_env

from edge.registry.hub import HubRef, parse_ref, pick_file
from edge.registry.lock import Catalog

REPO = "test-org/SmolLM2-135M-Instruct-GGUF"
LCM_FILES = ["model_index.json", "scheduler/scheduler_config.json", "text_encoder/config.json",
             "text_encoder/model.safetensors", "tokenizer/merges.txt", "tokenizer/special_tokens_map.json",
             "tokenizer/tokenizer_config.json", "tokenizer/vocab.json", "unet/config.json",
             "unet/diffusion_pytorch_model.safetensors", "vae/config.json", "vae/diffusion_pytorch_model.safetensors"]
"""What the lcm-dreamshaper-v7-onnx recipe downloads (the same list as models.lock's)."""


@pytest.fixture(scope="module")
def hub():
    sim = HubSim()
    gguf = chat_model_cached().read_bytes()
    sim.add_repo(REPO, {"README.md": b"# SmolLM2 135M GGUF\n", "SmolLM2-135M-Instruct-Q4_1.gguf": gguf,
                        "SmolLM2-135M-Instruct-Q8_0.gguf": gguf[: 1 << 20]})
    yield sim
    sim.shutdown()


def edge_run(home: Path, hub: HubSim, *args: str, lock: Path | None = None, timeout: float = 600,
             pre: str = "") -> subprocess.CompletedProcess:
    """`edge-run ARGS` in its own process, with EDGE_HOME, HF_ENDPOINT (and EDGE_LOCK) set; ``pre`` runs first."""
    env = {**os.environ, "EDGE_HOME": str(home), "HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_TELEMETRY": "1",
           "HF_HOME": str(home / "hf-home"), "PYTHONPATH": str(ROOT)}
    env.pop("EDGE_OFFLINE", None)
    if lock is not None:
        env["EDGE_LOCK"] = str(lock)
    code = f"{pre}\nimport sys\nfrom edge.cli import main\nsys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=home.parent)


def _reference_answer(question: str, max_tokens: int) -> str:
    """llama-cpp-python's own greedy chat answer on the same GGUF (its chat template from the metadata)."""
    import llama_cpp

    from edge.chat.batch import llama_kwargs

    gguf = str(chat_model_cached())
    llm = llama_cpp.Llama(gguf, n_ctx=512, **llama_kwargs(gguf), verbose=False)
    try:
        out = llm.create_chat_completion([{"role": "user", "content": question}], temperature=0, max_tokens=max_tokens)
    finally:
        llm.close()
    return out["choices"][0]["message"]["content"].strip()


def user_lock(home: Path) -> dict:
    return tomllib.loads((home / "models.lock").read_text())


# -- hub GGUFs ------------------------------------------------------------------------------------
def test_a_hub_gguf_is_pulled_pinned_and_chats_with_its_own_template(tmp_path, hub):
    home = tmp_path / "home"
    name = f"hf.co/{REPO}:Q4_1"
    r = edge_run(home, hub, "pull", name)
    assert r.returncode == 0, r.stderr
    [entry] = user_lock(home)["model"]
    [f] = entry["files"]
    assert entry["hub"] == name and entry["task"] == "chat" and entry["license"] == "apache-2.0"
    assert f["source"] == {"kind": "hf", "repo": REPO, "file": "SmolLM2-135M-Instruct-Q4_1.gguf",
                           "revision": hub.repos[REPO].commit}
    assert f["size"] == chat_model_cached().stat().st_size and len(f["sha256"]) == 64
    # the name is the model everywhere; it answers with the GGUF's own chat template, offline
    r = edge_run(home, hub, "chat", "--model", name, "-p", "What is the capital of France?", "--temp", "0",
                 "--max-tokens", "12", "--offline")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == _reference_answer("What is the capital of France?", 12)
    # a second pull is a no-op on the pinned file (no listing asked again)
    before = len(hub.requests)
    assert edge_run(home, hub, "pull", name, "--offline").returncode == 0
    assert len(hub.requests) == before
    # the server takes the same name as `model` (the real openai client); one not pulled is a 404 naming the pull
    import openai

    server = ServerProcess(home, env=edge_env(home, HF_ENDPOINT=hub.url, HF_HOME=str(home / "hf-home")))
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
        out = client.chat.completions.create(model=name, temperature=0, max_tokens=12,
                                             messages=[{"role": "user", "content": "What is the capital of France?"}])
        assert out.choices[0].message.content.strip() == r.stdout.strip()
        assert out.model == "test-org--smollm2-135m-instruct-gguf--q4_1"
        with pytest.raises(openai.NotFoundError, match=f"Run: edge-run pull hf.co/{REPO}:Q8_0"):
            client.chat.completions.create(model=f"hf.co/{REPO}:Q8_0", messages=[{"role": "user", "content": "hi"}])
    finally:
        server.stop()


def test_a_dropped_connection_resumes_where_it_stopped(tmp_path, hub):
    home = tmp_path / "home"
    hub.cut(REPO, "SmolLM2-135M-Instruct-Q4_1.gguf", after=20 << 20)
    r = edge_run(home, hub, "pull", f"hf.co/{REPO}:Q4_1")
    assert r.returncode == 0, r.stderr
    assert any(rng.startswith("bytes=") and int(rng[6:].split("-")[0]) > 0
               for rng in hub.ranged_gets("SmolLM2-135M-Instruct-Q4_1.gguf")), hub.requests
    assert (home / "models" / "test-org--smollm2-135m-instruct-gguf--q4_1" / "model.gguf").stat().st_size \
        == chat_model_cached().stat().st_size


def test_a_corrupted_download_is_refused_and_nothing_is_pinned(tmp_path):
    sim = HubSim()
    try:
        sim.add_repo("evil/tiny-GGUF", {"tiny-Q4_K_M.gguf": os.urandom(3 << 20)})
        sim.corrupt("evil/tiny-GGUF", "tiny-Q4_K_M.gguf")
        home = tmp_path / "home"
        r = edge_run(home, sim, "pull", "hf.co/evil/tiny-GGUF")  # no tag: the default Q4_K_M
        assert r.returncode == 4, (r.stdout, r.stderr)
        assert "sha256 is" in r.stderr and "models.lock expects" in r.stderr and "Traceback" not in r.stderr
        assert not (home / "models.lock").exists()
        assert not list((home / "models").rglob("*.gguf"))
    finally:
        sim.shutdown()


def test_hub_names_are_checked_at_the_door(tmp_path, hub):
    home = tmp_path / "home"
    r = edge_run(home, hub, "pull", "hf.co/../etc:Q4")
    assert r.returncode == 2 and "is not a hub model name" in r.stderr
    r = edge_run(home, hub, "pull", f"hf.co/{REPO}:Q5_K_M")
    assert r.returncode == 2 and "has no Q5_K_M file" in r.stderr and "SmolLM2-135M-Instruct-Q8_0.gguf" in r.stderr
    r = edge_run(home, hub, "pull", "hf.co/nobody/nothing")
    assert r.returncode == 2 and "has no repository 'nobody/nothing'" in r.stderr
    r = edge_run(home, hub, "chat", "--model", f"hf.co/{REPO}:Q8_0", "-p", "hi", "--offline")
    assert r.returncode != 0 and f"Run `edge-run pull hf.co/{REPO}:Q8_0` with the network on" in r.stderr, r.stderr


class _Sib:
    def __init__(self, name: str):
        self.rfilename = name


@pytest.mark.parametrize("rid", [r.id for r in Catalog(None).recipes.values() if r.format == "gguf"])
def test_every_curated_hub_recipe_picks_one_file_of_a_typical_listing(rid):
    """The lock's chat recipes name a quant; a repo listing like the real ones (several quants, an mmproj, a
    split file) resolves to exactly the file of that quant."""
    r = Catalog(None).recipes[rid]
    stem = r.source["repo"].split("/")[1].removesuffix("-GGUF")
    names = [f"{stem}-{q}.gguf" for q in ("Q2_K", "Q4_K_M", "Q4_K_S", "Q8_0", "f16")] + \
            [f"mmproj-{stem}-f16.gguf", f"{stem}-BF16-00001-of-00002.gguf", "README.md"]
    tag = r.source.get("quant")
    chosen = pick_file(HubRef(*r.source["repo"].split("/"), tag), [_Sib(n) for n in names])
    assert chosen.rfilename == f"{stem}-{tag}.gguf"
    assert parse_ref(f"hf.co/{r.source['repo']}:{tag}").repo_id == r.source["repo"]


# -- recipes ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_lcm_repo(tmp_path_factory) -> Path:
    """A diffusers LCM pipeline folder (the real classes, tiny sizes, seeded weights), as a hub repo holds it."""
    import torch
    from diffusers import LatentConsistencyModelPipeline, LCMScheduler
    from transformers import CLIPTokenizer

    from export.lcm.sources import SCHEDULER_CONFIG, random_components

    out = tmp_path_factory.mktemp("tiny-lcm")
    src = random_components("tiny", seed=3, with_taesd=False)
    tok_dir = out / "tok"
    tok_dir.mkdir()
    (tok_dir / "vocab.json").write_text(json.dumps(src.vocab))
    (tok_dir / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in src.merges))
    tok = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"))
    pipe = LatentConsistencyModelPipeline(vae=src.vae, text_encoder=src.text_encoder, tokenizer=tok, unet=src.unet,
                                          scheduler=LCMScheduler(**SCHEDULER_CONFIG), safety_checker=None,
                                          feature_extractor=None, requires_safety_checker=False)
    repo = out / "repo"
    with torch.no_grad():
        pipe.save_pretrained(repo, safe_serialization=True)
    # like SimianLuo/LCM_Dreamshaper_v7: model_index names a safety checker and feature extractor the recipe does
    # not download, and the repo holds files the recipe leaves out (its ONNX export)
    index = json.loads((repo / "model_index.json").read_text())
    index.update(safety_checker=["stable_diffusion", "StableDiffusionSafetyChecker"],
                 feature_extractor=["transformers", "CLIPImageProcessor"])
    (repo / "model_index.json").write_text(json.dumps(index))
    (repo / "unet" / "model.onnx").write_bytes(b"not downloaded")
    # and its tokenizer folder as CLIPTokenizer wrote it then (vocab + merges, no tokenizer.json)
    tok_out = repo / "tokenizer"
    shutil.rmtree(tok_out)
    tok_out.mkdir()
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(tok_dir / name, tok_out / name)
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
               "unk_token": "<|endoftext|>"}
    (tok_out / "special_tokens_map.json").write_text(json.dumps(special))
    (tok_out / "tokenizer_config.json").write_text(json.dumps({**special, "do_lower_case": True,
                                                               "model_max_length": 77, "tokenizer_class": "CLIPTokenizer"}))
    return repo


@pytest.fixture(scope="module")
def tiny_sam_checkpoint(tmp_path_factory) -> bytes:
    """A MobileSAM-format checkpoint (upstream state-dict keys) of the tiny architecture."""
    import io

    import torch

    from export.recipes.sam_onnx import build_sam

    buf = io.BytesIO()
    torch.save(build_sam("tiny", 0).state_dict(), buf)
    return buf.getvalue()


def _recipe_lock(tmp_path: Path, hub: HubSim) -> Path:
    lock = tmp_path / "recipes.lock"
    lock.write_text(f"""version = 1
[[recipe]]
id = "tiny-lcm-onnx"
task = "image"
format = "onnx"
license = "Apache-2.0"
source = {{ kind = "hf", repo = "test-org/tiny-lcm", revision = "main", files = {json.dumps(LCM_FILES)} }}
export = ["lcm", "--precisions", "fp32", "--model-id", "tiny-lcm-onnx", "--verify-size", "64", "--no-progress"]
estimate = {{ export_minutes = 1, peak_ram_gb = 1, artifact_gb = 0.01 }}

[[recipe]]
id = "tiny-sam-onnx"
task = "segment"
format = "onnx"
license = "Apache-2.0"
source = {{ kind = "https", url = "{hub.url}/test-org/tiny-mobilesam/resolve/main/mobile_sam.pt" }}
export = ["sam", "--precision", "fp32", "--id", "tiny-sam-onnx", "--verify-images", "1"]
""")
    return lock


def test_recipe_pulls_end_in_working_imagine_and_segment(tmp_path, hub, tiny_lcm_repo, tiny_sam_checkpoint):
    commit = hub.add_folder("test-org/tiny-lcm", tiny_lcm_repo)
    hub.add_repo("test-org/tiny-mobilesam", {"mobile_sam.pt": tiny_sam_checkpoint})
    lock = _recipe_lock(tmp_path, hub)
    home = tmp_path / "home"
    # 1. nothing installed: the workloads name the one command
    r = edge_run(home, hub, "imagine", "a lighthouse", "-o", str(tmp_path / "x.png"), lock=lock)
    assert r.returncode == 3 and "Run `edge-run pull tiny-lcm-onnx`" in r.stderr, r.stderr
    from PIL import Image

    Image.new("RGB", (64, 48), (200, 120, 40)).save(tmp_path / "photo.png")
    r = edge_run(home, hub, "segment", str(tmp_path / "photo.png"), "--point", "1,1", lock=lock)
    assert r.returncode == 3 and "Run `edge-run pull tiny-sam-onnx`" in r.stderr, r.stderr
    # 2. one pull each: estimate first, then download, export (verified), install
    r = edge_run(home, hub, "pull", "tiny-lcm-onnx", "tiny-sam-onnx", lock=lock)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "downloads" in r.stdout and "free disk" in r.stdout and "[2/3] export" in r.stdout
    pins = {m["id"]: m for m in user_lock(home)["model"]}
    up = pins["tiny-lcm-onnx"]["upstream"]
    assert up["repo"] == "test-org/tiny-lcm" and up["revision"] == commit
    assert {f["name"] for f in up["files"]} == set(LCM_FILES)
    assert not any(p.endswith("model.onnx") for _, p, _ in hub.requests)
    assert all(len(f["sha256"]) == 64 for f in up["files"])
    assert pins["tiny-sam-onnx"]["upstream"]["files"][0]["name"] == "mobile_sam.pt"
    assert not (home / "cache" / "recipes").exists() or not any((home / "cache" / "recipes").iterdir())
    # 3. the workloads run on what was pulled (offline)
    png = tmp_path / "lighthouse.png"
    r = edge_run(home, hub, "imagine", "a lighthouse", "-o", str(png), "--steps", "2", "--seed", "1", "--offline",
                 lock=lock)
    assert r.returncode == 0, r.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    mask = tmp_path / "mask.png"
    r = edge_run(home, hub, "segment", str(png), "--point", "32,32", "-o", str(mask), "--offline", lock=lock)
    assert r.returncode == 0, r.stderr
    assert mask.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # 4. the upstream is pinned: after `rm`, a pull of changed upstream bytes is refused
    assert edge_run(home, hub, "rm", "tiny-sam-onnx", lock=lock).returncode == 0
    hub.corrupt("test-org/tiny-mobilesam", "mobile_sam.pt")
    r = edge_run(home, hub, "pull", "tiny-sam-onnx", lock=lock)
    assert r.returncode == 4 and "pinned in your models.lock at the first pull" in r.stderr, r.stderr


def test_a_recipe_pull_without_the_export_extra_names_the_pip_command(tmp_path, hub):
    """torch hidden from the import system, as on a machine with only `pip install edge-run`."""
    hide = ("import sys\n"
            "class _NoTorch:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'torch':\n"
            "            raise ModuleNotFoundError(name)\n"
            "sys.meta_path.insert(0, _NoTorch())\n")
    r = edge_run(tmp_path / "home", hub, "pull", "lcm-dreamshaper-v7-onnx", pre=hide)
    assert r.returncode == 2, r.stderr
    assert "pip install torch==2.14.1 torchvision==0.29.1 'edge-run[export]'" in r.stderr and "missing: torch" in r.stderr
    assert not hub.requests or all("LCM_Dreamshaper" not in p for _, p, _ in hub.requests)  # nothing downloaded


def test_models_lists_recipes_with_the_pull_command(tmp_path, hub):
    r = edge_run(tmp_path / "home", hub, "models", "--json")
    rows = {row["id"]: row for row in json.loads(r.stdout)}
    assert rows[CHAT_MODEL]["installed"] == "no"
    for rid in ("lcm-dreamshaper-v7-onnx", "mobilesam-onnx", "qwen2.5-0.5b-instruct-q4_k_m"):
        assert rows[rid]["pull"] == f"edge-run pull {rid}"
    assert rows["lcm-dreamshaper-v7-onnx"]["export"].startswith("edge-run export lcm SOURCE")
