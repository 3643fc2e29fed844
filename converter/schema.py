"""The one way lineside declares and validates a schema: dataclasses whose fields carry their rules.

The line config (edge/config.py), training recipes (training/config.py), the model manifest
(converter/manifest.py) and the engine manifest (converter/engine/manifest.py) are all trees of
dataclasses. Each field says what it allows in its metadata: ``number`` (a range), ``choices``,
``text`` or a ``Rule``. ``build`` turns parsed YAML or JSON into the tree, checking every key it
reads for its type, its rule and, for a float, that it is finite; an unknown key, a missing
required one or a bad value is one error line naming the file, the key path, the allowed values
and (for a near miss) the key that was meant. The same dataclasses give the ``--set`` shape
(``override_schema``) and the generated key tables (edge/config_docs.py).

What spans keys (unique camera ids, a crop that hard-negative mining needs) stays with each
schema, checked after ``build``. It lives in ``converter``, the floor that ``edge`` and
``training`` both import (docs/architecture.md).
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from converter.errors import LinesideError
from converter.overrides import ListOf, did_you_mean


class ConfigError(LinesideError, ValueError):
    """A config or recipe is missing, unreadable or invalid (the one class for both)."""


@dataclass(frozen=True)
class Rule:
    """What one key allows: ``check(value)``, and the words an error names the rule with."""

    check: Callable[[Any], bool]
    #: what the error says after the value, e.g. "must be >= 0"
    text: str
    #: for a number, its range ("> 0"): said when the value is NaN or infinite
    bounds: str = ""


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def number_rule(
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    note: str = "",
) -> Rule:
    """A number at least ``ge`` / above ``gt`` / at most ``le`` / below ``lt``; ``note`` says
    what a special value means."""
    low, low_open = (gt, True) if gt is not None else (ge, False)
    high, high_open = (lt, True) if lt is not None else (le, False)

    def check(v: float) -> bool:
        above = low is None or (v > low if low_open else v >= low)
        return above and (high is None or (v < high if high_open else v <= high))

    if low is not None and high is not None:
        if low_open or high_open:
            bounds = f"{'>' if low_open else '>='} {_num(low)} and {'<' if high_open else '<='} {_num(high)}"
        else:
            bounds = f"between {_num(low)} and {_num(high)}"
    elif low is not None:
        bounds = f"{'>' if low_open else '>='} {_num(low)}"
    else:
        bounds = f"{'<' if high_open else '<='} {_num(high)}"
    bounds += f" ({note})" if note else ""
    return Rule(check, f"must be {bounds}", bounds)


def text_rule(*, empty: str = "") -> Rule:
    """Printable text, e.g. a path; ``empty`` says what an empty value means (else it is refused)."""
    if empty:
        return Rule(
            lambda v: v.isprintable(), f"must be printable text (no control characters; empty = {empty})"
        )
    return Rule(
        lambda v: v != "" and v.isprintable(), "must be non-empty printable text (no control characters)"
    )


#: a yes/no key (its type is checked on load; the rule only documents it)
YES_NO = Rule(lambda v: isinstance(v, bool), "must be true or false")


def key(
    default: Any = dataclasses.MISSING,
    *,
    factory: Callable[[], Any] | Any = dataclasses.MISSING,
    rule: Rule | None = None,
    choices: tuple[Any, ...] = (),
    required: bool = False,
) -> Any:
    """A field of a schema. ``required``: a file must have the key even though the program has a
    default for it (a manifest is written whole; one without its threshold was cut short)."""
    meta: dict[str, Any] = {}
    if rule is not None:
        meta["rule"] = rule
    if choices:
        meta["choices"] = tuple(choices)
    if required:
        meta["required"] = True
    return field(default=default, default_factory=factory, metadata=meta)


def number(default: Any = dataclasses.MISSING, *, required: bool = False, **bounds: Any) -> Any:
    """A numeric field with its allowed range (see number_rule)."""
    return key(default, rule=number_rule(**bounds), required=required)


def yes_no(default: bool) -> Any:
    return key(default, rule=YES_NO)


def text(default: Any = dataclasses.MISSING, *, required: bool = False, **kw: str) -> Any:
    return key(default, rule=text_rule(**kw), required=required)


def choices(*allowed: str, default: Any = dataclasses.MISSING, required: bool = False) -> Any:
    return key(default, choices=allowed, required=required)


def internal(default: str) -> Any:
    """Set by the program, never by the file (an unknown key there)."""
    return field(default=default, metadata={"internal": True})


def show(value: Any) -> str:
    """The value as an error names it (cut short: a 400-digit number is not helpful)."""
    shown = repr(value)
    return shown if len(shown) <= 80 else shown[:77] + "..."


def not_finite(key: str, value: Any, source: str, bounds: str = "", error: type[Exception] = ConfigError):
    """The error for a NaN or infinite number where a finite one is needed."""
    return error(f"{source}: {key} is {show(value)}; must be a finite number{' ' + bounds if bounds else ''}")


def type_name(tp: Any) -> str:
    """An annotation as an error names it: ``int``, ``list of int``, ``int or list of int``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        return "list" if item is Any else f"list of {type_name(item)}"
    if origin is dict or tp is dict:
        return "mapping"
    return getattr(tp, "__name__", str(tp))


