"""``--set KEY=VALUE``: the one override parser of every ``lineside`` command.

The line config (``lineside run``, ``ui``), the training recipe (``train``, ``eval``) and any
later command apply their ``--set`` flags here, so all of them read keys and values alike:

- a key is a dotted path that may index lists: ``workers.count``, ``cameras[0].fps``,
  ``dataset.classes[1]``;
- a value is YAML: ``5``, ``0.5``, ``true``, ``[1, 2]``, ``null``, or text;
- a bad path (an index past the end, ``model..x``, a missing ``=``, an index on a mapping) is one
  error line that names the flag and the fix, and an unknown key suggests the nearest known one
  ("did you mean", as Ultralytics does).

It lives in ``converter``, the floor both ``edge`` and ``training`` import (docs/architecture.md).
"""

from __future__ import annotations

import argparse
import copy
import difflib
import re
from collections.abc import Iterable
from typing import Any

import yaml

from converter.errors import LinesideError


class OverrideError(LinesideError):
    """A ``--set`` flag that cannot be applied: no ``=``, a bad key path, a value that is not YAML."""


class ListOf:
    """A schema node for a list whose items all have the shape ``item`` (e.g. the line's cameras)."""

    def __init__(self, item: Any) -> None:
        self.item = item


#: one step of a key path: a name, then any number of [index]
_STEP = re.compile(r"([A-Za-z_][A-Za-z0-9_-]*)((?:\[-?[0-9]+\])*)")
_INDEX = re.compile(r"\[(-?[0-9]+)\]")


def add_set_flag(parser: argparse.ArgumentParser, example: str) -> None:
    """The ``--set KEY=VALUE`` flag (repeatable; ``args.set`` is a list, empty when not given)."""
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a key, e.g. --set {example} (a YAML value; a path may index a list); repeatable",
    )


def did_you_mean(key: str, known: Iterable[str]) -> str:
    """``"; did you mean 'count'?"`` when ``key`` is close to one of ``known``, else ``""``."""
    close = difflib.get_close_matches(str(key), [str(k) for k in known], n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def parse_key(key: str, *, error: type[Exception] = OverrideError, flag: str = "") -> list[str | int]:
    """``"cameras[0].fps"`` -> ``["cameras", 0, "fps"]``; a malformed path is one ``error`` line."""
    where = flag or f"key {key!r}"
    if not key:
        msg = f"{where}: the key is empty; write KEY=VALUE, e.g. workers.count=2"
        raise error(msg)
    path: list[str | int] = []
    for part in key.split("."):
        match = _STEP.fullmatch(part)
        if match is None:
            what = "an empty part (two dots, or a dot at an end)" if not part else f"{part!r} is not a key"
            msg = f"{where}: {what}; a key looks like section.name or list[0].name"
            raise error(msg)
        path.append(match.group(1))
        path.extend(int(i) for i in _INDEX.findall(match.group(2)))
    return path


def parse_set(text: str, *, error: type[Exception] = OverrideError) -> tuple[str, Any]:
    """``"a.b=value"`` -> ``("a.b", value)`` with the value read as YAML; the key is checked too."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    flag = f"--set {text!r}"
    if not sep:
        msg = f"{flag}: expected KEY=VALUE, e.g. workers.count=2"
        raise error(msg)
    parse_key(key, error=error, flag=flag)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        msg = (
            f"{flag}: the value is not valid YAML ({getattr(exc, 'problem', None) or exc}); "
            "quote text that YAML would read otherwise"
        )
        raise error(msg) from None
    return key, value


def show_path(path: list[str | int]) -> str:
    """``["cameras", 0, "fps"]`` -> ``"cameras[0].fps"``."""
    out = ""
    for step in path:
        out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else step)
    return out


def set_value(
    data: dict[str, Any],
    key: str,
    value: Any,
    schema: Any = None,
    *,
    error: type[Exception] = OverrideError,
    flag: str = "",
) -> None:
    """Set ``key`` (a path such as ``cameras[0].fps``) to ``value`` in ``data``, in place.

    ``schema`` is the shape of the data, when known: a dict names the keys a mapping may hold
    (an unknown one is refused with a suggestion), a ``ListOf`` the shape of a list's items,
    anything else is a leaf whose default is copied in when the path goes below a key the data
    does not have yet (``dataset.classes[0]`` on a recipe that leaves the classes at default).
    Below a leaf, or with no schema, any key is taken; the config's own check judges it.
    """
    flag = flag or f"override {key!r}"
    path = parse_key(key, error=error, flag=flag)
    node: Any = data
    shape = schema
    for i, step in enumerate(path):
        here = show_path(path[:i]) or "the top level"
        last = i == len(path) - 1
        if isinstance(step, int):
            if not isinstance(node, list):
                kind = "empty" if node is None else ("a mapping" if isinstance(node, dict) else repr(node))
                msg = f"{flag}: {here} is {kind}, not a list; drop the [{step}]"
                raise error(msg)
            if not -len(node) <= step < len(node):
                msg = (
                    f"{flag}: {show_path(path[: i + 1])} is past the end; {here} has {len(node)} "
                    f"item{'s' if len(node) != 1 else ''}" + (f" (0..{len(node) - 1})" if node else "")
                )
                raise error(msg)
            shape = shape.item if isinstance(shape, ListOf) else None
        else:
            if not isinstance(node, dict):
                if isinstance(node, list):
                    msg = f"{flag}: {here} is a list; index it, e.g. {here}[0].{step}"
                else:
                    shown = "empty" if node is None else repr(node)
                    msg = f"{flag}: {here} is {shown}, not a mapping; set {here} itself"
                raise error(msg)
            if isinstance(shape, dict):
                if step not in shape:
                    known = list(shape)
                    msg = (
                        f"{flag}: unknown key {show_path(path[: i + 1])!r}{did_you_mean(step, known)} "
                        f"(allowed here: {', '.join(known)})"
                    )
                    raise error(msg)
                shape = shape[step]
            else:
                shape = None
        if last:
            node[step] = value
            return
        if isinstance(step, int):
            node = node[step]
            continue
        child = node.get(step)
        if child is None:
            if isinstance(shape, dict):
                child = {}
            elif isinstance(shape, ListOf):
                child = []
            elif shape is not None:
                child = copy.deepcopy(shape)  # a leaf's default, e.g. dataset.classes
            elif not isinstance(path[i + 1], int):
                child = {}  # below a free mapping (a camera's options), or with no schema
            if child is not None:
                node[step] = child
        node = child


def apply_overrides(
    data: dict[str, Any] | None,
    sets: Iterable[str],
    schema: Any = None,
    *,
    error: type[Exception] = OverrideError,
) -> dict[str, Any]:
    """A copy of ``data`` with each ``--set KEY=VALUE`` of ``sets`` applied in order.

    ``schema`` as in ``set_value``; ``error`` is the class each one-line error is raised as (the
    caller's own config error, so its handlers and tests see one kind).
    """
    out = copy.deepcopy(data) if data else {}
    for text in sets:
        key, value = parse_set(text, error=error)
        set_value(out, key, value, schema, error=error, flag=f"--set {text!r}")
    return out
