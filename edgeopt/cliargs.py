"""The arguments every command that works on a project takes (--params, --set, --root). Import-light: the
device-side commands (predict, bench --model) use it where neither torch nor pydantic is installed."""
from __future__ import annotations

import argparse


def add_params_args(p: argparse.ArgumentParser) -> None:
    """--params / --set / --root: how every stage command (and the CLI) is told which project and params."""
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a parameter, e.g. --set train.epochs=3 (repeatable)")
    p.add_argument("--root", default=".", help="project directory holding data/, models/, metrics/ (default: .)")
