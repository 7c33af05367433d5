"""The ``recipe-chain`` command line.

Each group of subcommands lives in its own module under :mod:`recipe_chain.commands`
and exposes ``register(subparsers)``; handlers return an exit code. User errors
(bad input, missing files, unknown ids) print one clear line and exit 2, never a
traceback; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from recipe_chain.commands.terminal import terminal_safe
from recipe_chain.errors import RecipeChainError

__all__ = ["main", "build_parser"]

_COMMAND_MODULES = (
    "recipe_chain.commands.store_commands",
    "recipe_chain.commands.train",
    "recipe_chain.commands.evaluate",
    "recipe_chain.commands.suite",
    "recipe_chain.commands.verifier",
)

logger = logging.getLogger("recipe_chain.cli")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every available subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="recipe-chain",
        description="Lifelong knowledge editing of local LLMs (RECIPE) with a Chroma knowledge store.",
    )
    parser.add_argument("--store", default=None, help="Path of the embedded Chroma store (default: ./recipe-store).")
    parser.add_argument("--server", default=None, help="URL of a Chroma server, e.g. http://127.0.0.1:8000.")
    parser.add_argument("--namespace", default="default", help="Knowledge-base namespace inside the store.")
    parser.add_argument("--checkpoint", default=None, help="RECIPE checkpoint directory (default: the shipped one).")
    parser.add_argument("--allow-untrained", action="store_true",
                        help="Without any RECIPE checkpoint, use an untrained editor (smoke runs; edits will not work).")
    parser.add_argument("--debug", action="store_true", help="Show tracebacks and debug logs.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue  # a command group not present in this build
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``recipe-chain`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (RecipeChainError, ValueError, TypeError, KeyError, FileNotFoundError, ImportError) as exc:
        if args.debug:
            raise
        print(f"error: {terminal_safe(str(exc), keep_newlines=True)}", file=sys.stderr)
        return 2
    except Exception as exc:
        if args.debug or not type(exc).__module__.startswith("chromadb"):
            raise
        # Chroma's own errors (a broken or foreign store): one line, not a traceback
        print(f"error: Chroma: {terminal_safe(str(exc))} (rerun with --debug for the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
