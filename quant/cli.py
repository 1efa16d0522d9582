"""Command line: `quant <command>` / `python -m quant <command>`.

Each command lives in its own module exposing `add_arguments(parser)` and `run(args) -> int`.
Command modules must import fast (esp_ppq and torch are imported inside `run`), so `--help`
stays quick and quiet.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from quant.errors import UserError

# name -> (module, one-line help)
COMMANDS = {
    "train": ("quant.variants.train", "train the default float model on synthetic gestures (reproducible)"),
    "vectors": ("quant.variants.vectors", "make a models folder's fixed test vectors from your own images"),
    "build": ("quant.variants.build", "produce the quantized variants in a models folder (default models/)"),
    "report": ("quant.variants.report", "compare the variants with the float model (table and PNG chart)"),
    "inspect": ("quant.espdl.reader", "print the contents of an .espdl file"),
    "verify": ("quant.espdl.verify", "run an .espdl's embedded test inputs through the host interpreter"),
    "diff": ("quant.espdl.bisect", "find the first layer where two runs of a model diverge"),
    "firmware": ("quant.board.firmware", "build the ESP-IDF test app for each variant (needs ESP-IDF)"),
    "virtual-board": ("quant.board.virtual", "serve the test app's protocol on a pseudo-terminal"),
    "update-budgets": ("quant.board.budgets", "rewrite .info budgets from a board run, with headroom"),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quant", description="Quantize the gesture CNN for ESP32-S3 and check chip against simulator."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(p)
    return parser


def _ensure_hash_seed(argv: list[str]) -> None:
    """esp-ppq's file bytes depend on set/dict iteration order: pin PYTHONHASHSEED by re-executing."""
    if os.environ.get("PYTHONHASHSEED") != "0":
        env = dict(os.environ, PYTHONHASHSEED="0")
        os.execve(sys.executable, [sys.executable, "-m", "quant", *argv], env)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    _ensure_hash_seed(argv)
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("error: interrupted; the last good artifacts were left untouched", file=sys.stderr)
        return 130
