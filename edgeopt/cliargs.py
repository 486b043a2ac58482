"""The arguments every command that works on a project takes (--params, --set, --root) and range-checked
number arguments: the one argument helper of the CLI, `python -m stages.<name>`, the flows and the benchmarks.
Import-light: the device-side commands (predict, bench --model) use it where neither torch nor pydantic is
installed."""
from __future__ import annotations

import argparse
from typing import Callable


def add_params_args(p: argparse.ArgumentParser, params_help: str = "params file (default: params.yaml)",
                    root_help: str = "project directory holding data/, models/, metrics/ (default: .)") -> None:
    """--params / --set / --root: which project and which params a command works with."""
    p.add_argument("--params", default="params.yaml", help=params_help)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a parameter, e.g. --set train.epochs=3 (repeatable)")
    p.add_argument("--root", default=".", help=root_help)


def in_range(lo: float, hi: float | None = None, kind: Callable[[str], float] = int,
             unit: str = "") -> Callable[[str], float]:
    """An argparse `type` accepting `kind` values in lo..hi (no upper bound when hi is None); a value out of
    range is a usage error (exit 2) naming the range."""
    def parse(text: str) -> float:
        value = kind(text)
        if value < lo or (hi is not None and value > hi):
            allowed = f">= {lo:g}" if hi is None else f"{lo:g}..{hi:g}"
            raise argparse.ArgumentTypeError(f"must be {allowed}{unit} (got {text})")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in "invalid int value: 'x'"
    return parse
