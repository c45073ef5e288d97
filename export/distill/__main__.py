"""`python -m export.distill <recipe> ...`: the entry point accelerate launch / torchrun start."""

from __future__ import annotations

import argparse
import sys

from export.distill.cli import DESCRIPTION, add_recipe_parsers, run


def main(argv: list[str] | None = None) -> int:
    from edge.errors import EdgeError

    parser = argparse.ArgumentParser(prog="python -m export.distill", description=DESCRIPTION)
    add_recipe_parsers(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except EdgeError as e:
        print(f"distill: error: {e.message}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
