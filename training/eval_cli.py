"""``lineside eval RUN``: score a trained model on its validation/test split, per class.

Prints the per-class table, writes ``eval.json`` (scores per class and one row per
image), ``eval_grid.png`` (image | ground truth | prediction overlay for the images
that fail worst, per class) and ``curves.png`` (from ``history.json``).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from converter.errors import LinesideError

logger = logging.getLogger(__name__)


class EvalError(LinesideError, ValueError):
    """The run folder to evaluate is missing or incomplete."""


def evaluate_run(
    run: str | Path,
    config: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    output: str | Path | None = None,
    split: str = "validation",
    n_examples: int = 4,
    camera: bool = False,
) -> dict[str, Any]:
    """Evaluate ``run/model.keras``; returns the summary and writes eval.json and the PNGs.

    ``n_examples``: images per class in the grid, the defective ones with the lowest Dice
    and the clean ones with the largest false region. ``camera``: score the same images again
    under what real cameras add (training/camera.py), under ``camera`` in eval.json.
    """
    if n_examples < 0:
        msg = f"--examples is {n_examples}; it must be 0 (no grid) or more images per class"
        raise EvalError(msg)
    run = Path(run)
    model_path = run / "model.keras"
    if not model_path.is_file():
        msg = f"{model_path} does not exist; pass the output dir of `lineside train`"
        raise EvalError(msg)
    from training.calibrate import hindsight_line
    from training.config import load_config

    if config is None:
        config = _recorded_recipe(run)
    cfg = load_config(config, overrides)
    _use_trained_decision(cfg, run, overrides or {})
    import keras

    from training.datasets import load_splits
    from training.datasets.realsurface import by_defect, format_by_defect
    from training.evaluate import evaluate_model
    from training.metrics import format_table
    from training.plots import save_curves, save_grid
    from training.train import scored_split

    train_samples, val_samples = load_splits(cfg)
    samples = val_samples if split == "validation" else train_samples
    model = keras.models.load_model(model_path, compile=False)
    summary, examples = evaluate_model(model, samples, cfg, n_examples=n_examples)
    summary["split"] = split
    summary["model"] = str(model_path)
    defects = by_defect(summary["images"], cfg["dataset"]["root"])
    if defects:
        summary["by_defect"] = defects
    if camera:
        from training.camera import camera_check

        summary["camera"] = camera_check(model, samples, cfg, summary["overall"])
    out = Path(output) if output else run
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(summary, indent=2) + "\n")
    if examples:
        save_grid(examples, out / "eval_grid.png", cfg["eval"]["threshold"])
    history = run / "history.json"
    if history.is_file():
        save_curves(json.loads(history.read_text()), out / "curves.png")
    print(format_table(summary))
    # named as the training summary names it: DAGM's Test split is "test"
    summary_split = scored_split(cfg["dataset"]) if split == "validation" else split
    hindsight = hindsight_line(summary.get("hindsight"), summary_split)
    if hindsight:
        print(hindsight)
    if defects:
        print(format_by_defect(defects))
    if camera:
        from training.camera import format_camera_table

        print(format_camera_table(summary["camera"], cfg["eval"], summary_split))
    print(
        f"wrote {out / 'eval.json'}, {out / 'eval_grid.png'}" + (", curves.png" if history.is_file() else "")
    )
    return summary


def _recorded_recipe(run: Path) -> dict[str, Any]:
    """The recipe the run recorded, less the keys this lineside does not have (a run trained by
    another version), each named in a warning."""
    from converter.schema import read_json_object
    from training.config import without_unknown_keys

    recipe = run / "recipe.json"
    fix = "pass --config with the recipe the model was trained with"
    if not recipe.is_file():
        raise EvalError(f"{recipe} does not exist; {fix}")
    kept, dropped = without_unknown_keys(read_json_object(recipe, fix=fix, error=EvalError))
    for dotted in dropped:
        logger.warning(
            "%s sets %s, which this lineside does not have (the run was trained by another version); "
            "scoring without it",
            recipe,
            dotted,
        )
    return kept


def _use_trained_decision(cfg: dict[str, Any], run: Path, overrides: dict[str, Any]) -> None:
    """Score with the threshold, minimum area and mask threshold the run decided and drew with
    (calibrated ones included).

    ``training.json`` holds what ``lineside export`` ships to the line; a ``--set`` of
    either key still wins.
    """
    info_path = run / "training.json"
    if not info_path.is_file():
        return
    info = json.loads(info_path.read_text())
    for key in ("threshold", "min_defect_area", "mask_threshold"):
        if f"eval.{key}" not in overrides and key in info:
            cfg["eval"][key] = info[key]


def run_eval(args: argparse.Namespace) -> int:
    """Handler of ``lineside eval``."""
    from training.config import parse_override

    overrides = dict(parse_override(text) for text in (args.set or []))
    if getattr(args, "lenient", None):
        overrides["dataset.lenient"] = True
    evaluate_run(args.run, args.config, overrides, args.output, args.split, args.examples, args.camera)
    return 0
