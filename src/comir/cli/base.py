"""The command registry shared by the command modules of :mod:`comir.cli`."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from comir.errors import ComirError

# name -> (help, add_arguments, run), in the order ``comir --help`` lists them
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable]] = {}


def command(name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None]):
    """Register ``run(args) -> int | None`` as ``comir <name>``."""

    def deco(run: Callable) -> Callable:
        COMMANDS[name] = (help, add_arguments, run)
        return run

    return deco


def parse_options(items: list[str] | None) -> dict:
    """``["key=value", ...]`` -> dict; values parsed as JSON when possible (numbers, bools)."""
    import json

    out: dict = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ComirError(f"--option {item!r} is not KEY=VALUE; e.g. --option levels=4")
        try:
            out[key.strip().replace("-", "_")] = json.loads(value)
        except ValueError:
            out[key.strip().replace("-", "_")] = value
    return out
