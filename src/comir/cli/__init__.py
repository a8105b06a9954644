"""Command-line interface: ``comir <command> ...`` (also ``python -m comir``).

A thin shell over the Python API: every command parses its options, calls one library
function and prints a short summary. Input problems surface as :class:`ComirError`, are
printed as one line and exit with status 2; warnings are printed as one line too.
Commands live in :mod:`~comir.cli.training` (train, embed), :mod:`~comir.cli.registration`
(register, register-batch, warp-points, warp), :mod:`~comir.cli.evaluation` (make-eval, evaluate, compare)
and :mod:`~comir.cli.extras` (synth, demo).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

# importing the command modules registers their commands
from comir.cli import evaluation, extras, registration, training  # noqa: F401
from comir.cli.base import COMMANDS
from comir.errors import ComirError

#: Order of ``comir --help``: the workflow from training to evaluation.
ORDER = ("train", "embed", "register", "register-batch", "warp-points", "warp", "make-eval",
         "evaluate", "compare", "synth", "demo")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    from comir import __version__

    parser = argparse.ArgumentParser(
        prog="comir",
        description="Contrastive Multimodal Image Representations for multimodal registration.",
    )
    parser.add_argument("--version", action="version", version=f"comir {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    names = sorted(COMMANDS, key=lambda n: ORDER.index(n) if n in ORDER else len(ORDER))
    for name in names:
        help_, add_arguments, run = COMMANDS[name]
        p = sub.add_parser(name, help=help_, description=help_)
        add_arguments(p)
        p.set_defaults(_run=run)
    return parser


def _one_line_warnings(command: str) -> Callable:
    """A ``warnings.showwarning`` that prints ``comir <command>: warning: <message>``."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        text = " ".join(str(message).split())  # one line, whatever the source wrote
        print(f"comir {command}: warning: {text}", file=sys.stderr if file is None else file)

    return show


def main(argv: list[str] | None = None) -> int:
    import warnings

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.showwarning = _one_line_warnings(args.command)
            return int(args._run(args) or 0)
    except ComirError as exc:
        print(f"comir {args.command}: error: {exc}", file=sys.stderr)
        return ComirError.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
