"""`edge-run chat` as a person and a script use it: in a real terminal (tmux), one-shot, piped,
offline without any socket, and with bad input (one-line errors, no tracebacks)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support import CHAT_MODEL, edge_env

EDGE = [sys.executable, "-m", "edge.cli"]


def run(args: list[str], env: dict, stdin: str | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(EDGE + args, env=env, input=stdin, capture_output=True, text=True, timeout=timeout)


def test_one_shot_prompt_answers_and_exits(edge_home):
    r = run(["chat", "-p", "What is the capital of France? Answer in one word.", "--temp", "0", "--max-tokens", "30"],
            edge_env(edge_home, EDGE_OFFLINE="1"))
    assert r.returncode == 0, r.stderr
    assert "paris" in r.stdout.lower()


def test_question_from_stdin(edge_home):
    r = run(["chat", "--temp", "0", "--max-tokens", "30"], edge_env(edge_home, EDGE_OFFLINE="1"),
            stdin="What is the capital of France? Answer in one word.\n")
    assert r.returncode == 0, r.stderr
    assert "paris" in r.stdout.lower()


def test_json_schema_file(edge_home, tmp_path):
    schema = tmp_path / "s.json"
    schema.write_text('{"type":"object","properties":{"answer":{"type":"integer"}},"required":["answer"]}')
    r = run(["chat", "-p", "What is 2+2? Answer in JSON.", "--temp", "0", "--max-tokens", "30",
             "--json-schema", str(schema)], edge_env(edge_home, EDGE_OFFLINE="1"))
    assert r.returncode == 0, r.stderr
    import json

    assert isinstance(json.loads(r.stdout)["answer"], int)


@pytest.mark.parametrize("args, code, words", [
    (["chat", "-p", "hi", "--model", "smollm2-135m"], 3, ["unknown model 'smollm2-135m'", CHAT_MODEL]),
    (["chat", "-p", "hi", "--temp", "-1"], 2, ["--temp", "-1"]),
    (["chat", "-p", "hi", "--top-p", "1.5"], 2, ["--top-p", "1.5"]),
    (["chat", "-p", "hi", "--json-schema", "/nonexistent/schema.json"], 2, ["/nonexistent/schema.json", "readable"]),
    (["chat", "-p", "word " * 600, "--ctx", "256"], 2, ["context window is 256", "--ctx"]),
    (["chat", "-p", "hi", "--threads", "zero"], 2, ["--threads", "'zero'"]),
])
def test_bad_input_gives_one_line_error_and_exit_code(edge_home, args, code, words):
    r = run(args, edge_env(edge_home, EDGE_OFFLINE="1"))
    assert r.returncode == code, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("edge-run: error:")
    for w in words:
        assert w in line, (w, line)


def test_corrupted_model_file_is_refused(edge_home, tmp_path, chat_model_path):
    d = tmp_path / "home" / "models" / CHAT_MODEL
    d.mkdir(parents=True)
    bad = d / "model.gguf"
    shutil.copyfile(chat_model_path, bad)
    with open(bad, "r+b") as f:
        f.seek(5_000_000)
        b = f.read(1)
        f.seek(5_000_000)
        f.write(bytes([b[0] ^ 0xFF]))
    r = run(["chat", "-p", "hi"], edge_env(tmp_path / "home", EDGE_OFFLINE="1"))
    assert r.returncode == 4 and "Traceback" not in r.stderr
    assert "sha256 is" in r.stderr and "b179c9523d0e6a0f" in r.stderr and f"edge-run pull {CHAT_MODEL} --force" in r.stderr


def test_offline_without_the_model_says_how_to_get_it(tmp_path):
    r = run(["chat", "-p", "hi", "--offline"], edge_env(tmp_path / "empty"))
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert CHAT_MODEL in r.stderr and f"edge-run pull {CHAT_MODEL}" in r.stderr


SITECUSTOMIZE = """
import os, sys
_log = os.environ["EDGE_SOCKET_LOG"]
def _hook(event, args):
    if event in ("socket.__new__", "socket.connect", "socket.getaddrinfo", "urllib.Request"):
        with open(_log, "a") as f:
            f.write(event + " " + repr(args)[:200] + "\\n")
