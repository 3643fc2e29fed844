"""docs/config.md and docs/training-config.md, generated from the config schemas.

The line config (edge/config.py) is a tree of dataclasses: each field's type, default and
``choices``/``rule`` metadata are read at run time, and its meaning from the ``#:`` comment
lines above it (read from the source with ``ast``, as Sphinx does: comments are not kept at
run time). A field whose type is a dataclass, a list of one or an optional one becomes its
own section, so a new section (``sinks.mqtt``) needs nothing here. Training recipes
(training/config.py) are declared the same way (converter/schema.py) and read the same way.

Refresh both files after changing either schema::

    python -m edge.config_docs          # writes docs/config.md and docs/training-config.md
    python -m edge.config_docs --check  # exit 1 when one is stale (tests/edge/test_config_docs.py)
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import sys
import textwrap
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LINE_DOC = Path("docs/config.md")
TRAINING_DOC = Path("docs/training-config.md")
REFRESH = "python -m edge.config_docs"

_TYPE_WORDS = {str: "text", int: "integer", float: "number", bool: "true/false"}


@dataclasses.dataclass
class Key:
    """One row of a generated table."""

    path: str
    type: str
    default: str
    allowed: str
    meaning: str


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _table(keys: list[Key]) -> list[str]:
    rows = ["| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
    for k in keys:
        cells = (f"`{k.path}`", k.type, k.default, k.allowed, k.meaning)
        rows.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return rows


def _show(value: Any) -> str:
    """A default as YAML writes it."""
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f'`"{value}"`' if value == "" or value != value.strip() else f"`{value}`"
    if isinstance(value, dict):
        return "`{" + ", ".join(f"{k}: {_show(v).strip('`')}" for k, v in value.items()) + "}`"
    if isinstance(value, list):
        return "`[" + ", ".join(_show(v).strip("`") for v in value) + "]`"
    return f"`{value}`"


# -- the line config ---------------------------------------------------------------------------


def comments_above(source: str, lineno: int, marker: str) -> str:
    """The comment lines starting with ``marker`` right above line ``lineno`` (1-based), joined."""
    lines = source.splitlines()
    found: list[str] = []
    i = lineno - 2
    while i >= 0 and lines[i].strip().startswith(marker):
        found.insert(0, lines[i].strip()[len(marker) :].strip())
        i -= 1
    return " ".join(found)


def field_meanings(cls: type) -> dict[str, str]:
    """``name -> meaning`` from the ``#:`` comments above each field of dataclass ``cls``."""
    source = textwrap.dedent(inspect.getsource(cls))
    (node,) = [n for n in ast.parse(source).body if isinstance(n, ast.ClassDef)]
    return {
        st.target.id: comments_above(source, st.lineno, "#:")
        for st in node.body
        if isinstance(st, ast.AnnAssign) and isinstance(st.target, ast.Name)
    }


def _unwrap(tp: Any) -> tuple[Any, bool]:
    """``(inner, nullable)`` of ``X | None``; anything else is ``(tp, False)``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return inner[0], type(None) in args
        return typing.Union[tuple(inner)], type(None) in args  # noqa: UP007 (built at run time)
    return tp, False


def type_words(tp: Any) -> str:
    """An annotation in words: ``float | None`` -> ``number or null``."""
    inner, nullable = _unwrap(tp)
    origin = typing.get_origin(inner)
    if origin in (typing.Union, types.UnionType):
        words = " or ".join(type_words(a) for a in typing.get_args(inner))
    elif origin is list:
        words = f"list of {type_words(typing.get_args(inner)[0])}"
    elif origin is dict or inner is dict:
        words = "mapping"
    elif dataclasses.is_dataclass(inner):
        words = "section"
    else:
        words = _TYPE_WORDS.get(inner, getattr(inner, "__name__", str(inner)))
    return f"{words} or null" if nullable else words


def _section_type(tp: Any) -> tuple[type | None, str, bool]:
    """``(dataclass, path suffix, optional)`` when a field holds a section, else ``(None, "", False)``."""
    inner, nullable = _unwrap(tp)
    if dataclasses.is_dataclass(inner):
        return inner, "", nullable
    if typing.get_origin(inner) is list:
        (item,) = typing.get_args(inner)
        if dataclasses.is_dataclass(item):
            return item, "[]", nullable
    return None, "", False


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _allowed(meta: typing.Mapping[str, Any]) -> str:
    if meta.get("choices"):
        return ", ".join(f"`{c}`" for c in meta["choices"])
    rule = meta.get("rule")
    if rule is None:
        return ""
    return rule.text.removeprefix("must be ").removeprefix("must ")


def line_sections(cls: type, path: str = "", title: str = "") -> Iterator[tuple[str, str, list[Key]]]:
    """``(path, intro, keys)`` of ``cls`` and then of each section below it, depth first."""
    hints = typing.get_type_hints(cls)
    meanings = field_meanings(cls)
    keys: list[Key] = []
    below: list[tuple[type, str, str]] = []
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue
        dotted = f"{path}.{f.name}" if path else f.name
        section, suffix, optional = _section_type(hints[f.name])
        if section is not None:
            what = "optional section: null or absent = off" if optional else ""
            if suffix:
                what = "a list of these; " + (what or "")
            below.append((section, dotted + suffix, what.strip("; ")))
            continue
        keys.append(
            Key(dotted, type_words(hints[f.name]), _show(_default(f)), _allowed(f.metadata), meanings[f.name])
        )
    intro = inspect.getdoc(cls) or ""
    yield path, f"{intro}\n\n{title}".strip() if title else intro, keys
    for section, sub_path, what in below:
        yield from line_sections(section, sub_path, what)


def section_tables(cls: type) -> list[str]:
    """A heading, the section's docstring and its key table, for ``cls`` and each section below."""
    out: list[str] = []
    for path, intro, keys in line_sections(cls):
        out += ["", f"## `{path}`" if path else "## Top level", ""]
        if intro:
            out += [intro, ""]
        out += _table(keys)
    return out


