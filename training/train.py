"""``lineside train``: build the data, the model and the optimizer from a recipe, train, evaluate, save.

The output directory holds the checkpoint contract read by ``lineside export``:
``model.keras`` (built-in layers only, float32) and ``training.json``; plus
``checkpoints/`` (resume), ``logs/`` (TensorBoard) and ``history.json`` (curves).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from training.config import load_config

logger = logging.getLogger(__name__)

MODEL_FILE = "model.keras"
TRAINING_JSON = "training.json"
#: images are decoded as grayscale (DAGM, Severstal and line cameras are monochrome)
INPUT_CHANNELS = 1


def _set_seeds(seed: int, deterministic: bool) -> None:
    import keras
    import tensorflow as tf

    if deterministic:
        # Op determinism alone left 160 px crops in batches of 8 differing between processes
        # on the CPU: ops that run side by side (a U-Net's skip connections) add their
        # gradients in whatever order they finish. One inter-op thread fixes the order; on
        # 2 CPU cores it cost nothing measurable (27.1 s against 25.0-27.7 s for 80 steps).
        try:
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:  # TensorFlow already started in this process
            if tf.config.threading.get_inter_op_parallelism_threads() != 1:
                logger.warning(
                    "train.deterministic: TensorFlow started before training, so ops may still run "
                    "side by side; train in a fresh process for results that repeat exactly"
                )
        # identical results for identical seeds, at some cost in speed on GPUs
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(seed)


def _strategy(name: str):
    """tf.distribute strategy: default (one device), mirrored (local GPUs) or multi_worker (TF_CONFIG)."""
    import tensorflow as tf

    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            from training.config import ConfigError

            msg = "train.strategy multi_worker needs the TF_CONFIG environment variable; see docs/training.md"
            raise ConfigError(msg)
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def _compile(model, cfg: dict[str, Any]) -> None:
    from training.losses import dice_coefficient, get_loss
    from training.optimizers import build_optimizer

    def dice(y_true, y_pred):
        return dice_coefficient(y_true, y_pred)

    optimizer = build_optimizer(cfg["optimizer"])
    model.compile(optimizer=optimizer, loss=get_loss(cfg["loss"]), metrics=[dice])


def _build_training_state(model, element_spec) -> None:
    """Create the optimizer's slots and the compiled metrics' variables before ``fit``.

    Under the default strategy Keras defers this to the first trace of its train step, and a
    ``tf.function`` that creates variables on its first call is traced a second time without
    them: the train step was traced twice (2-6 s each for TinyUNet on 2 CPU cores). The
    variables start at zero either way, so training computes the same. Keras does the same
    itself (``_symbolic_build``) under a distribution strategy; without it, the optimizer
    alone is built here and the metrics' variables are still made in the first trace.
    """
    symbolic_build = getattr(model, "_symbolic_build", None)
    if symbolic_build is not None:
        symbolic_build(data_batch=element_spec)
    elif not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)


def _float32_copy(model, cfg: dict[str, Any], channels: int):
    """The same weights in a float32 model, so the exported graph does not inherit mixed precision."""
    import keras

    from training.models import build_model

    keras.mixed_precision.set_global_policy("float32")
    clean = build_model(cfg["model"], channels, cfg["optimizer"]["weight_decay"])
    clean.set_weights(model.get_weights())
    return clean


def _has_tensorboard() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


def train(config: dict[str, Any] | str | Path, overrides: dict[str, Any] | None = None) -> Path:
    """Train the recipe ``config`` (a YAML path or dict) with dotted ``overrides``; return the output dir.

    Resumes from ``<output_dir>/checkpoints`` when a previous run of the same recipe stopped
    early; a run whose checkpoint already reached ``train.epochs`` only re-evaluates.
    """
    cfg = load_config(config, overrides)
    out = Path(cfg["train"]["output_dir"])
    out.mkdir(parents=True, exist_ok=True)

    import keras

    from training.calibrate import calibrate, hold_out, trained_clean_sample
    from training.callbacks import make_checkpoint_callback, make_progress_callback, restore
    from training.datasets import load_splits
    from training.evaluate import evaluate_model
    from training.models import build_model
    from training.pipeline import train_dataset

    seed, tcfg = cfg["seed"], cfg["train"]
    _set_seeds(seed, tcfg["deterministic"])
    keras.mixed_precision.set_global_policy("mixed_float16" if tcfg["mixed_precision"] else "float32")
    train_samples, val_samples = load_splits(cfg)
    held_out = []
    if cfg["eval"]["calibration_fraction"]:
        train_samples, held_out = hold_out(train_samples, cfg["eval"]["calibration_fraction"], seed)
    logger.info(
        "data: %d training images, %d held out for calibration, %d validation images",
        len(train_samples),
        len(held_out),
        len(val_samples),
    )
    channels = INPUT_CHANNELS
    strategy = _strategy(tcfg["strategy"])
    with strategy.scope():
        model = build_model(cfg["model"], channels, cfg["optimizer"]["weight_decay"])
        _compile(model, cfg)
        state = restore(model, out)
    start_epoch = state["epoch"] if state else 0
    (out / "recipe.json").write_text(json.dumps(cfg, indent=2) + "\n")

    started = time.perf_counter()  # train_seconds and the time budget count from here
    # before the checkpoint, which writes the learning rate the schedule logs into history.json
    callbacks, budget = _schedule_callbacks(cfg, started)
    callbacks.append(make_checkpoint_callback(out))
    if tcfg["progress"]:
        callbacks.append(make_progress_callback(tcfg["steps_per_epoch"], tcfg["epochs"]))
    if tcfg["tensorboard"]:
        if _has_tensorboard():
            callbacks.append(keras.callbacks.TensorBoard(log_dir=str(out / "logs"), update_freq="epoch"))
        else:
            logger.warning("tensorboard is not installed (pip install 'lineside[train]'); no logs/")
    hints = None
    if cfg["input"]["hard_negative_fraction"]:
        from training.callbacks import CHECKPOINT_DIR
        from training.mining import make_hints, make_miner

        hints = make_hints(len(train_samples))
        # after the checkpoint and the time budget: it saves its own file, and skips the last epoch
        callbacks.append(make_miner(train_samples, cfg, hints, out / CHECKPOINT_DIR, start_epoch))
    if start_epoch < tcfg["epochs"]:
        # Keras distributes a plain tf.data dataset over the strategy it was compiled under
        ds = train_dataset(train_samples, cfg, seed, start_epoch=start_epoch, hints=hints)
        with strategy.scope():
            _build_training_state(model, ds.element_spec)
        model.fit(
            ds,
            epochs=tcfg["epochs"],
            initial_epoch=start_epoch,
            steps_per_epoch=tcfg["steps_per_epoch"],
            callbacks=callbacks,
            verbose=0,
        )
    train_seconds = time.perf_counter() - started
    if tcfg["mixed_precision"]:
        model = _float32_copy(model, cfg, channels)
    model.save(out / MODEL_FILE)
    calibration = None
    if held_out:
        trained_clean = trained_clean_sample(train_samples, cfg["eval"]["tnr_training_images"], seed)
        calibration = calibrate(model, held_out, cfg, trained_clean)
        cfg["eval"]["threshold"] = calibration["threshold"]
        cfg["eval"]["min_defect_area"] = calibration["min_defect_area"]
        cfg["eval"]["mask_threshold"] = calibration["mask_threshold"]
    summary, _ = evaluate_model(model, val_samples, cfg)
    (out / "eval.json").write_text(json.dumps(summary, indent=2) + "\n")
    run = _run_end(tcfg, budget)
    path = write_training_json(out, cfg, summary, train_seconds, channels, val_samples, calibration, run)
    ended = json.loads(path.read_text())["ended"]  # "epoch 17 of 45 (time budget)"
    logger.info("trained %s: %s in %.0f s -> %s", cfg["model"]["architecture"], ended, train_seconds, out)
    return out


def _schedule_callbacks(cfg: dict[str, Any], started: float) -> tuple[list, Any]:
    """The per-step learning-rate callback (cosine) and the time-budget callback (``train.max_minutes``),
    wired so that the budget ends the schedule at the last epoch that fits; and the budget, or None."""
    from training.optimizers import step_schedule
    from training.schedule import make_lr_schedule_callback, make_time_budget_callback

    tcfg = cfg["train"]
    steps = tcfg["steps_per_epoch"]
    callbacks = []
    on_plan = None
    schedule = step_schedule(cfg["optimizer"])
    if schedule is not None:
        lr_callback = make_lr_schedule_callback(schedule, tcfg["epochs"] * steps)
        callbacks.append(lr_callback)

        def on_plan(epochs: int) -> None:
            lr_callback.set_total_steps(epochs * steps)

    budget = None
    if tcfg["max_minutes"]:
        budget = make_time_budget_callback(tcfg["max_minutes"], on_plan, started)
        callbacks.append(budget)
    return callbacks, budget


def _run_end(tcfg: dict[str, Any], budget) -> dict[str, Any]:
    """How the run ended, for training.json: the planned epochs, what stopped it early (or None),
    and the epochs its learning-rate schedule was shaped to."""
    from training.schedule import TIME_BUDGET

    stopped = budget is not None and getattr(budget, "stopped", False)
    shaped = getattr(budget, "plan", None) if budget is not None else None
    return {
        "epochs_planned": tcfg["epochs"],
        "stopped_by": TIME_BUDGET if stopped else None,
        "schedule_epochs": shaped or tcfg["epochs"],
    }


def _input_hw(cfg: dict[str, Any], val_samples) -> tuple[int, int]:
    """The full-image size the model is exported at (the evaluation images' size)."""
    if cfg["dataset"]["image_size"]:
        return tuple(cfg["dataset"]["image_size"])
    if val_samples and val_samples[0].height:
        return val_samples[0].height, val_samples[0].width
    if val_samples:
        import cv2

        image = cv2.imread(val_samples[0].image, cv2.IMREAD_GRAYSCALE)
        return image.shape[:2]
    return 512, 512


def write_training_json(
    out: Path,
    cfg: dict[str, Any],
    summary: dict[str, Any],
    train_seconds: float,
    channels: int,
    val_samples,
    calibration: dict[str, Any] | None = None,
    run: dict[str, Any] | None = None,
) -> Path:
    """Write the checkpoint manifest that ``lineside export`` reads.

    ``threshold``, ``min_defect_area`` and ``mask_threshold`` are the calibrated values when ``calibration``
    (training.calibrate) chose them, else the recipe's. ``warnings`` lists, as sentences,
    why the result is not fit for the line (empty when nothing is wrong); ``notes``, cautions
    that do not make it unfit (calibration's, e.g. an area with little room). ``run``
    ({epochs_planned, stopped_by, schedule_epochs}, from ``train``) says how the run ended;
    ``ended`` words it for reports.
    """
    from training.callbacks import load_state
    from training.schedule import describe_end

    state = load_state(out) or {"epoch": 0, "step": 0}
    height, width = _input_hw(cfg, val_samples)
    ds = cfg["dataset"]
    dataset: dict[str, Any] = {
        "kind": "dagm" if ds["kind"] == "synthetic" else ds["kind"],
        "root": str(Path(ds["root"]).resolve()),
        "classes": ds["classes"],
    }
    if ds["kind"] == "synthetic":
        dataset["synthetic"] = dict(ds["synthetic"])
    run_end = run or {"epochs_planned": cfg["train"]["epochs"], "stopped_by": None}
    overall = summary["overall"]
    t = str(cfg["eval"]["threshold"])
    info = {
        "architecture": cfg["model"]["architecture"],
        "input": {"height": int(height), "width": int(width), "channels": channels},
        "normalization": cfg["input"]["normalization"],
        "threshold": cfg["eval"]["threshold"],
        "min_defect_area": cfg["eval"]["min_defect_area"],
        # the line draws its mask at this score (null: at threshold)
        "mask_threshold": cfg["eval"]["mask_threshold"],
        "dataset": dataset,
        "metrics": {
            "split": scored_split(ds),
            "images": overall["images"],
            "dice": overall["dice"][t],
            "iou": overall["iou"][t],
            "iou@0.75": overall["iou"].get("0.75"),
            "dice_all_images": overall["dice_all_images"][t],
            "dice_line": overall["dice_line"],
            "dice_line_all_images": overall["dice_line_all_images"],
            "dsc_2class": overall["dsc_2class"][t],
            "miou_2class": overall["miou_2class"][t],
            "pixel_dice": overall["pixel_dice"][t],
            "tpr": overall["tpr"],
            "tnr": overall["tnr"],
            "accuracy": overall["accuracy"],
            "image_auroc": overall["image_auroc"],
            "hindsight": summary.get("hindsight"),
            "per_class": {
                c: {"dice": s["dice"][t], "tpr": s["tpr"], "tnr": s["tnr"], "image_auroc": s["image_auroc"]}
                for c, s in summary["per_class"].items()
            },
        },
        "seed": cfg["seed"],
        "model_file": MODEL_FILE,
        "epochs_done": state["epoch"],
        **run_end,
        "ended": describe_end(state["epoch"], run_end["epochs_planned"], run_end["stopped_by"]),
        "steps_done": state["step"],
        "train_seconds": round(train_seconds, 1),
        "recipe": cfg["name"],
        "model": cfg["model"],
        "loss": cfg["loss"],
        "calibration": calibration,
        "warnings": [
            *(calibration or {}).get("warnings", []),
            *split_warnings(scored_split(ds), overall, cfg["eval"]["min_tnr"]),
        ],
        "notes": (calibration or {}).get("notes", []),
    }
    path = out / TRAINING_JSON
    path.write_text(json.dumps(info, indent=2) + "\n")
    return path


def scored_split(ds: dict[str, Any]) -> str:
    """The split the summary scores: DAGM has a Test split, the others a validation part."""
    return "test" if ds["kind"] in ("dagm", "synthetic") else "validation"


def split_warnings(split: str, overall: dict[str, Any], min_tnr: float) -> list[str]:
    """Sentences for a scored split whose TPR is below 90 % or whose TNR is below ``eval.min_tnr``."""
    from training.calibrate import MIN_TPR

    out = []
    if overall["tpr"] is not None and overall["tpr"] < MIN_TPR:
        out.append(
            f"{split} TPR {100 * overall['tpr']:.1f} % is below {100 * MIN_TPR:.1f} %: "
            f"{overall['fn']} of {overall['defective']} defective {split} images pass"
        )
    if overall["tnr"] is not None and overall["tnr"] < min_tnr:
        out.append(
            f"{split} TNR {100 * overall['tnr']:.1f} % is below the floor of {100 * min_tnr:.1f} % "
            f"(eval.min_tnr): {overall['fp']} of {overall['images'] - overall['defective']} clean "
            f"{split} images fail"
        )
    return out


def summary_lines(info: dict[str, Any]) -> list[str]:
    """The result lines of the training summary, from ``training.json``: scores with their rule, warnings."""
    from training.calibrate import hindsight_line, result_line

    lines = []
    rule = (info["threshold"], info["min_defect_area"])
    cal = info.get("calibration")
    if cal:
        lines.append(result_line("held-out", cal["dice"], cal["tpr"], cal["tnr"], *rule))
    m = info["metrics"]
    lines.append(result_line(m["split"], m["dice"], m["tpr"], m["tnr"], *rule))
    mask_t = info.get("mask_threshold")
    if mask_t is not None and mask_t != info["threshold"]:
        lines.append(
            f"the line draws its mask at {mask_t:g} (calibrated for its Dice; the decision stays at "
            f"{info['threshold']:g}): {m['split']} Dice of the line's mask {m['dice_line']:.3f}"
        )
    hindsight = hindsight_line(m.get("hindsight"), m["split"])
    if hindsight:
        lines.append(hindsight)
    lines += [f"NOTE: {text}" for text in info.get("notes", [])]
    warnings = info.get("warnings", [])
    lines += [f"WARNING: {text}" for text in warnings]
    if warnings:
        lines.append(f"WARNING: not fit for the line as trained; the warnings are in {TRAINING_JSON}")
    return lines
