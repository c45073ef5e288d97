"""llm-kd: the width- and depth-pruned student learns the teacher's distributions (KL and perplexity on
held-out text drop >= 30 %), the folder loads with transformers, exports to GGUF through
`edge-run export llm`, chats through edge's Runtime, and the same run on 2 processes (torchrun, gloo)
gives the same student as 1 process with the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from support import DISTILL_CONFIGS, distill_report


def test_student_starts_as_the_teacher_when_nothing_is_removed(llm_teacher):
    """Copying every layer at full width reproduces the teacher's logits exactly (the init is a copy)."""
    import torch

    from export.distill.llm_kd import build_student, load_teacher

    teacher, tok = load_teacher(llm_teacher)
    student, info = build_student(teacher, list(range(teacher.config.num_hidden_layers)))
    ids = tok("Four score and seven years ago", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(student(ids).logits, teacher(ids).logits)
    assert info["sliced_tensors"] == 0


def test_layer_choice_and_bad_values(llm_teacher):
    from edge.errors import BadRequest
    from export.distill.llm_kd import choose_layers

    assert choose_layers(4, 2, None) == [0, 3]
    assert choose_layers(12, 4, None) == [0, 4, 7, 11]
    assert choose_layers(4, None, "1, 2") == [1, 2]
    with pytest.raises(BadRequest, match="--keep-layers"):
        choose_layers(4, None, "0,9")
    with pytest.raises(BadRequest, match="--layers"):
        choose_layers(4, 5, None)


def test_kd_lowers_kl_and_perplexity_by_30_percent(llm_student, llm_teacher):
    """The proof: before (the pruned, initialised student) vs after, on held-out paragraphs; then the
    saved folder, reloaded with transformers, gives the 'after' numbers again."""
    from transformers import AutoModelForCausalLM

    from export.distill import data as D
    from export.distill.llm_kd import eval_batches, evaluate, load_teacher, token_blocks

    r = distill_report(llm_student)
    before, after = r["before"], r["after"]
    assert after["kl"] <= 0.7 * before["kl"], (before, after)
    assert after["perplexity"] <= 0.7 * before["perplexity"], (before, after)
    assert after["top1_agreement"] > before["top1_agreement"]
    assert r["student"]["student_params"] < 0.3 * r["student"]["teacher_params"]

    teacher, tok = load_teacher(llm_teacher)
    student = AutoModelForCausalLM.from_pretrained(str(llm_student)).eval()
    assert student.config.num_hidden_layers == 2 and student.config.hidden_size == 32
    _, held = D.corpus_split(D.load_corpus(), 0.1)
    blocks, rest = token_blocks(tok, held, 64, drop_last=False)
    again = evaluate(student, teacher, eval_batches(blocks, rest, 8))
    assert again["kl"] == pytest.approx(after["kl"], rel=1e-4)
    assert again["perplexity"] == pytest.approx(after["perplexity"], rel=1e-4)


def test_student_exports_to_gguf_and_chats(llm_student, work, edge_home_for):
    """`edge-run export llm <student> --quant f32,q8_0` (verified against transformers by the recipe),
    installed through the registry, answers a chat through edge's Runtime."""
    import shutil

    from edge.api import Runtime
    from edge.cli import main

    out = work / "llm-student-gguf"
    assert main(["export", "llm", str(llm_student), "--quant", "f32,q8_0", "--out", str(out),
                 "--threads", "2"]) == 0
    rep = __import__("json").loads((out / "report.json").read_text())
    assert rep["quants"]["f32"]["top1_agreement"] >= 0.98
    stage = work / "llm-student-stage"
    stage.mkdir()
    shutil.copy(out / "model.q8_0.gguf", stage / "model.gguf")
    home = edge_home_for(stage, "kd-student-q8_0", "chat", "gguf")
    with Runtime(home=str(home), threads=2, offline=True) as rt:
        res = rt.chat([{"role": "user", "content": "Tell me a fable."}], model="kd-student-q8_0", max_tokens=16,
                      temperature=0.8, seed=1)
    assert res.completion_tokens > 0 and res.model == "kd-student-q8_0"


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_two_processes_give_the_one_process_student(llm_student, llm_teacher, work):
    """torchrun --nproc_per_node 2 (gloo, CPU) with batch 8 per process == 1 process with batch 16:
    accelerate's DDP averages the two halves' gradients, so the students agree to float precision."""
    import torch

    out = work / "llm-student-2proc"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "export.distill", "llm-kd", "--config", str(DISTILL_CONFIGS / "llm-kd-tiny.toml"),
           "--teacher", str(llm_teacher), "--out", str(out), "--batch-size", "8", "--threads", "1", "--cpu",
           "--no-progress"]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    r1, r2 = distill_report(llm_student), distill_report(out)
    assert r2["processes"] == 2 and r1["processes"] == 1
    a, b = _weights(llm_student), _weights(out)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=2e-5)
    assert r2["after"]["kl"] == pytest.approx(r1["after"]["kl"], rel=1e-2)
    assert "distill: wrote" in p.stdout  # the summary is printed once, by rank 0
    assert p.stdout.count("distill: wrote") == 1


def test_an_interrupted_run_resumes_to_the_same_student(llm_teacher, work):
    """Stop after 3 of 6 steps (a checkpoint is written), run again: the result equals an uninterrupted
    run bit for bit (model, AdamW state, schedule and data order are restored / per-step)."""
    import torch

    from export.distill import llm_kd
    from export.distill.common import config_from_args

    common = dict(config=str(DISTILL_CONFIGS / "llm-kd-tiny.toml"), teacher=str(llm_teacher), steps=6, batch_size=4,
                  warmup_steps=2, lr_schedule="cosine", no_progress=True)
    straight = llm_kd.run(config_from_args(llm_kd.Config, out=str(work / "resume-straight"), **common))
    cfg = config_from_args(llm_kd.Config, out=str(work / "resume-cut"), **common)
    llm_kd.run(cfg, stop_after=3)
    assert not (work / "resume-cut").exists() and (work / "resume-cut.checkpoints" / "step-0000003").is_dir()
    resumed = llm_kd.run(cfg)
    assert distill_report(resumed)["resumed_from_step"] == 3
    a, b = _weights(straight), _weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not (work / "resume-cut.checkpoints").exists()  # dropped once the output is written


def test_bad_inputs_are_one_line_errors(llm_teacher, work, capsys, tmp_path):
    from support import run_distill

    assert run_distill(["llm-kd", "--teacher", str(tmp_path / "nope"), "--out", str(tmp_path / "o")], home=tmp_path / "h") == 2
    assert "--teacher" in capsys.readouterr().err
    assert run_distill(["llm-kd", "--teacher", str(llm_teacher), "--out", str(tmp_path / "o"), "--lr", "fast"],
                   home=tmp_path / "h") == 2
    assert "--lr 'fast' is not a valid float" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text('layer = 2\n')
    assert run_distill(["llm-kd", "--config", str(bad), "--teacher", str(llm_teacher), "--out", str(tmp_path / "o")], home=tmp_path / "h") == 2
    err = capsys.readouterr().err
    assert "unknown option 'layer'" in err and "layers" in err and err.count("\n") == 1
    assert run_distill(["llm-kd", "--teacher", str(llm_teacher), "--out", str(tmp_path / "o"), "--layers", "9"],
                   home=tmp_path / "h") == 2
    assert "--layers must be between 1 and the teacher's 4" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