def camera_options() -> list[str]:
    """The camera options that the config checks, per source (edge.config._option_rules)."""
    from edge.config import CameraConfig, _option_rules

    source_field = next(f for f in dataclasses.fields(CameraConfig) if f.name == "source")
    rows = ["| source | option | type | allowed |", "|---|---|---|---|"]
    for kind in source_field.metadata["choices"]:
        for name, (kinds, rule) in _option_rules(kind).items():
            words = " or ".join(_TYPE_WORDS.get(k, k.__name__) for k in kinds)
            allowed = rule.text.removeprefix("must be ") if rule else ""
            rows.append("| " + " | ".join(_cell(c) for c in (kind, f"`{name}`", words, allowed)) + " |")
    return rows


def render_line_config() -> str:
    """docs/config.md: every key of the line config."""
    from edge.config import LineConfig

    out = [
        "# The line config",
        "",
        f"<!-- generated by `{REFRESH}` from edge/config.py; do not edit by hand -->",
        "",
        "A line config is a YAML file (`lineside run --config LINE.yaml`, examples in `configs/`).",
        "Every key is optional: a missing one takes its default. An unknown key, a value of the",
        "wrong type or outside its allowed values stops the line before it starts, with one line",
        "that names the file and the key (and the nearest known key). `lineside run --set KEY=VALUE`",
        "(and `lineside ui`) overrides a key: a dotted path that may index a list, e.g.",
        "`--set cameras[0].fps=5`; the value is YAML (`5`, `true`, `[1, 2]`, `null`).",
        "`cameras[]` is a list: `cameras[].fps` is the `fps` of each camera.",
    ]
    out += section_tables(LineConfig)
    out += [
        "",
        "## `cameras[].options`",
        "",
        "Passed to the camera's source as keyword arguments; the names are checked against the",
        "source when the line starts. These are also checked when the config loads:",
        "",
        *camera_options(),
    ]
    return "\n".join(out) + "\n"


# -- training recipes --------------------------------------------------------------------------


def recipe_keys() -> list[Key]:
    """Every recipe key with its type, default, allowed values and meaning."""
    from training.config import Recipe

    return [k for _, _, keys in line_sections(Recipe) for k in keys]


def render_training_config() -> str:
    """docs/training-config.md: every key of a training recipe."""
    out = [
        "# Training recipes",
        "",
        f"<!-- generated by `{REFRESH}` from training/config.py; do not edit by hand -->",
        "",
        "A recipe is a YAML file (`lineside train RECIPE.yaml`, examples in `configs/train/`) merged",
        "over these defaults. An unknown key or a value of the wrong type or outside its allowed",
        "values stops training with one line that names the key (and the nearest known key).",
        "`lineside train --set KEY=VALUE` (and `lineside eval`) overrides a key: a dotted path that",
        "may index a list, e.g. `--set dataset.classes[1]=3`; the value is YAML (`3`, `true`,",
        "`[1, 2]`, `null`). A key's `name` is recorded in training.json and",
        "becomes the model id of the package that `lineside export` makes (docs/converter.md).",
    ]
    from training.config import Recipe

    out += section_tables(Recipe)
    return "\n".join(out) + "\n"


def rendered() -> dict[Path, str]:
    """The generated files (relative to the repository root) and their content."""
    return {LINE_DOC: render_line_config(), TRAINING_DOC: render_training_config()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edge.config_docs", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only say which files are stale (exit 1)")
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root")
    args = parser.parse_args(argv)
    stale = []
    for rel, text in rendered().items():
        path = args.root / rel
        if path.is_file() and path.read_text() == text:
            continue
        stale.append(str(rel))
        if not args.check:
            path.write_text(text)
            print(f"wrote {rel}")
    if args.check and stale:
        print(f"stale: {', '.join(stale)}; refresh with: {REFRESH}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
