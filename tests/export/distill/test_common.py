"""The pieces every recipe shares: config precedence and checking, per-step data shards, the data
generators and folders, and `edge-run distill` wiring (no training here: fast)."""

from __future__ import annotations

import argparse
from types import SimpleNamespace

import numpy as np
import pytest

from edge.errors import BadRequest


def _args(cls, argv):
    from export.distill.common import add_config_arguments

    p = argparse.ArgumentParser()
    add_config_arguments(p, cls)
    return p.parse_args(argv)


def test_flags_override_the_config_file_which_overrides_defaults(tmp_path):
    from export.distill import llm_kd
    from export.distill.common import config_from_args

    f = tmp_path / "kd.toml"
    f.write_text('teacher = "t"\nout = "o"\nlayers = 3\nlr = 1e-3\nseq-len = 32\nno_progress = true\n')
    cfg = config_from_args(llm_kd.Config, _args(llm_kd.Config, ["--config", str(f), "--lr", "5e-4"]))
    assert (cfg.layers, cfg.lr, cfg.seq_len, cfg.no_progress, cfg.temperature) == (3, 5e-4, 32, True, 2.0)
    j = tmp_path / "kd.json"
    j.write_text('{"teacher": "t", "out": "o", "steps": 7}')
    assert config_from_args(llm_kd.Config, _args(llm_kd.Config, ["--config", str(j)])).steps == 7


@pytest.mark.parametrize("argv, match", [
    (["--steps", "ten"], "--steps 'ten' is not a valid int"),
    (["--steps", "0"], "--steps must be >= 1"),
    (["--lr", "-1"], "--lr must be > 0"),
    (["--temperature", "nan"], "--temperature 'nan' is not a valid float"),
    ([], "--out is required"),
])
def test_bad_options_name_the_flag(argv, match):
    from export.distill import llm_kd
    from export.distill.common import config_from_args

    base = [] if match == "--out is required" else ["--out", "o"]
    with pytest.raises(BadRequest, match=match):
        config_from_args(llm_kd.Config, _args(llm_kd.Config, base + argv))


def test_bad_config_files(tmp_path):
    from export.distill import lcm
    from export.distill.common import config_from_args

    with pytest.raises(BadRequest, match="does not exist"):
        config_from_args(lcm.Config, config=str(tmp_path / "none.toml"))
    bad = tmp_path / "bad.toml"
    bad.write_text("steps = [")
    with pytest.raises(BadRequest, match="is not valid TOML"):
        config_from_args(lcm.Config, config=str(bad))
    bad.write_text('variant = "half"\nout = "o"\n')
    with pytest.raises(BadRequest, match="--variant 'half' must be one of full, lora"):
        config_from_args(lcm.Config, config=str(bad))


def test_batches_are_disjoint_across_processes_and_cover_an_epoch():
    """Per-step indices depend only on (seed, step, rank): two processes take disjoint halves of the
    global batch, and one process with the doubled batch takes exactly their union."""
    from export.distill.common import Trainer

    def shard(rank: int, world: int, bs: int):
        t = Trainer.__new__(Trainer)
        t.cfg = SimpleNamespace(seed=3, batch_size=bs)
        t.acc = SimpleNamespace(num_processes=world, process_index=rank)
        return t

    n = 40
    for step in range(10):
        a, b = shard(0, 2, 4).batch_indices(step, n), shard(1, 2, 4).batch_indices(step, n)
        assert not set(a) & set(b) and len(a) == len(b) == 4
        assert shard(0, 1, 8).batch_indices(step, n) == a + b
    epoch = [i for s in range(5) for i in shard(0, 1, 8).batch_indices(s, n)]
    assert sorted(epoch) == list(range(n))


def test_generated_data_is_seeded_and_described():
    from export.distill import data as D

    a, b = D.shapes_with_captions(6, 32, seed=1), D.shapes_with_captions(6, 32, seed=1)
    assert all(np.array_equal(x[0], y[0]) and x[1] == y[1] for x, y in zip(a, b))
    assert all(img.shape == (32, 32, 3) and cap.startswith("a ") and "background" in cap for img, cap in a)
    assert D.scene(5).shape == (480, 640, 3)
    photos = D.skimage_photos(("astronaut", "camera"))
    assert [n for n, _ in photos] == ["skimage.data.astronaut", "skimage.data.camera"]
    assert all(p.ndim == 3 and p.shape[2] == 3 and p.dtype == np.uint8 for _, p in photos)


def test_corpus_split_holds_out_the_end_of_every_document():
    import re

    from export.distill import data as D

    docs = D.load_corpus()
    assert len(docs) >= 10 and all(text for _, text in docs)
    train, held = D.corpus_split(docs, 0.1)
    multi = [text for _, text in docs if len(re.split(r"\n\s*\n", text.strip())) > 1]
    assert len(train) == len(docs) and len(held) == len(multi) >= 10
    for text, ho in zip(multi, held):
        assert text.rstrip().endswith(ho[-40:]) and not any(ho in tr for tr in train)


def test_image_folders_are_read_lazily_with_captions(tmp_path):
    from PIL import Image

    from export.distill import data as D

    for i, size in enumerate([(40, 30), (20, 50)]):
        Image.new("RGB", size, (i * 100, 0, 0)).save(tmp_path / f"im{i}.png")
    (tmp_path / "im0.txt").write_text("a red thing\n")
    caps = D.ImageFolder(tmp_path, captions=True, size=16)
    assert len(caps) == 1 and caps.caption(0) == "a red thing" and caps[0].shape == (16, 16, 3)
    assert len(D.ImageFolder(tmp_path)) == 2


def test_edge_run_distill_is_wired_and_light(capsys):
    """`edge-run distill` lists the recipes; building the CLI imports no torch (the runtime's rule)."""
    import subprocess
    import sys

    code = ("import sys\nfrom edge.cli import build_parser\nbuild_parser(['distill'])\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'diffusers', "
            "'accelerate'}))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() \
        == "[]"
    from edge.cli import main

    with pytest.raises(SystemExit):
        main(["distill", "--help"])
    out = capsys.readouterr().out
    assert all(name in out for name in ("lcm", "llm-kd", "sam-encoder"))
