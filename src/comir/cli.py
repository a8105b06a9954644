"""Command-line interface: ``comir <command> ...``.

A thin shell over the Python API: every command parses its options, calls one library
function and prints a short summary. Input problems surface as :class:`ComirError`, are
printed as one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from comir.errors import ComirError

# name -> (help, add_arguments, run)
_COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable]] = {}


def command(name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None]):
    """Register ``run(args) -> int | None`` as ``comir <name>``."""

    def deco(run: Callable) -> Callable:
        _COMMANDS[name] = (help, add_arguments, run)
        return run

    return deco


# ---------------------------------------------------------------------------- train / embed
# (commands are added below, one block per command)


# ---------------------------------------------------------------------------- entry point
def build_parser() -> argparse.ArgumentParser:
    from comir import __version__

    parser = argparse.ArgumentParser(
        prog="comir",
        description="Contrastive Multimodal Image Representations for multimodal registration.",
    )
    parser.add_argument("--version", action="version", version=f"comir {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_, add_arguments, run) in _COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        add_arguments(p)
        p.set_defaults(_run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except ComirError as exc:
        print(f"comir {args.command}: error: {exc}", file=sys.stderr)
        return ComirError.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
