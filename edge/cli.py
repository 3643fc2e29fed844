"""The one ``lineside`` command. Each package registers its own subcommands.

``register(subparsers)`` in ``edge.commands``, ``converter.cli`` and ``training.cli``
adds subparsers whose default ``func(args) -> int`` runs the command. Those
modules import nothing heavy at module level (TensorFlow, onnxruntime, TensorRT
are imported inside the handlers), so ``lineside --help`` is instant and the
line-side install works without TensorFlow.
"""

from __future__ import annotations

import argparse
import logging
import sys

from converter.errors import LinesideError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lineside", description="Line-side visual inspection.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    from converter import cli as converter_cli
    from edge import commands as edge_commands
    from edge.ui import command as ui_command

    try:
        from training import cli as training_cli
    except ImportError:  # a line-side install may ship without the training package
        training_cli = None
    if training_cli is not None:
        training_cli.register(sub)
    converter_cli.register(sub)
    edge_commands.register(sub)
    ui_command.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return int(args.func(args) or 0)
    except LinesideError as exc:
        print(f"lineside: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
