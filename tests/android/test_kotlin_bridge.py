"""The Kotlin bridge (android-bridge/), compiled with kotlinc from npm, run against the real `edge-run serve`.

One real server per module (subprocess, `--api-key`, offline) over a test EDGE_HOME holding the real
SmolLM2 chat model (the shared tests/conftest.py cache), a tiny seeded LCM and a tiny seeded MobileSAM
exported through the real recipes. The Kotlin test runner prints one line per case
(`ok   live/...`, `FAIL ...`, `skip ...`) plus `REPORT key=<json>` facts that are cross-checked here
against Python's own view of the same server.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest

from support import IMAGE_MODEL, SEG_MODEL, ServerProcess, edge_env, free_port, make_workloads_home

ROOT = Path(__file__).resolve().parents[2]
BRIDGE = ROOT / "android-bridge"
BUILD_SH = BRIDGE / "build.sh"
RUNNER = "dev.edgerun.bridge.test.RunTestsKt"
API_KEY = "bridge-test-key"

pytestmark = [
    pytest.mark.skipif(shutil.which("java") is None or shutil.which("npm") is None,
                       reason="the Kotlin bridge needs java (17) and npm (for kotlin-compiler)"),
    # the module fixture compiles the bridge (first run only; jars are cached by source hash) while two
    # tiny models export: ~2 min on 2 idle cores, far more when the machine is shared
    pytest.mark.timeout(1500),
]


@pytest.fixture(scope="module")
def bridge(tiny_exports, chat_model_path, tmp_path_factory):
    """Build the bridge (in the background) while the tiny models export; then start the server.
    Yields (classpath of the Kotlin tests, server URL)."""
    build = subprocess.Popen([str(BUILD_SH), "fetch", "jar", "tests", "example"], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    # 1. a test EDGE_HOME: SmolLM2 + the tiny LCM and MobileSAM exports shared with the other suites
    try:
        home = make_workloads_home(tmp_path_factory.mktemp("edge-home-android"), tiny_exports, chat_model_path)
    except BaseException:
        build.kill()
        raise
    # 2. the Kotlin build
    out, _ = build.communicate(timeout=900)
    assert build.returncode == 0, f"android-bridge/build.sh failed:\n{out}"
    cp = subprocess.run([str(BUILD_SH), "classpath"], capture_output=True, text=True, check=True).stdout.strip()
    # 3. the real server, key-protected
    srv = ServerProcess(home, "--api-key", API_KEY, env=edge_env(home, EDGE_OFFLINE="1", EDGE_KEEP_ALIVE="-1"))
    yield cp, srv.url
    srv.stop()


def _kotlin(cp: str, *args: str, stdin: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["java", "-cp", cp, RUNNER, *args], input=stdin, capture_output=True, text=True,
                          timeout=timeout, encoding="utf-8")


def _parse(out: str) -> tuple[dict[str, str], dict[str, str]]:
    """(case id -> "ok" | "FAIL" | "skip", report key -> value) from the runner's output."""
    status, reports = {}, {}
    for line in out.splitlines():
        if line.startswith(("ok   ", "FAIL ", "skip ")):
            word, rest = line[:4].strip(), line[5:]
            case = rest.split(" (")[0] if word == "ok" else rest.split(": ")[0]
            status[case] = word
        elif line.startswith("REPORT "):
            key, _, value = line[7:].partition("=")
            reports[key] = json.loads(value)
    return status, reports


@pytest.fixture(scope="module")
def live(bridge):
    """Every Kotlin test (unit + live), run once against the server."""
    cp, url = bridge
    r = _kotlin(cp, "live", url, API_KEY)
    status, reports = _parse(r.stdout)
    return r, status, reports


def _http(url: str, body: dict | None = None, key: str | None = API_KEY) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json",
                                          **({"Authorization": f"Bearer {key}"} if key else {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _case(live, prefix: str) -> str:
    r, status, _ = live
    matches = [c for c in status if c.startswith(prefix)]
    assert matches, f"no Kotlin case {prefix!r} ran:\n{r.stdout[-3000:]}\n{r.stderr[-2000:]}"
    return status[matches[0]]


def _assert_ok(live, prefix: str) -> None:
    r, _, _ = live
    assert _case(live, prefix) == "ok", f"Kotlin case {prefix!r} failed:\n{r.stdout[-4000:]}"


def test_whole_kotlin_suite_passes(live):
    r, status, _ = live
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    assert "FAIL" not in status.values()
    assert len(status) >= 35, status


def test_unit_suites(live):
    for prefix in ("json/", "sse/", "errors/", "transport/"):
        assert all(v == "ok" for c, v in live[1].items() if c.startswith(prefix)), prefix


def test_streamed_chat_equals_chat(live):
    _assert_ok(live, "live/streamed tokens concatenate")
    assert live[2]["chat_text"].strip()


def test_stream_cancellation(live):
    _assert_ok(live, "live/cancel stops a long stream")


def test_bad_request_carries_the_servers_message(live, bridge):
    _assert_ok(live, "live/bad request")
    _, url = bridge
    body = {"messages": [{"role": "system", "content": "You are a concise assistant."},
                         {"role": "user", "content": "Name three colours of the rainbow."}],
            "max_tokens": 8, "temperature": -1.0, "seed": 42}
    status, answer = _http(url + "/v1/chat/completions", body)
    assert status == 400
    assert live[2]["bad_request_message"] == answer["error"]["message"]


def test_tool_call_round_trip(live, bridge):
    """The bridge's forced call is the server's own answer to the same request (same seed), arguments included."""
    _assert_ok(live, "live/tool call round trip")
    _, url = bridge
    tool = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city now",
                                             "parameters": {"type": "object", "properties": {  # the bridge's order
                                                 "city": {"type": "string", "maxLength": 40}}, "required": ["city"]}}}
    status, answer = _http(url + "/v1/chat/completions", {
        "messages": [{"role": "user", "content": "What's the weather in Oslo?"}], "max_tokens": 64, "seed": 11,
        "tools": [tool], "tool_choice": {"type": "function", "function": {"name": "get_weather"}}})
    assert status == 200 and answer["system_fingerprint"].endswith("-seed-11")
    fn = answer["choices"][0]["message"]["tool_calls"][0]["function"]
    assert json.loads(live[2]["tool_call"]) == {"name": fn["name"], "arguments": fn["arguments"]}


