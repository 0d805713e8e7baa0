"""`comining <command>`: one module per command, each with `register(subparsers)`.

Errors derived from CominingError print one line on stderr and exit with their code
(2 for bad usage or input, 1 for failures at run time); `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from comining import __version__
from comining.errors import CominingError

# Command modules under comining.cli, in the order `--help` lists them.
COMMANDS = ["demo", "synth", "sparsify", "check", "train", "mine", "candidates", "predict",
            "evaluate", "review", "decide", "refine", "export"]


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line plus where to read more (argparse would print the whole
    synopsis first: fifteen lines for `train`); exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see: {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="comining",
        description="Find the objects your COCO dataset forgot to label: train a co-mining "
                    "detector, review the boxes it mines, export an enlarged COCO json.")
    parser.add_argument("--version", action="version", version=f"comining {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show full tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"comining.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"comining.cli.{name}":
                continue  # command not built yet
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("COMINING_DEBUG") == "1"
    argv = [a for a in argv if a != "--debug"]  # accepted anywhere on the line
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
        return int(result or 0)
    except CominingError as exc:
        if debug:
            raise
        print(f"comining {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"comining {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug or an environment failure: still one line
        if debug:
            raise
        lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
        text = lines[0] + (" ..." if len(lines) > 1 else "") if lines else ""
        print(f"comining {args.command}: error: {type(exc).__name__}: {text} "
              f"(run with --debug for the traceback)", file=sys.stderr)
        return 1
