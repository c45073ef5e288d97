"""The OpenAI-compatible server, driven by the official `openai` client against a real `edge-run serve`."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import psutil
import pytest

from support import CHAT_MODEL, ServerProcess, edge_env

Q = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def metric(url: str, name: str) -> float:
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise KeyError(name)


def test_models_list_shows_the_chat_model(client):
    models = {m.id: m for m in client.models.list().data}
    assert CHAT_MODEL in models
    m = models[CHAT_MODEL].model_dump()
    assert m["task"] == "chat" and m["installed"] is True and m["owned_by"] == "edge-run"


def test_non_streaming_chat(client):
    r = client.chat.completions.create(model=CHAT_MODEL, messages=Q, temperature=0, max_tokens=20)
    assert "paris" in r.choices[0].message.content.lower()
    assert r.choices[0].finish_reason == "stop" and r.usage.prompt_tokens > 5
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_streaming_equals_non_streaming(client):
    msgs = [{"role": "user", "content": "Tell me about the moon in two sentences."}]
    whole = client.chat.completions.create(model=CHAT_MODEL, messages=msgs, temperature=0, max_tokens=50)
    stream = client.chat.completions.create(model=CHAT_MODEL, messages=msgs, temperature=0, max_tokens=50,
                                            stream=True, stream_options={"include_usage": True})
    pieces, usage, finish = [], None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            pieces.append(c.delta.content or "")
            finish = c.finish_reason or finish
    assert "".join(pieces) == whole.choices[0].message.content
    assert len([p for p in pieces if p]) > 5 and finish == whole.choices[0].finish_reason
    assert usage.completion_tokens == whole.usage.completion_tokens


def test_default_model_and_completions_endpoint(client):
    r = client.completions.create(model=CHAT_MODEL, prompt="The capital of France is", temperature=0, max_tokens=8)
    assert r.choices[0].text.strip() and r.usage.completion_tokens <= 8
    r2 = client.chat.completions.create(model=None or CHAT_MODEL, messages=Q, temperature=0, max_tokens=8)
    assert r2.model == CHAT_MODEL


def test_json_schema_response_format(client):
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    r = client.chat.completions.create(
        model=CHAT_MODEL, messages=Q, temperature=0, max_tokens=40,
        response_format={"type": "json_schema", "json_schema": {"name": "capital", "schema": schema}})
    assert isinstance(json.loads(r.choices[0].message.content)["city"], str)


@pytest.mark.parametrize("kw, status, param", [
    ({"temperature": -1}, 400, "temperature"),
    ({"top_p": 2}, 400, "top_p"),
    ({"n": 3}, 400, "n"),
    ({"model": "smollm2"}, 404, "model"),
])
def test_errors_use_openai_shape_and_status(client, kw, status, param):
    args = {"model": CHAT_MODEL, "messages": Q, **kw}
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(**args)
    assert err.value.status_code == status
    body = err.value.body
    assert body["param"] == param and body["message"] and body["type"]


def test_malformed_body_is_a_400_naming_the_field(server):
    r = httpx.post(server.url + "/v1/chat/completions", json={"model": CHAT_MODEL})
    assert r.status_code == 400
    assert "messages" in r.json()["error"]["message"]
    r = httpx.post(server.url + "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def test_health_and_metrics(server, client):
    client.chat.completions.create(model=CHAT_MODEL, messages=Q, temperature=0, max_tokens=4)
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    text = httpx.get(server.url + "/metrics").text
    for name in ("edge_queue_depth", "edge_tokens_total", "edge_evictions_total", 'edge_step_seconds_count{kind="token"}',
                 "edge_ram_used_bytes", "edge_tokens_per_second", "edge_step_threads", "edge_outside_cores",
                 "edge_thread_changes_total", "edge_batch_share_seconds_total"):
        assert name in text
    assert metric(server.url, "edge_tokens_total") > 0
    assert 1 <= metric(server.url, "edge_step_threads") <= 2  # the tests' EDGE_THREADS
    models = httpx.get(server.url + "/v1/models").json()
    loaded = [m for m in models["data"] if m["loaded"]]
    assert loaded and loaded[0]["ram_bytes"] > 50 << 20 and "idle_seconds" in loaded[0]


def test_disconnecting_client_frees_its_slot_within_a_token(server):
    body = {"model": CHAT_MODEL, "stream": True, "max_tokens": 2000, "temperature": 0, "min_p": 0,
            "messages": [{"role": "user", "content": "Write a very long story about a dragon who learns to cook."}]}
    with httpx.Client(timeout=60) as c:
        with c.stream("POST", server.url + "/v1/chat/completions", json=body) as r:
            n = 0
            for line in r.iter_lines():
                if line.startswith("data: ") and '"content"' in line:
                    n += 1
                if n == 10:  # still reading: the job runs; leaving the loop closes the connection (httpcore)
                    assert metric(server.url, "edge_running_jobs") == 1
                    tokens_at_close = metric(server.url, "edge_tokens_total")
                    break
    # the connection is closed now
    deadline = time.time() + 5
    while metric(server.url, "edge_running_jobs") != 0 and time.time() < deadline:
        time.sleep(0.01)
    assert metric(server.url, "edge_running_jobs") == 0
    after = metric(server.url, "edge_tokens_total") - tokens_at_close
    assert after <= 3, f"{after} tokens were generated after the client went away"


def test_api_key_is_enforced(edge_home):
    srv = ServerProcess(edge_home, "--api-key", "s3cret", env=edge_env(edge_home, EDGE_OFFLINE="1"))
    try:
        bad = openai.OpenAI(base_url=srv.url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as err:
            bad.models.list()
        assert err.value.status_code == 401 and "--api-key" in err.value.body["message"]
        good = openai.OpenAI(base_url=srv.url + "/v1", api_key="s3cret", max_retries=0)
        assert any(m.id == CHAT_MODEL for m in good.models.list().data)
        assert httpx.get(srv.url + "/health").status_code == 200  # health stays open for probes
    finally:
        srv.stop()


def test_full_queue_answers_503_with_retry_after_and_stays_up(edge_home):
    srv = ServerProcess(edge_home, env=edge_env(edge_home, EDGE_OFFLINE="1", EDGE_MAX_QUEUE="1", EDGE_CHAT_SLOTS="1"))
    try:
        body = {"model": CHAT_MODEL, "max_tokens": 64, "temperature": 0, "min_p": 0,
                "messages": [{"role": "user", "content": "Write a long story about a cat."}]}

        def post(_):
            return httpx.post(srv.url + "/v1/chat/completions", json=body, timeout=120)

        with ThreadPoolExecutor(6) as ex:
            rs = list(ex.map(post, range(6)))
        codes = sorted(r.status_code for r in rs)
        assert 503 in codes and 200 in codes, codes
        busy = next(r for r in rs if r.status_code == 503)
        assert int(busy.headers["Retry-After"]) >= 1 and "queue is full" in busy.json()["error"]["message"]
        assert httpx.get(srv.url + "/health").json()["status"] == "ok"
    finally:
        srv.stop()


def test_fifty_concurrent_streams_match_their_solo_answers(edge_home):
    budget = 1 << 30
    srv = ServerProcess(edge_home, env=edge_env(edge_home, EDGE_OFFLINE="1", EDGE_CHAT_SLOTS="4",
                                                EDGE_RAM_BUDGET=str(budget), EDGE_MAX_QUEUE="64"))
    try:
        questions = ["What is the capital of France? Answer in one word.", "How many legs does a dog have?",
                     "What is the largest ocean on Earth?", "Name three fruits.", "What do bees make?"]
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0, timeout=300)

        def ask(q: str, stream: bool) -> str:
            kw = dict(model=CHAT_MODEL, messages=[{"role": "user", "content": q}], temperature=0, max_tokens=24)
            if not stream:
                return client.chat.completions.create(**kw).choices[0].message.content
            return "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(stream=True, **kw)
                           if c.choices)

        solo = {q: ask(q, stream=False) for q in questions}
        proc = psutil.Process(srv.proc.pid)
        peak = [0]
        stop = threading.Event()

        def watch():
            while not stop.is_set() and srv.proc.poll() is None:
                try:
                    peak[0] = max(peak[0], proc.memory_info().rss)
                except psutil.NoSuchProcess:
                    return
                time.sleep(0.05)

        w = threading.Thread(target=watch)
        w.start()
        jobs = [questions[i % len(questions)] for i in range(50)]
        errors: list[Exception] = []

        def one(q):
            try:
                return q, ask(q, stream=True)
            except Exception as e:  # collected and asserted below
                errors.append(e)
                return q, None

        with ThreadPoolExecutor(50) as ex:
            results = list(ex.map(one, jobs))
        stop.set()
        w.join()
        assert not errors, errors[:3]
        mismatches = [(q, a) for q, a in results if a != solo[q]]
        assert not mismatches, mismatches[:3]
        assert peak[0] < budget, f"server RSS peaked at {peak[0] / 2**20:.0f} MiB, budget {budget / 2**20:.0f} MiB"
        assert httpx.get(srv.url + "/health").status_code == 200
    finally:
        srv.stop()


def test_an_unexpected_error_is_a_counted_500_with_an_incident_id(runtime):
    """Starlette answers an unexpected exception from its outermost middleware, which no user middleware
    wraps: the request log still counts that 500 in /metrics (bench/fuzz_api.py's 5xx figure reads it)."""
    from edge.server.app import create_app
    from support import serve_in_thread

    app = create_app(runtime)

    @app.get("/v1/boom")
    def boom():
        raise RuntimeError("a bug")

    with serve_in_thread(runtime, app=app) as url:
        r = httpx.get(url + "/v1/boom", timeout=30)
        assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
        assert "a bug" not in r.text and "incident" in r.json()["error"]["message"]
        assert 'edge_http_responses_total{route="/v1/boom",status="500"} 1' in httpx.get(url + "/metrics").text
        assert httpx.get(url + "/health").status_code == 200