class _Context:
    """Where a value is (file, error class, fix), passed down the build."""

    def __init__(self, source: str, error: type[Exception], fix: str) -> None:
        self.source, self.error, self.fix = source, error, f"; {fix}" if fix else ""

    def fail(self, text: str) -> Exception:
        return self.error(f"{self.source}: {text}{self.fix}")


def _convert(value: Any, tp: Any, key: str, ctx: _Context, bounds: str = "") -> Any:
    """Check ``value`` against the annotation ``tp``; return it (ints widen to float).

    Every float must be finite: every comparison with NaN is false, so a check such as
    ``fps < 0`` lets it through (a NaN fps ran a camera unthrottled). ``bounds`` is the key's
    range, named in that error.
    """
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _convert(value, inner[0], key, ctx, bounds)
        for option in inner:  # the first that the value fits
            try:
                return _convert(value, option, key, ctx, bounds)
            except ctx.error:
                continue
        raise ctx.fail(f"{key} must be {type_name(tp)}, got {show(value)}")
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key, ctx)
    if origin is list or tp is list:
        (item_tp,) = typing.get_args(tp) or (Any,)
        if not isinstance(value, list):
            raise ctx.fail(f"{key} must be a list, got {show(value)}")
        return [_convert(v, item_tp, f"{key}[{i}]", ctx) for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ctx.fail(f"{key} must be a mapping, got {show(value)}")
        item_tp = (typing.get_args(tp) or (str, Any))[1]
        return {k: _convert(v, item_tp, f"{key}.{k}", ctx) for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            value = float(value)
        except OverflowError:  # an integer too large for a float
            raise not_finite(key, value, ctx.source, bounds, ctx.error) from None
    if tp in (int, float, str, bool) and (
        not isinstance(value, tp) or (tp is not bool and isinstance(value, bool))
    ):
        raise ctx.fail(f"{key} must be {type_name(tp)}, got {show(value)}")
    if tp is float and not math.isfinite(value):
        raise not_finite(key, value, ctx.source, bounds, ctx.error)
    return value


def _required(f: dataclasses.Field) -> bool:
    no_default = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    return no_default or bool(f.metadata.get("required"))


def _build(cls: type, data: Any, prefix: str, ctx: _Context) -> Any:
    """``cls`` from a mapping: each key known, of its type, and within its field's rule."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ctx.fail(f"{prefix or 'the top level'} must be a mapping, got {show(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    missing = [name for name, f in fields.items() if _required(f) and name not in data]
    if missing:
        paths = ", ".join(repr(f"{prefix}.{m}" if prefix else m) for m in missing)
        raise ctx.fail(f"missing key{'s' if len(missing) > 1 else ''} {paths}")
    kwargs = {}
    for name, value in data.items():
        path = f"{prefix}.{name}" if prefix else str(name)
        if name not in fields:
            hint = did_you_mean(name, fields)
            raise ctx.fail(f"unknown key {path!r}{hint} (allowed here: {', '.join(fields)})")
        meta = fields[name].metadata
        rule: Rule | None = meta.get("rule")
        value = _convert(value, hints[name], path, ctx, rule.bounds if rule else "")
        allowed_values = meta.get("choices")
        if allowed_values and value not in allowed_values:
            raise ctx.fail(f"{path} is {show(value)}; allowed: {', '.join(map(str, allowed_values))}")
        if rule is not None and value is not None and not rule.check(value):
            raise ctx.fail(f"{path} is {show(value)}; {rule.text}")
        kwargs[name] = value
    return cls(**kwargs)


def build(cls: type, data: Any, source: str, *, error: type[Exception] = ConfigError, fix: str = "") -> Any:
    """``cls`` (a dataclass tree) from parsed YAML or JSON, every key checked; a problem is one
    ``error`` line: ``{source}: {what}; {fix}``."""
    return _build(cls, data, "", _Context(source, error, fix))


def override_schema(cls: type) -> dict[str, Any]:
    """The shape of ``cls`` for ``--set`` (converter/overrides.py): each section's keys, ``ListOf``
    for a list of sections; the program's own fields are left out, as in the file."""
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue
        tp = hints[f.name]
        args = typing.get_args(tp)
        if dataclasses.is_dataclass(tp):
            out[f.name] = override_schema(tp)
        elif typing.get_origin(tp) is list and args and dataclasses.is_dataclass(args[0]):
            out[f.name] = ListOf(override_schema(args[0]))
        else:
            # a leaf (its value is checked by build): a list's default, so that
            # ``dataset.classes[0]`` indexes it; a free mapping such as a camera's options
            # takes any key
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
            out[f.name] = default if isinstance(default, list) else None
    return out


def read_yaml_mapping(path: str | Path, *, what: str, example: str, error: type[Exception] = ConfigError):
    """The mapping at the top of a YAML file; a missing, unreadable or non-mapping file is one
    ``error`` line (``what``: "config", "recipe"; ``example``: a file to start from)."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: {what} file not found; see {example} for an example")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise error(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{path}: cannot read the {what} ({exc})") from None
    if not isinstance(data, dict):
        raise error(f"{path}: the top level must be a mapping, got {show(data)}")
    return data


def read_json_object(path: str | Path, *, fix: str, error: type[Exception] = ConfigError) -> dict[str, Any]:
    """The JSON object in ``path`` (a manifest, training.json); a file that cannot be read, is
    not JSON or holds something else is one ``error`` line ending in ``fix``."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{path}: not valid JSON ({exc}); {fix}") from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object, got {type(data).__name__}; {fix}")
    return data
