"""The one ``lineside`` command. Each package registers its own subcommands.

``register(subparsers)`` in ``edge.commands``, ``converter.cli`` and ``training.cli``
adds subparsers whose default ``func(args) -> int`` runs the command. Those
modules import nothing heavy at module level (TensorFlow, onnxruntime, TensorRT
are imported inside the handlers), so ``lineside --help`` is instant and the
line-side install works without TensorFlow.

After every package has registered, ``explain`` gives each subcommand the same help
formatter (every option's default is shown) and the ``-v``/``-q`` options, so that they
work before or after the subcommand; a subcommand registered later is covered as well.
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys

from converter.errors import LinesideError


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with ``(default: X)``, unless the default is nothing to show
    (None, False, an empty list) or the help already says its default in its own words."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = show_default(action.default)
        if shown is None or "default" in text.lower():
            return text
        return f"{text} (default: {shown.replace('%', '%%')})"


def show_default(value: object) -> str | None:
    """A default as the help shows it, or None when there is nothing to show."""
    if value is None or value is False or value is argparse.SUPPRESS:
        return None
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value) if value else None
    return str(value)


def version_text() -> str:
    """``lineside X.Y.Z (Python A.B.C)``: the installed distribution's version."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        ours = version("lineside")
    except PackageNotFoundError:  # run from a source tree that was never installed
        ours = "unknown (not installed; pip install -e .)"
    return f"lineside {ours} (Python {platform.python_version()})"


def add_verbosity(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """``-v``/``-q``; with ``suppress``, an absent flag leaves the top level's value alone."""
    default = argparse.SUPPRESS if suppress else False
    parser.add_argument("-v", "--verbose", action="store_true", default=default, help="debug logging")
    parser.add_argument(
        "-q", "--quiet", action="store_true", default=default, help="log warnings and errors only"
    )


def explain(sub: argparse._SubParsersAction) -> None:
    """The common options and help format of every subcommand; call it after all registrations.

    A subcommand that already defines ``-v``/``-q``/``--verbose``/``--quiet`` for something
    else keeps its own (tests/edge/test_cli.py then fails and names it)."""
    for p in sub.choices.values():
        p.formatter_class = HelpFormatter
        taken = {"-v", "-q", "--verbose", "--quiet"} & set(p._option_string_actions)
        if not taken:
            add_verbosity(p, suppress=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lineside",
        description="Line-side visual inspection. `lineside COMMAND --help` explains a command.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=version_text())
    add_verbosity(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    from converter import cli as converter_cli
    from edge import commands as edge_commands
    from edge import doctor
    from edge.ui import command as ui_command

    # training ships in the same distribution (pyproject's packages.find), so this import fails
    # only on a real error, which must show; training.cli loads TensorFlow inside its handlers
    from training import cli as training_cli

    training_cli.register(sub)
    converter_cli.register(sub)
    edge_commands.register(sub)
    doctor.register(sub)
    ui_command.register(sub)
    explain(sub)  # keep last: it covers every subcommand registered above
    return parser


def log_level(args: argparse.Namespace) -> int:
    """DEBUG with -v, WARNING with -q, else INFO."""
    if args.verbose:
        return logging.DEBUG
    return logging.WARNING if args.quiet else logging.INFO


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verbose and args.quiet:
        parser.error("-v and -q contradict each other; give one of them")
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    # set apart from basicConfig, which does nothing when the root logger already has a handler
    logging.getLogger().setLevel(log_level(args))
    try:
        return int(args.func(args) or 0)
    except LinesideError as exc:
        print(f"lineside: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
