"""edge-run: the command line. Thin: parses arguments, calls edge.api.Runtime, prints.

The contract: every command is ``run(args) -> int`` (set as the parser's ``func``); a command that needs
a Runtime builds it itself with ``Runtime(settings=Settings.from_args(args))``. Workload commands
(chat, imagine, segment) come from the modules registered in edge/engines.py (``WORKLOADS[...].cli``),
tool commands from :data:`TOOL_CLIS`; each such module has ``add_parser(subparsers)``, and every
parser it adds gets the settings flags. Nothing below edge/cli.py imports it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path

from edge import __version__
from edge.config import Settings, add_settings_flags
from edge.engines import WORKLOADS
from edge.errors import BadRequest, EdgeError

TOOL_CLIS = ("export.distill.cli", "edge.devices_cli")  # commands that are not a workload


# -- settings ----------------------------------------------------------------------------------
def settings_from_args(args: argparse.Namespace) -> Settings:
    """Deprecated alias of :meth:`Settings.from_args` (kept until export recipes switch to edge.config)."""
    return Settings.from_args(args)


# -- commands ------------------------------------------------------------------------------------
def cmd_models(args) -> int:
    from edge.registry import Catalog, Store

    s = Settings.from_args(args)
    store = Store(s)
    cat = Catalog(s.user_lock)
    rows = [(e.id, e.task, e.format, f"{e.size / 2**20:.1f} MiB", "yes" if store.is_installed(e) else "no",
             e.license) for e in cat]
    rows += [(r.id, r.task, r.format, "-", "no (edge-run pull)", r.license.split(" (")[0])
             for r in cat.recipes.values() if r.id not in cat.entries]
    if args.json:
        out = [dict(zip(("id", "task", "format", "size", "installed", "license"), r)) for r in rows]
        for row in out:
            recipe = cat.recipes.get(row["id"])
            if recipe is not None and row["id"] not in cat.entries:
                row.update(installed="no", pull=f"edge-run pull {recipe.id}", source=recipe.upstream)
                if recipe.export:
                    row["export"] = recipe.export_command
        print(json.dumps(out, indent=1))
        return 0
    head = ("ID", "TASK", "FORMAT", "SIZE", "INSTALLED", "LICENSE")
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    for r in [head, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0


def cmd_pull(args) -> int:
    from edge.registry.pull import pull

    s = Settings.from_args(args)
    for name in args.ids:
        m = pull(s, name, force=args.force, say=lambda line: print(line, flush=True))
        print(f"{m.id}: installed and verified ({m.size / 2**20:.1f} MiB) in {m.dir}"
              + (f"\n  use it as: --model {m.id}" if m.id != name else ""))
    return 0


def cmd_rm(args) -> int:
    from edge.registry import Catalog, Store

    s = Settings.from_args(args)
    for mid in args.ids:
        removed = Store(s).rm(Catalog(s.user_lock).get(mid))
        print(f"{mid}: {'removed' if removed else 'was not installed'}")
    return 0


def cmd_serve(args) -> int:
    from edge.server.app import serve

    return serve(args)


def cmd_ps(args) -> int:
    """Ask a running server what it has loaded (the scheduler lives in the server process)."""
    import urllib.request

    url = args.url.rstrip("/") + "/v1/models"
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            data = json.load(r)["data"]
    except OSError as e:
        raise EdgeError(f"no edge-run server answers at {args.url} ({getattr(e, 'reason', e)}). Start one with "
                        "`edge-run serve` or pass --url.") from None
    loaded = [m for m in data if m.get("loaded")]
    if not loaded:
        print("no model loaded")
    for m in loaded:
        print(f"{m['id']:<36} {m.get('ram_bytes', 0) / 2**20:8.1f} MiB  running={m.get('running', 0)}  "
              f"idle={m.get('idle_seconds', 0)}s")
    return 0


def _bench_dir() -> Path | None:
    for base in (Path.cwd(), Path(__file__).resolve().parent.parent):
        if (base / "bench").is_dir():
            return base / "bench"
    return None


def cmd_bench(args) -> int:
    """Run bench/<name>.py from the source checkout (benches compare with peers such as torch)."""
    import subprocess

    d = _bench_dir()
    names = sorted(p.stem for p in d.glob("*.py") if not p.stem.startswith("_")) if d else []
    if args.name not in names:
        where = f"available: {', '.join(names)}" if names else "bench/ ships with the source checkout; run from it"
        raise BadRequest(f"unknown bench {args.name!r}; {where}.", param="name")
    return subprocess.call([sys.executable, str(d / f"{args.name}.py"), *args.rest])


def cmd_export(args) -> int:
    from export.recipes import load

    out = load(args.recipe).run(args)
    print(f"exported: {out}")
    return 0


def _with_nested(p: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """``p`` and every sub-command parser below it."""
    out = [p]
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                out += _with_nested(child)
    return out


def _add_module_commands(sub, modules: list[str]) -> None:
    """Let each command module add its parsers; every parser it adds (nested ones too, e.g.
    `edge-run distill lcm ... --home X`) gets the settings flags."""
    for module in modules:
        before = set(sub.choices)
        importlib.import_module(module).add_parser(sub)
        for name in set(sub.choices) - before:
            for parser_ in _with_nested(sub.choices[name]):
                add_settings_flags(parser_)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-run", description="Offline on-device inference: chat, images, "
                                "segmentation behind one scheduler.")
    p.add_argument("--version", action="version", version=f"edge-run {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    # the order of `edge-run --help`: chat, the built-in commands, the other workloads, the tools
    workload_clis = [w.cli for w in WORKLOADS.values() if w.cli]
    _add_module_commands(sub, workload_clis[:1])

    m = sub.add_parser("models", help="list models.lock entries and whether they are installed")
    m.add_argument("--json", action="store_true", help="print JSON")
    add_settings_flags(m)
    m.set_defaults(func=cmd_models)

    pl = sub.add_parser("pull", help="download and verify models: an id from `edge-run models` (recipes are "
                                     "downloaded and exported here) or any hub GGUF as hf.co/OWNER/REPO[:QUANT]")
    pl.add_argument("ids", nargs="+", metavar="ID", help="a model id, a recipe id, or hf.co/OWNER/REPO[:QUANT|:FILE]")
    pl.add_argument("--force", action="store_true", help="fetch again even if installed")
    add_settings_flags(pl)
    pl.set_defaults(func=cmd_pull)

    r = sub.add_parser("rm", help="remove installed models from the store")
    r.add_argument("ids", nargs="+", metavar="ID")
    add_settings_flags(r)
    r.set_defaults(func=cmd_rm)

    s = sub.add_parser("serve", help="the local OpenAI-compatible HTTP server")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8080)
    s.add_argument("--api-key", default=None,
                   help="require `Authorization: Bearer KEY` (prefer the EDGE_API_KEY variable: argv shows in `ps`)")
    s.add_argument("--allow-host", action="append", metavar="NAME",
                   help="also answer requests whose Host is NAME (without an API key only loopback names are "
                        "served, against DNS rebinding); '*' allows any")
    s.add_argument("--allow-pull", action="store_true",
                   help="let requests for a model that is not installed download it (default: 404 naming "
                        "`edge-run pull ID`)")
    s.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    add_settings_flags(s)
    s.set_defaults(func=cmd_serve)

    ps = sub.add_parser("ps", help="models loaded in a running server")
    ps.add_argument("--url", default="http://127.0.0.1:8080")
    ps.set_defaults(func=cmd_ps)

    b = sub.add_parser("bench", help="run a benchmark from bench/ (ours vs a peer, same run)")
    b.add_argument("name", help="chat, mixed, image, segment, ...")
    b.add_argument("rest", nargs=argparse.REMAINDER, help="arguments for the bench script")
    b.set_defaults(func=cmd_bench)

    e = sub.add_parser("export", help="export a model to an edge artifact (GGUF / ONNX), verified")
    esub = e.add_subparsers(dest="recipe", metavar="RECIPE")
    from export.recipes import RECIPES, available

    have = available()
    wants_export = bool(argv) and argv[0] == "export"  # recipe modules may import torch: only when asked
    e.epilog = "recipes: " + ", ".join(n for n in RECIPES if n in have)
    for name in RECIPES:
        if name in have and not wants_export:
            esub.add_parser(name, help="see `edge-run export " + name + " --help`")
        elif name in have:
            mod = importlib.import_module(have[name])
            ep = esub.add_parser(name, help=getattr(mod, "HELP", ""))
            mod.add_arguments(ep)
            add_settings_flags(ep)
            ep.set_defaults(func=cmd_export)

    _add_module_commands(sub, [*workload_clis[1:], *TOOL_CLIS])
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code = args.func(args)
    except EdgeError as e:
        print(f"edge-run: error: {e.message}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:  # a bug: still one line, with a way to see more
        if os.environ.get("EDGE_DEBUG"):
            raise
        print(f"edge-run: internal error: {e.__class__.__name__}: {e} (set EDGE_DEBUG=1 for the traceback and "
              "please report it)", file=sys.stderr)
        return 1
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