def test_unknown_model_and_unauthorized(live):
    _assert_ok(live, "live/unknown model")
    _assert_ok(live, "live/wrong or missing API key")


def test_closed_port_is_unreachable_fast(live):
    _assert_ok(live, "transport/closed port -> Unreachable, fast")
    _assert_ok(live, "transport/closed port -> stream ends with Unreachable")


def test_image_round_trip(live, bridge):
    _, url = bridge
    _, models = _http(url + "/v1/models")
    assert IMAGE_MODEL in {m["id"] for m in models["data"] if m["task"] == "image"}
    _assert_ok(live, "live/image round trip")


def test_segment_round_trip(live, bridge):
    _, url = bridge
    _, models = _http(url + "/v1/models")
    assert SEG_MODEL in {m["id"] for m in models["data"] if m["task"] == "segment"}
    _assert_ok(live, "live/segment round trip")


def test_example_program(bridge):
    """The JVM example (android-bridge/example) against the server, and against a closed port."""
    _, url = bridge
    env = {**os.environ, "EDGE_API_KEY": API_KEY}
    r = subprocess.run([str(BUILD_SH), "run-example", url], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert "health: ok" in lines
    assert any(line.startswith("model: smollm2-135m-instruct-q4_1 (chat") for line in lines)
    answer = next(line for line in lines if line.startswith("answer: "))[len("answer: "):]
    assert answer.strip()
    assert f"chars: {len(answer)}" in lines

    closed = f"http://127.0.0.1:{free_port()}"
    r = subprocess.run([str(BUILD_SH), "run-example", closed], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 3, r.stdout + r.stderr
    assert f"edge-run is not reachable at {closed}" in r.stderr


def _random_json(rng: random.Random, depth: int = 0):
    kind = rng.randrange(9 if depth < 4 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.choice([0, -1, 1, 2**31, -(2**53), 2**63 - 1, -(2**63), rng.randrange(-10**12, 10**12)])
    if kind == 3:
        return rng.choice([0.0, -0.5, 1e-300, 1.7976931348623157e308, 5e-324, rng.uniform(-1e6, 1e6),
                           rng.random() * 10 ** rng.randrange(-30, 30)])
    if kind == 4:
        alphabet = "ab \"\\/\b\f\n\r\t\x00\x01\x1f\x7fé日本\u2028\u2029😀\U0001f680"
        return "".join(rng.choice(alphabet) for _ in range(rng.randrange(12)))
    if kind in (5, 6):
        return [_random_json(rng, depth + 1) for _ in range(rng.randrange(5))]
    return {"k" + str(rng.randrange(100)) + rng.choice(["", "é", "😀", " ", "\n"]):
            _random_json(rng, depth + 1) for _ in range(rng.randrange(5))}


def test_json_codec_agrees_with_python(bridge):
    """The Kotlin codec re-encodes 600 random documents to values Python's json reads back equal, and
    rejects what Python's strict parser rejects."""
    cp, _ = bridge
    rng = random.Random(0)
    docs = [_random_json(rng) for _ in range(600)]
    lines = [json.dumps(d, ensure_ascii=rng.random() < 0.5) for d in docs]
    bad = ["[1,]", "{\"a\":1,}", "01", "1.", "\"\\x\"", "[1 2]", "NaN", "\"\t\"", "{\"a\"}", "-"]
    r = _kotlin(cp, "json-echo", stdin="\n".join(lines + bad) + "\n", timeout=120)
    assert r.returncode == 0, r.stderr
    out = r.stdout.rstrip("\n").split("\n")
    assert len(out) == len(lines) + len(bad)
    for doc, got in zip(docs, out):
        assert json.loads(got) == doc, (doc, got)
    for text, got in zip(bad, out[len(lines):]):
        assert got.startswith("ERROR "), (text, got)
        with pytest.raises(ValueError):
            json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
