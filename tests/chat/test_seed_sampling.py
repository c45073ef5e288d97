"""Sampling defaults like llama.cpp and Ollama: a random seed per request (reported, and reproducing the answer
when passed back) and the model's recommended sampling (GGUF general.sampling.*) for unset fields."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from edge.chat.request import ChatRequest
from edge.chat.sampling import DEFAULTS, Sampling

from support import ROOT, edge_env, open_runtime
from tool_model import SAMPLING_MODEL, edited_home_cached

OPEN = [{"role": "user", "content": "Invent a name for a pet dragon and say why."}]


@pytest.fixture(scope="module")
def edited_runtime():
    with open_runtime(edited_home_cached()) as rt:
        yield rt


def test_without_a_seed_answers_vary_and_report_their_seed(runtime):
    results = [runtime.chat(OPEN, temperature=0.8, max_tokens=16) for _ in range(4)]
    seeds = {r.seed for r in results}
    assert len(seeds) == 4 and all(0 <= s < 2**32 for s in seeds)
    assert len({r.text for r in results}) >= 2, [r.text for r in results]


def test_the_reported_seed_reproduces_the_answer(runtime):
    first = runtime.chat(OPEN, temperature=0.8, max_tokens=24)
    again = runtime.chat(OPEN, temperature=0.8, max_tokens=24, seed=first.seed)
    assert again.seed == first.seed and again.text == first.text
    fixed = [runtime.chat(OPEN, temperature=0.8, max_tokens=24, seed=7).text for _ in range(2)]
    assert fixed[0] == fixed[1]


def test_cli_draws_a_seed_per_run_and_verbose_prints_it(edge_home):
    """Before: each `edge-run chat -p` process answered the same question with the same text (llama-cpp-python's
    seed=None chain starts from one constant in every process)."""
    def run(*extra: str) -> tuple[str, int]:
        p = subprocess.run([sys.executable, "-m", "edge.cli", "chat", "-p", OPEN[0]["content"], "--max-tokens", "16",
                            "--temp", "0.8", "--verbose", *extra], env=edge_env(edge_home, EDGE_OFFLINE="1"),
                           capture_output=True, text=True, timeout=180, cwd=ROOT)
        assert p.returncode == 0, p.stderr
        seed = re.search(r"seed (\d+)\]", p.stderr)
        assert seed, p.stderr
        return p.stdout, int(seed.group(1))

    (text1, seed1), (text2, seed2) = run(), run()
    assert seed1 != seed2
    assert run("--seed", str(seed1)) == (text1, seed1)


def test_recommended_sampling_is_the_default_for_unset_fields(edited_runtime, runtime):
    """SAMPLING_MODEL carries general.sampling.temp = 0 and top_k = 1: without sampling fields it answers
    greedily, whatever the seed; a field the request sets wins."""
    greedy = runtime.chat(OPEN, temperature=0, max_tokens=20).text
    answers = [edited_runtime.chat(OPEN, model=SAMPLING_MODEL, max_tokens=20) for _ in range(3)]
    assert len({a.seed for a in answers}) == 3
    assert {a.text for a in answers} == {greedy}
    hot = {edited_runtime.chat(OPEN, model=SAMPLING_MODEL, max_tokens=20, temperature=1.5, top_k=0).text
           for _ in range(3)}
    assert hot != {greedy}


def test_gguf_sampling_keys_are_read_checked_and_merged():
    meta = {"general.sampling.temp": "0.600000", "general.sampling.top_k": "20", "general.sampling.top_p": "nan",
            "general.sampling.min_p": "7", "general.sampling.penalty_repeat": "1.05"}
    rec = Sampling.from_gguf(meta)
    assert rec == Sampling(temperature=0.6, top_k=20, repeat_penalty=1.05)  # nan and out-of-range are ignored
    req = ChatRequest(messages=OPEN, top_k=5).check()
    assert req.sampling(rec) == Sampling(temperature=0.6, top_p=DEFAULTS.top_p, top_k=5, min_p=DEFAULTS.min_p,
                                         repeat_penalty=1.05)
    assert ChatRequest(messages=OPEN).check().sampling() == DEFAULTS
    assert Sampling.from_gguf({}) == Sampling()
