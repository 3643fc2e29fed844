"""converter/overrides.py on its own: paths, values and shapes (the configs' tests cover it in use)."""

from __future__ import annotations

import pytest

from converter.errors import LinesideError
from converter.overrides import ListOf, OverrideError, apply_overrides, parse_key, show_path


def test_paths_round_trip() -> None:
    assert parse_key("cameras[0].options.rate") == ["cameras", 0, "options", "rate"]
    assert parse_key("grid[1][-1]") == ["grid", 1, -1]
    assert show_path(["cameras", 0, "fps"]) == "cameras[0].fps"


def test_apply_copies_and_follows_the_shape() -> None:
    data = {"cams": [{"fps": 1}], "grid": [[1, 2], [3, 4]]}
    schema = {"cams": ListOf({"fps": None, "opts": None}), "grid": None, "top": {"a": 0}}
    sets = ["cams[0].fps=2.5", "grid[1][-1]=[5]", "top.a=x", "cams[0].opts.k=on"]
    out = apply_overrides(data, sets, schema)
    assert out == {"cams": [{"fps": 2.5, "opts": {"k": True}}], "grid": [[1, 2], [3, [5]]], "top": {"a": "x"}}
    assert data["cams"][0] == {"fps": 1}  # the caller's data is untouched
    # with no schema any key is taken (the config's own check judges it)
    assert apply_overrides(None, ["a.b=null"]) == {"a": {"b": None}}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("cams[1].fps=2", "cams[1] is past the end; cams has 1 item (0..0)"),
        ("cams[0].fsp=2", "unknown key 'cams[0].fsp'; did you mean 'fps'? (allowed here: fps)"),
        ("cams.x=1", "cams is a list; index it"),
        ("top[0]=1", "top is a mapping, not a list"),
        (".a=1", "an empty part"),
        ("a b=1", "'a b' is not a key"),
    ],
)
def test_errors_are_one_line_of_the_callers_kind(text: str, expected: str) -> None:
    class MyError(LinesideError):
        pass

    schema = {"cams": ListOf({"fps": None}), "top": {"a": 0}}
    with pytest.raises(MyError) as err:
        apply_overrides({"cams": [{"fps": 1}]}, [text], schema, error=MyError)
    assert str(err.value).startswith(f"--set {text!r}: ") and expected in str(err.value)
    with pytest.raises(OverrideError):
        apply_overrides({"cams": [{"fps": 1}]}, [text], schema)
