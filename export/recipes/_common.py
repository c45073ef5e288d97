"""What every export recipe shares.

* Options are declared once, as the fields of the recipe's ``Config`` dataclass (a :class:`RecipeConfig`)
  made with :func:`option` (flags, help, argparse keywords). ``Config.add_arguments`` turns them into
  flags and ``Config.from_args`` turns a parsed Namespace into the typed config: the one place where
  argparse meets a recipe. Python callers build the Config directly.
* The runtime settings (``--home``, ``--threads`` ... from :func:`edge.config.add_settings_flags`) travel in
  ``Config.settings``; a flag the recipe declares itself (lcm's ``--threads``) belongs to the recipe.
* :func:`install` puts a finished export into the store and the user's models.lock (``--add``).
* :func:`entry_point` makes a recipe module's ``main``: ``python -m export.recipes.<module> ...``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

from edge.config import Settings, add_settings_flags


def option(*flags: str, default: Any = None, help: str, **argparse_kw: Any) -> Any:
    """A Config field that is also a command-line option: ``flags`` as argparse takes them (a bare name
    is a positional argument), ``help`` and any other ``add_argument`` keyword."""
    return field(default=default, metadata={"flags": flags, "help": help, "argparse": argparse_kw})


def source_option(help: str) -> Any:
    """The optional positional SOURCE (a checkpoint, folder or hub id; omitted with --random-init)."""
    return option("source", nargs="?", help=help)


def random_init_option(presets: tuple[str, ...], help: str) -> Any:
    """``--random-init PRESET``: the real architecture with seeded random weights instead of a SOURCE."""
    return option("--random-init", choices=presets, help=help)


def _options(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.metadata.get("flags")]


@dataclass
class RecipeConfig:
    """The part of every recipe's Config that is not one of its own options, and the argparse bridge."""

    settings: Settings = field(default_factory=Settings.from_env, metadata={"help": "runtime settings"})

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """One argparse argument per option, in declaration order; an option whose flag the parser
        already has (a host command's shared flag) is left to the host."""
        for f in _options(cls):
            flags = f.metadata["flags"]
            if any(flag in parser._option_string_actions for flag in flags):  # noqa: SLF001
                continue
            kw = dict(f.metadata["argparse"])
            if flags[0].startswith("-"):
                kw["dest"] = f.name
            parser.add_argument(*flags, default=f.default, help=f.metadata["help"], **kw)

    @classmethod
    def from_args(cls, args: argparse.Namespace):
        """The typed Config of a parsed command line: the options by name, and the settings from the
        runtime settings flags (flags > EDGE_* variables > defaults)."""
        own = {f.name for f in _options(cls)}
        values = {name: getattr(args, name) for name in own if hasattr(args, name)}
        rest = argparse.Namespace(**{k: v for k, v in vars(args).items() if k not in own})
        return cls(**values, settings=Settings.from_args(rest))


def typed(cls: type, cfg):
    """``cfg`` itself, or the Config of a parsed Namespace (for callers still passing one)."""
    return cls.from_args(cfg) if isinstance(cfg, argparse.Namespace) else cfg


def install(cfg: RecipeConfig, folder: str | Path, *, model_id: str, task: str, fmt: str, license: str,
            source: dict[str, Any], description: str) -> None:
    """Copy an export folder into the store ($EDGE_HOME/models) and pin it in the user's models.lock,
    with hashes computed from the files (``--add``)."""
    from edge.registry import add_local_model

    add_local_model(cfg.settings, folder, model_id=model_id, task=task, fmt=fmt, license=license, source=source,
                    description=description)


def run_main(recipe: ModuleType, name: str, argv: list[str] | None = None) -> int:
    """Parse ``argv`` with the recipe's options and the runtime settings flags, run it, and turn an
    EdgeError into ``<name>: error: ...`` and its exit code."""
    from edge.errors import EdgeError

    parser = argparse.ArgumentParser(prog=f"python -m {recipe.__spec__.name}", description=recipe.HELP)
    recipe.Config.add_arguments(parser)
    add_settings_flags(parser)
    args = parser.parse_args(argv)
    try:
        recipe.run(recipe.Config.from_args(args))
    except EdgeError as e:
        print(f"{name}: error: {e.message}")
        return e.exit_code
    return 0


def entry_point(module: str, name: str) -> Callable[[list[str] | None], int]:
    """The ``main(argv) -> int`` of recipe module ``module`` (``python -m export.recipes.<module> ...``,
    the same as ``edge-run export <name> ...``)."""

    def main(argv: list[str] | None = None) -> int:
        return run_main(sys.modules[module], name, argv)

    return main
