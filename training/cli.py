"""``lineside synth``, ``lineside realsurface``, ``lineside train`` and ``lineside eval``.

Nothing heavy is imported at module level (TensorFlow is imported inside the
handlers) so ``lineside --help`` stays instant.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from converter.overrides import add_set_flag


def _overrides(args: argparse.Namespace) -> dict:
    from training.config import parse_override

    out = dict(parse_override(text) for text in (args.set or []))
    for key, attr in (
        ("train.epochs", "epochs"),
        ("train.output_dir", "output"),
        ("seed", "seed"),
        ("train.mixed_precision", "mixed_precision"),
        ("train.strategy", "strategy"),
        ("dataset.lenient", "lenient"),
    ):
        value = getattr(args, attr, None)
        if value is not None:
            out[key] = str(value) if attr == "output" else value
    return out


def _synth(args: argparse.Namespace) -> int:
    from converter.synthetic import write_dagm

    summary = write_dagm(
        args.output,
        classes=tuple(args.classes),
        n_train=args.n_train,
        n_test=args.n_test,
        size=args.size,
        defect_fraction=args.defect_fraction,
        seed=args.seed,
    )
    print(json.dumps(summary, indent=2))
    return 0


def _realsurface(args: argparse.Namespace) -> int:
    from training.datasets.realsurface import write_realsurface

    summary = write_realsurface(
        args.output,
        textures=tuple(args.textures),
        n_train=args.n_train,
        n_test=args.n_test,
        size=args.size,
        defect_fraction=args.defect_fraction,
        seed=args.seed,
        labels=args.labels,
    )
    print(json.dumps(summary, indent=2))
    return 0


def _train(args: argparse.Namespace) -> int:
    from converter.quiet import quiet_tensorflow

    quiet_tensorflow(getattr(args, "verbose", False), own_stderr=True)
    from training.train import summary_lines, train

    out = train(args.config, _overrides(args))
    info = json.loads((out / "training.json").read_text())
    print(f"model: {out / info['model_file']}  {info['ended']}  train time: {info['train_seconds']} s")
    for line in summary_lines(info):
        print(line)
    return 0


def _eval(args: argparse.Namespace) -> int:
    from converter.quiet import quiet_tensorflow

    quiet_tensorflow(getattr(args, "verbose", False), own_stderr=True)
    from training.eval_cli import run_eval

    return run_eval(args)


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``synth``, ``realsurface``, ``train`` and ``eval`` to the ``lineside`` command."""
    p = sub.add_parser("synth", help="write a synthetic DAGM-like data set (DAGM2007 layout)")
    p.add_argument("output", type=Path, help="root folder (ClassN/Train, ClassN/Test are written under it)")
    p.add_argument("--classes", type=int, nargs="+", default=[1], help="DAGM class numbers 1..10")
    p.add_argument("--n-train", type=int, default=100, help="training images per class")
    p.add_argument("--n-test", type=int, default=100, help="test images per class")
    p.add_argument("--size", type=int, default=512, help="image side in pixels")
    p.add_argument("--defect-fraction", type=float, default=0.5, help="fraction of images with a defect")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.set_defaults(func=_synth)

    # the choices are spelled out here so that ``lineside --help`` needs neither OpenCV nor scikit-image
    p = sub.add_parser(
        "realsurface",
        help="write the real-surface validation set: drawn defects on real photographs (DAGM2007 layout)",
    )
    p.add_argument(
        "output", type=Path, help="new root folder (ClassN/Train, ClassN/Test are written under it)"
    )
    p.add_argument(
        "--textures",
        nargs="+",
        choices=("brick", "grass", "gravel", "moon"),
        default=["brick", "grass", "gravel", "moon"],
        help="photographs, one class each in this order (from scikit-image's shipped data)",
    )
    p.add_argument("--n-train", type=int, default=150, help="training images per class")
    p.add_argument("--n-test", type=int, default=60, help="test images per class")
    p.add_argument("--size", type=int, default=512, help="image side in pixels")
    p.add_argument("--defect-fraction", type=float, default=0.35, help="fraction of images with a defect")
    p.add_argument("--seed", type=int, default=1, help="random seed")
    p.add_argument(
        "--labels",
        choices=("ellipse", "pixel"),
        default="ellipse",
        help="DAGM's weak ellipse or the exact defect pixels",
    )
    p.set_defaults(func=_realsurface)

    p = sub.add_parser("train", help="train a segmentation model from a recipe (configs/train/*.yaml)")
    p.add_argument("config", type=Path, help="recipe YAML, e.g. configs/train/demo.yaml")
    p.add_argument("-o", "--output", type=Path, help="output dir (overrides train.output_dir)")
    p.add_argument(
        "--epochs", type=int, help="overrides train.epochs; more epochs than a finished run resumes it"
    )
    p.add_argument("--seed", type=int, help="overrides seed")
    p.add_argument("--mixed-precision", action="store_const", const=True, help="mixed_float16 (GPUs)")
    p.add_argument(
        "--strategy", choices=("default", "mirrored", "multi_worker"), help="tf.distribute strategy"
    )
    add_set_flag(p, "input.crop=128")
    _add_lenient(p)
    p.set_defaults(func=_train)

    p = sub.add_parser("eval", help="evaluate a trained model: per-class table, JSON, PNG grid and curves")
    p.add_argument("run", type=Path, help="a training output dir (holds model.keras and training.json)")
    p.add_argument(
        "--config", type=Path, help="recipe to take the data set from (default: the run's recipe.json)"
    )
    p.add_argument(
        "--split", choices=("validation", "train"), default="validation", help="the images to score"
    )
    add_set_flag(p, "eval.threshold=0.75")
    p.add_argument(
        "-o", "--output", type=Path, help="where to write eval.json and the PNGs (default: the run dir)"
    )
    p.add_argument(
        "--examples",
        type=int,
        default=4,
        help="images per class in the PNG grid: the worst defective by Dice, the clean with the "
        "largest false region",
    )
    p.add_argument(
        "--camera",
        action="store_true",
        help="score the images again under what real cameras add (stuck pixels, dust, noise, "
        "JPEG, defocus, gain) and show how far the rule's TPR and TNR move",
    )
    _add_lenient(p)
    p.set_defaults(func=_eval)


def _add_lenient(p: argparse.ArgumentParser) -> None:
    """``--lenient``: sets dataset.lenient, for commands that load a DAGM data set."""
    p.add_argument(
        "--lenient",
        action="store_const",
        const=True,
        help="warn, instead of stopping, where a DAGM Label/Labels.txt disagrees with the files "
        "(sets dataset.lenient)",
    )
