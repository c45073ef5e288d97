"""Schema fuzzing: schemathesis against a real `edge-run serve`'s own /openapi.json, every route.

    python bench/fuzz_api.py                      # >= 1000 examples per route, chat model only
    python bench/fuzz_api.py --workloads          # + the tiny LCM and MobileSAM, so image/segment run too
    python bench/fuzz_api.py --examples 100 --max-time 60

Checks: no 5xx, status codes documented, content types and response bodies matching the schema, and
invalid data refused with a 4xx (schemathesis' not_a_server_error, status_code_conformance,
content_type_conformance, response_schema_conformance, negative_data_rejection). The figures come from
the server itself (/metrics counts answers by route and status), plus its RSS before and after and
whether it still answers. Generated chats are capped at 8 tokens (fuzz/schemathesis_hooks.py) so a run
takes minutes; the cap never turns an invalid request into a valid one.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,"
          "negative_data_rejection")


def http_counts(url: str) -> dict[tuple[str, int], int]:
    text = httpx.get(url + "/metrics", timeout=30).text
    return {(m[0], int(m[1])): int(m[2])
            for m in re.findall(r'edge_http_responses_total\{route="([^"]*)",status="(\d+)"\} (\d+)', text)}


def run(url: str, examples: int, workers: int, seed: int, max_time: int | None, report: Path) -> int:
    cmd = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(ROOT / "fuzz" / "schemathesis.toml"),
           "run", url + "/openapi.json", "--checks", CHECKS,
           "-n", str(examples), "--seed", str(seed), "--workers", str(workers), "--no-shrink",
           "--generation-database", "none", "--request-timeout", "120", "--suppress-health-check", "all",
           "--continue-on-failure", "--report", "ndjson", "--report-ndjson-path", str(report), "--no-color"]
    if max_time:
        cmd += ["--max-time", str(max_time)]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "fuzz.schemathesis_hooks", "PYTHONPATH": str(ROOT)}
    return subprocess.run(cmd, env=env, cwd=report.parent).returncode  # it keeps .schemathesis/ in its cwd


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=1000, help="examples per route (default 1000)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=17)
    ap.add_argument("--max-time", type=int, default=None, help="seconds for the whole run (default: no limit)")
    ap.add_argument("--home", help="EDGE_HOME to serve (default: the tests' cached home with SmolLM2)")
    ap.add_argument("--workloads", action="store_true", help="serve the tiny LCM and MobileSAM too")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args(argv)
    from support import CACHE, ServerProcess, chat_model_cached, edge_env, make_workloads_home, tiny_exports_cached

    if args.home:
        home = Path(args.home)
    elif args.workloads:
        import shutil

        home = CACHE / "fuzz-home"
        shutil.rmtree(home, ignore_errors=True)
        home = make_workloads_home(home, tiny_exports_cached(), chat_model_cached())
    else:
        home = chat_model_cached().parent.parent.parent
    srv = ServerProcess(home, env=edge_env(home, EDGE_OFFLINE="1", EDGE_KEEP_ALIVE="-1", EDGE_CTX="512"))
    try:
        proc = psutil.Process(srv.proc.pid)
        rss0 = proc.memory_info().rss
        before = http_counts(srv.url)
        t0 = time.time()
        code = run(srv.url, args.examples, args.workers, args.seed, args.max_time, CACHE / "fuzz_api.ndjson")
        took = time.time() - t0
        after = http_counts(srv.url)
        rss1 = proc.memory_info().rss
        alive = httpx.get(srv.url + "/health", timeout=30).json()["status"] == "ok"
    finally:
        srv.stop()
    per = defaultdict(lambda: defaultdict(int))
    for (route, status), n in after.items():
        d = n - before.get((route, status), 0)
        if d and route != "/metrics":
            per[route][status] += d
    print(f"schemathesis: {args.examples} examples per route, {took:.0f} s, exit code {code} "
          f"(0 = no failing check)")
    print(f"{'route':<26} {'requests':>9} {'2xx':>6} {'4xx':>6} {'5xx':>5}  statuses")
    total5 = 0
    for route in sorted(per):
        st = per[route]
        n = sum(st.values())
        c2 = sum(v for k, v in st.items() if 200 <= k < 300)
        c4 = sum(v for k, v in st.items() if 400 <= k < 500)
        c5 = sum(v for k, v in st.items() if k >= 500)
        total5 += c5
        print(f"{route:<26} {n:>9} {c2:>6} {c4:>6} {c5:>5}  {dict(sorted(st.items()))}")
    print(f"5xx: {total5}  RSS {rss0 / 2**20:.0f} -> {rss1 / 2**20:.0f} MB  answering afterwards: {alive}")
    res = {"examples_per_route": args.examples, "seconds": round(took), "exit_code": code, "fivexx": total5,
           "rss_mb": [round(rss0 / 2**20), round(rss1 / 2**20)], "alive_after": alive,
           "routes": {r: dict(v) for r, v in per.items()}}
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0 if code == 0 and total5 == 0 and alive else 1


if __name__ == "__main__":
    sys.exit(main())
