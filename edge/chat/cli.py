"""`edge-run chat`: an interactive terminal chat, or a one-shot answer with -p / stdin."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from edge.chat.request import ChatRequest
from edge.errors import BadRequest, Cancelled, EdgeError

HELP = """commands:
  /reset   forget the conversation (keeps --system)
  /help    this text
  /exit    leave (Ctrl-D works too)
Ctrl-C stops the answer being written, not the session."""


def add_parser(subparsers) -> None:
    """`edge-run chat`: registered for the chat workload in edge/engines.py."""
    p = subparsers.add_parser("chat", help="chat with a model in the terminal (or answer once with -p)")
    add_chat_arguments(p)
    p.set_defaults(func=run)


def add_chat_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-m", "--model", default=None, help="model id from `edge-run models` (default: the default chat model)")
    p.add_argument("-p", "--prompt", default=None, help="answer this once and exit (stdin is read when not a terminal)")
    p.add_argument("--system", default=None, help="system prompt")
    p.add_argument("--temp", type=float, default=None,
                   help="sampling temperature, 0 = greedy (default: the model's recommended value, else 0.8)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling (default: the model's, else 0.95)")
    p.add_argument("--top-k", type=int, default=None, help="top-k sampling, 0 = off (default: the model's, else 40)")
    p.add_argument("--seed", type=int, default=None,
                   help="sampling seed, for repeatable answers (default: a random one, shown by --verbose)")
    p.add_argument("--max-tokens", type=int, default=None, help="stop after this many tokens")
    p.add_argument("--json-schema", default=None, metavar="FILE", help="constrain the answer to this JSON Schema")
    p.add_argument("--verbose", action="store_true", help="print the seed and tokens/s after each answer (stderr)")


def _load_schema(path: str | None) -> dict | None:
    if path is None:
        return None
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise BadRequest(f"--json-schema {path!r} cannot be read ({e.strerror}). Give a readable JSON Schema file.",
                         param="--json-schema") from None
    try:
        schema = json.loads(text)
    except ValueError as e:
        raise BadRequest(f"--json-schema {path!r} is not valid JSON ({e}).", param="--json-schema") from None
    if not isinstance(schema, dict):
        raise BadRequest(f"--json-schema {path!r} must hold a JSON object (a JSON Schema).", param="--json-schema")
    return schema


FLAGS = {"temperature": "--temp", "top_p": "--top-p", "top_k": "--top-k", "max_tokens": "--max-tokens",
         "seed": "--seed", "json_schema": "--json-schema"}
"""ChatRequest fields -> the flags that set them, so a refused value is named as the user typed it."""


def _check_sampling(args: argparse.Namespace, schema: dict | None) -> None:
    """The flags through ChatRequest.check (the one place chat values are checked), before any model
    loads; a refusal names the flag instead of the field."""
    try:
        ChatRequest(messages=[{"role": "user", "content": "."}], max_tokens=args.max_tokens, temperature=args.temp,
                    top_p=args.top_p, top_k=args.top_k, seed=args.seed, json_schema=schema).check()
    except BadRequest as e:
        flag = FLAGS.get(e.param or "", e.param)
        raise BadRequest(e.message.replace(f"`{e.param}`", str(flag)), param=flag) from None


def _answer(rt, history: list[dict], args, schema: dict | None, out=sys.stdout) -> str | None:
    """Stream one answer to ``out``; returns the text, or None when Ctrl-C stopped it."""
    handle = rt.chat_job(history, model=args.model, max_tokens=args.max_tokens, temperature=args.temp,
                         top_p=args.top_p, top_k=args.top_k, seed=args.seed, json_schema=schema)
    parts: list[str] = []
    t0 = time.monotonic()
    first = None
    try:
        for step in handle.events():
            if step.kind == "token" and step.data:
                first = first or time.monotonic()
                parts.append(step.data)
                out.write(step.data)
                out.flush()
        result = handle.result()
    except KeyboardInterrupt:
        handle.cancel()
        try:
            handle.result(timeout=10)
        except (Cancelled, EdgeError, TimeoutError):
            pass
        out.write("\n[stopped]\n")
        out.flush()
        return None
    out.write("\n")
    out.flush()
    if args.verbose and first:
        dt = time.monotonic() - first
        rate = (result.completion_tokens - 1) / dt if dt > 0 and result.completion_tokens > 1 else 0.0
        print(f"[{result.prompt_tokens} prompt tokens, {result.completion_tokens} generated, first token "
              f"{(first - t0) * 1000:.0f} ms, {rate:.1f} tok/s, seed {result.seed}]", file=sys.stderr)
    return "".join(parts)


def run(args: argparse.Namespace) -> int:
    """Answer once (-p or piped stdin) or chat interactively; builds its Runtime from the settings flags."""
    from edge.api import Runtime
    from edge.config import Settings

    # 1. check inputs before loading anything
    schema = _load_schema(args.json_schema)
    _check_sampling(args, schema)
    prompt = args.prompt
    if prompt is None and not sys.stdin.isatty():
        prompt = sys.stdin.read()
        if not prompt.strip():
            raise BadRequest("stdin was empty: pipe a question in, or use -p \"question\".", param="stdin")
    system = [{"role": "system", "content": args.system}] if args.system else []

    with Runtime(settings=Settings.from_args(args)) as rt:
        # 2. resolve and install the model (pulls on first use, with a progress bar)
        model_id = rt.resolve_model(args.model, task="chat")
        args.model = model_id
        rt.ensure(model_id)
        # 3. one-shot
        if prompt is not None:
            return 0 if _answer(rt, system + [{"role": "user", "content": prompt}], args, schema) is not None else 130
        # 4. interactive
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass
        print(f"edge-run chat — {model_id}. /help for commands, /exit or Ctrl-D to leave.", file=sys.stderr)
        history = list(system)
        while True:
            try:
                line = input(">>> ")
            except EOFError:
                print(file=sys.stderr)
                return 0
            except KeyboardInterrupt:
                print("\n(use /exit or Ctrl-D to leave)", file=sys.stderr)
                continue
            text = line.strip()
            if not text:
                continue
            if text in ("/exit", "/quit", "/bye"):
                return 0
            if text == "/help":
                print(HELP)
                continue
            if text == "/reset":
                history = list(system)
                print("[conversation reset]")
                continue
            if text.startswith("/"):
                print(f"unknown command {text.split()[0]!r}. /help lists the commands.")
                continue
            history.append({"role": "user", "content": line})
            try:
                answer = _answer(rt, history, args, schema)
            except EdgeError as e:  # e.g. the conversation outgrew the context: keep the session
                history.pop()
                print(f"edge-run: error: {e.message}", file=sys.stderr)
                continue
            if answer is None:
                history.pop()
            else:
                history.append({"role": "assistant", "content": answer})
