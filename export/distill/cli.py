"""`edge-run distill <recipe> [--config FILE] [options]`, and the same parser as
`python -m export.distill <recipe> ...` — the form `accelerate launch` and `torchrun` start on
several processes / GPUs:

    edge-run distill llm-kd --teacher ./teacher --layers 2 --out ./student
    accelerate launch --num_processes 8 -m export.distill lcm --config lcm.toml
    torchrun --nproc_per_node 2 -m export.distill sam-encoder --teacher sam_vit_b.pth --out ./mobile --cpu
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from export.distill import RECIPES, load
from export.distill.common import REPORT, add_config_arguments, config_from_args

DESCRIPTION = ("Distil a smaller / faster student from a teacher: latent consistency distillation (lcm), "
               "chat-model logit distillation (llm-kd), MobileSAM-style encoder distillation (sam-encoder). "
               "The output folder is what `edge-run export lcm|llm|sam` takes.")


def add_recipe_parsers(parser: argparse.ArgumentParser) -> None:
    """One sub-command per recipe, its flags generated from the recipe's Config dataclass."""
    sub = parser.add_subparsers(dest="distill_recipe", metavar="RECIPE")
    for name, module in RECIPES.items():
        mod = importlib.import_module(module)  # light: torch is imported only when a recipe runs
        doc = (mod.__doc__ or "").strip().split("\n\n")[0]
        rp = sub.add_parser(name, help=mod.HELP, description=doc)
        add_config_arguments(rp, mod.Config)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("distill", help="distil a smaller / faster student (lcm, llm-kd, sam-encoder)",
                              description=DESCRIPTION)
    add_recipe_parsers(p)
    p.set_defaults(func=run)


def _check_extras() -> None:
    from edge.errors import BadRequest

    missing = [m for m in ("torch", "accelerate", "transformers") if importlib.util.find_spec(m) is None]
    if missing:
        raise BadRequest(f"distillation needs {', '.join(missing)}: pip install 'edge-run[export]'.", param="recipe")


def summary(out, report: dict) -> str:
    """One line per metric: before -> after (change)."""
    rows = [f"distill: wrote {out}"]
    for k, b in (report.get("before") or {}).items():
        a = (report.get("after") or {}).get(k)
        if isinstance(b, float) and isinstance(a, float):
            ch = report.get("change", {}).get(k)
            rows.append(f"  {k:<22} {b:>12.6g} -> {a:<12.6g}" + (f" ({ch:+.1%})" if ch is not None else ""))
    return "\n".join(rows)


def run(args: argparse.Namespace) -> int:
    """Run the chosen recipe (`edge-run distill` and `python -m export.distill`)."""
    import importlib.util  # noqa: F401 - used by _check_extras
    import json

    name = getattr(args, "distill_recipe", None)
    if not name:
        print("usage: edge-run distill {" + ",".join(RECIPES) + "} ... (see --help)", file=sys.stderr)
        return 2
    mod = load(name)
    cfg = config_from_args(mod.Config, args)
    _check_extras()
    out = mod.run(cfg)
    if os.environ.get("RANK", "0") == "0" and (out / REPORT).exists():
        print(summary(out, json.loads((out / REPORT).read_text())))
    return 0
