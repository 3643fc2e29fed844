"""The ``lineside`` command explains itself: --version, every option's help and default,
-v/-q on either side of the subcommand, and flag values reported as the flag."""

from __future__ import annotations

import argparse
import logging
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.cli import HelpFormatter, build_parser, main, show_default

ROOT = Path(__file__).resolve().parents[2]
#: actions that explain themselves
SELF_EXPLAINED = (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)


def walk(
    parser: argparse.ArgumentParser, name: str = "lineside"
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every parser of the tree, with its command line (``lineside``, ``lineside run``, ...)."""
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from walk(sub, f"{name} {sub_name}")


def subcommands() -> list[tuple[str, argparse.ArgumentParser]]:
    return list(walk(build_parser()))[1:]


def test_version_names_the_package_and_python(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    out = capsys.readouterr().out.strip()
    assert out == f"lineside {version('lineside')} (Python {sys.version.split()[0]})"


def test_every_option_has_help_that_shows_its_default() -> None:
    problems = []
    tree = list(walk(build_parser()))
    assert len(tree) > 10  # every package registered its subcommands
    for command, parser in tree:
        assert parser.formatter_class is HelpFormatter, f"{command}: not formatted by edge.cli.HelpFormatter"
        formatter = parser._get_formatter()
        for action in parser._actions:
            if isinstance(action, SELF_EXPLAINED):
                continue
            flag = "/".join(action.option_strings) or action.dest
            if not (action.help or "").strip() or action.help == argparse.SUPPRESS:
                problems.append(f"{command} {flag}: no help text")
                continue
            shown = show_default(action.default)
            text = " ".join(formatter._expand_help(action).split())
            if shown is not None and " ".join(shown.split()) not in text:
                problems.append(f"{command} {flag}: its default {shown!r} is not in its help {text!r}")
    assert not problems, "\n".join(problems)


def test_defaults_appear_in_the_formatted_help() -> None:
    parsers = dict(subcommands())
    text = " ".join(parsers["lineside export"].format_help().split())
    assert "images for the Keras parity check (default: 8)" in text
    assert "INT8 calibration method (default: minmax)" in text
    assert "(default: False)" not in text and "(default: None)" not in text


def test_verbose_and_quiet_are_the_common_ones_everywhere() -> None:
    for command, parser in subcommands():
        for flag, dest in (
            ("-v", "verbose"),
            ("--verbose", "verbose"),
            ("-q", "quiet"),
            ("--quiet", "quiet"),
        ):
            action = parser._option_string_actions.get(flag)
            assert action is not None, f"{command}: no {flag}"
            assert action.dest == dest and action.default is argparse.SUPPRESS, (
                f"{command} uses {flag} for something else ({action.dest}); rename that option"
            )


@pytest.mark.parametrize(
    ("argv", "verbose", "quiet"),
    [
        (["keys", "k"], False, False),
        (["-v", "keys", "k"], True, False),
        (["keys", "k", "-v"], True, False),
        (["-q", "keys", "k"], False, True),
        (["keys", "k", "--quiet"], False, True),
    ],
)
def test_verbosity_parses_before_or_after_the_subcommand(argv: list[str], verbose: bool, quiet: bool) -> None:
    args = build_parser().parse_args(argv)
    assert (args.verbose, args.quiet) == (verbose, quiet)


@pytest.fixture
def root_level() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    yield
    root.setLevel(level)


@pytest.mark.parametrize(
    ("flags_before", "flags_after", "level"),
    [
        ([], [], logging.INFO),
        (["-v"], [], logging.DEBUG),
        ([], ["-v"], logging.DEBUG),
        (["-q"], [], logging.WARNING),
        ([], ["-q"], logging.WARNING),
    ],
)
def test_a_real_subcommand_runs_at_the_level_asked(
    flags_before: list[str], flags_after: list[str], level: int, tmp_path: Path, root_level: None
) -> None:
    argv = [*flags_before, "inspect", str(tmp_path), *flags_after]
    assert main(argv) == 2  # the real handler: tmp_path is no package
    assert logging.getLogger().getEffectiveLevel() == level


def test_quiet_hides_info_and_verbose_shows_debug_in_a_real_run(tmp_path: Path) -> None:
    """`lineside synth` in its own process logs INFO lines, and none with -q on either side."""

    def run(*argv: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "edge.cli", *argv],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        return done.stderr

    base = ["--n-train", "1", "--n-test", "1", "--size", "64"]
    assert re.search(r" INFO ", run("synth", str(tmp_path / "a"), *base))
    assert not re.search(r" INFO ", run("-q", "synth", str(tmp_path / "b"), *base))
    assert not re.search(r" INFO ", run("synth", str(tmp_path / "c"), *base, "-q"))


def test_verbose_and_quiet_together_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["-v", "keys", "k", "-q"])
    assert done.value.code == 2
    assert "-v and -q contradict each other" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flag", "value", "key"),
    [
        ("--connect", "tcp://bad", "endpoints.work"),
        ("--connect", "http://linebox:5571", "endpoints.work"),
        ("--results", "tcp://linebox:99999", "endpoints.results"),
        ("--results", "tcp://linebox", "endpoints.results"),
    ],
)
def test_a_wrong_endpoint_flag_is_reported_as_that_flag(
    flag: str, value: str, key: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    endpoints = {"--connect": "tcp://127.0.0.1:5571", "--results": "tcp://127.0.0.1:5572", flag: value}
    argv = ["worker", "--config", str(tmp_path / "line.yaml"), *(x for kv in endpoints.items() for x in kv)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"lineside: error: {flag} {value}: "), err[0]
    assert key in err[0] and "in the config" not in err[0]


def test_good_endpoint_flags_pass_on_to_the_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["worker", "--config", str(tmp_path / "line.yaml")]
    assert main([*argv, "--connect", "tcp://linebox:5571", "--results", "ipc:///tmp/results"]) == 2
    assert "line.yaml: config file not found" in capsys.readouterr().err
