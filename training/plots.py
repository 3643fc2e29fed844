"""PNG outputs of ``lineside eval``: an example grid and the training curves (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on training machines
    import matplotlib.pyplot as plt

    return plt


def overlay(image: np.ndarray, prob: np.ndarray, threshold: float) -> np.ndarray:
    """RGB image with predicted defect pixels tinted red."""
    rgb = np.repeat(image[..., None], 3, axis=2).astype(np.float32)
    hit = prob > threshold
    rgb[hit] = 0.45 * rgb[hit] + 0.55 * np.array([255.0, 0.0, 0.0])
    return rgb.clip(0, 255).astype(np.uint8)


def example_titles(ex: dict[str, Any], threshold: float) -> tuple[str, str, str]:
    """Titles of one grid row: which image, what the truth is, what the line decided and why."""
    row = ex.get("row")
    if row is None:
        return f"class {ex['class_id']}", "ground truth", f"prediction > {threshold}"
    decision = "FAIL" if row["predicted_defective"] else "PASS"
    if row["defective"]:
        truth = f"defect {row['defect_px']} px"
        why = f"Dice {row['dice']:.3f}, largest region {row['largest_region_px']} px"
    else:
        truth = "clean"
        why = f"largest false region {row['largest_false_region_px']} px"
    return (
        f"class {row['class_id']} {row['name']}",
        f"{truth} ({row['outcome']})",
        f"> {threshold:g}: {decision}; {why}",
    )


def save_grid(examples: list[dict[str, Any]], path: str | Path, threshold: float) -> Path:
    """One row per example: image | ground truth | prediction overlay, titled by ``example_titles``."""
    plt = _pyplot()
    n = max(1, len(examples))
    fig, axes = plt.subplots(n, 3, figsize=(9, 3 * n), squeeze=False)
    for row, ex in enumerate(examples):
        panels = (ex["image"], ex["mask"], overlay(ex["image"], ex["prob"], threshold))
        titles = example_titles(ex, threshold)
        for col, (panel, title) in enumerate(zip(panels, titles, strict=True)):
            ax = axes[row][col]
            ax.imshow(panel, cmap="gray", vmin=0, vmax=255 if panel.ndim == 2 and panel.max() > 1 else 1)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return Path(path)


def save_curves(history: list[dict[str, float]], path: str | Path) -> Path:
    """Loss and Dice per epoch from ``history.json``."""
    plt = _pyplot()
    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(10, 3.5))
    epochs = [h["epoch"] for h in history]
    for key, ax in (("loss", ax_loss), ("dice", ax_dice)):
        values = [h.get(key) for h in history]
        if any(v is not None for v in values):
            ax.plot(epochs, values, marker="o", label=f"train {key}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return Path(path)