sys.addaudithook(_hook)
"""


def test_installed_model_chats_with_no_network_and_opens_no_socket(edge_home, tmp_path):
    (tmp_path / "sitecustomize.py").write_text(SITECUSTOMIZE)
    log = tmp_path / "sockets.log"
    env = edge_env(edge_home, PYTHONPATH=str(tmp_path), EDGE_SOCKET_LOG=str(log))  # note: not even --offline
    prefix = ["unshare", "--net"] if shutil.which("unshare") and os.geteuid() == 0 else []
    cmd = prefix + EDGE + ["chat", "-p", "What is the capital of France? Answer in one word.", "--temp", "0", "--max-tokens", "20"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    assert "paris" in r.stdout.lower()
    assert not log.exists(), "sockets were opened:\n" + log.read_text()


# -- the interactive chat in a real terminal ---------------------------------------------------
class Tmux:
    def __init__(self, name: str, command: str, env: dict):
        self.name = name
        self.env = env
        subprocess.run(["tmux", "new-session", "-d", "-s", name, "-x", "150", "-y", "50", command], check=True,
                       env=env)

    def send(self, *keys: str) -> None:
        time.sleep(0.3)  # a person types after the prompt is drawn; readline may drop earlier typeahead
        subprocess.run(["tmux", "send-keys", "-t", self.name, *keys], check=True)

    def screen(self) -> str:
        return subprocess.run(["tmux", "capture-pane", "-p", "-S", "-200", "-t", self.name], capture_output=True,
                              text=True).stdout

    def wait_for(self, predicate, timeout: float = 120) -> str:
        deadline = time.time() + timeout
        while time.time() < deadline:
            s = self.screen()
            if predicate(s):
                return s
            time.sleep(0.2)
        raise AssertionError("timed out; screen:\n" + self.screen())

    def kill(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True)


@pytest.fixture
def tmux_chat(edge_home, tmp_path):
    if not shutil.which("tmux"):
        pytest.fail("tmux is required for the terminal tests (apt-get install tmux; .ci/run installs it)")
    env = edge_env(edge_home, EDGE_OFFLINE="1", TERM="xterm")
    cmd = (f"{sys.executable} -m edge.cli chat --temp 0 --max-tokens 400 --system 'You are a concise assistant.'; "
           f"echo EXITED:$?; sleep 60")
    t = Tmux(f"edgechat{os.getpid()}{int(time.time() * 1000) % 100000}", cmd, env)
    yield t
    t.kill()


def prompts(screen: str) -> int:
    return sum(1 for line in screen.splitlines() if line.startswith(">>>"))


def test_terminal_chat_two_turns_ctrl_c_reset_exit(tmux_chat):
    t = tmux_chat
    t.wait_for(lambda s: prompts(s) == 1)
    # turn 1
    t.send("What is the capital of France? Answer in one word.", "Enter")
    s = t.wait_for(lambda s: prompts(s) == 2)
    assert "paris" in s.lower()
    # turn 2 (history is kept: the model sees both turns)
    t.send("What is the largest ocean on Earth?", "Enter")
    s = t.wait_for(lambda s: prompts(s) == 3)
    assert "pacific" in s.lower()
    # Ctrl-C mid-answer stops the answer, not the session
    t.send("Write a long story about a dragon who learns to cook.", "Enter")  # greedy: > 200 tokens
    t.wait_for(lambda s: "learns to cook." in s and len(s.split("learns to cook.")[-1].strip()) > 20)
    t.send("C-c")
    s = t.wait_for(lambda s: "[stopped]" in s and prompts(s) == 4, timeout=30)
    # /reset and /help
    t.send("/reset", "Enter")
    t.wait_for(lambda s: "[conversation reset]" in s)
    t.send("/exit", "Enter")
    t.wait_for(lambda s: "EXITED:0" in s, timeout=30)


def test_terminal_chat_eof_exits_cleanly(tmux_chat):
    t = tmux_chat
    t.wait_for(lambda s: prompts(s) == 1)
    t.send("/help", "Enter")
    t.wait_for(lambda s: "/reset" in s and prompts(s) == 2)
    t.send("C-d")
    s = t.wait_for(lambda s: "EXITED:" in s, timeout=30)
    assert "EXITED:0" in s and "Traceback" not in s
