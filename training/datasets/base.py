"""What every data set loader returns: a list of ``Sample`` records (no TensorFlow).

Loaders only find and check files; decoding happens in the tf.data pipeline
(``training.pipeline``). Keeping them TF-free makes them quick to test and lets
``lineside eval`` and the plots share them.
"""

from __future__ import annotations

from dataclasses import dataclass

from converter.errors import LinesideError


class DatasetError(LinesideError, ValueError):
    """A data set path is missing or a file in it is malformed; the message names it."""


@dataclass(frozen=True)
class Sample:
    """One image and where its defect mask comes from.

    ``mask`` is a PNG/JPEG path, or ``rle`` holds Severstal run-length pairs for an
    image of ``height`` x ``width``; both empty means a clean image (all-zero mask).
    """

    image: str
    mask: str = ""
    rle: str = ""
    height: int = 0
    width: int = 0
    class_id: int = 0
    defective: bool = False


def split_train_val(
    samples: list[Sample], train_fraction: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """Deterministic shuffled split; both parts keep at least one image when there are two or more."""
    import numpy as np

    order = np.random.default_rng(seed).permutation(len(samples))
    n_train = round(len(samples) * train_fraction)
    if len(samples) >= 2:
        n_train = min(max(n_train, 1), len(samples) - 1)
    train = [samples[i] for i in sorted(order[:n_train])]
    val = [samples[i] for i in sorted(order[n_train:])]
    return train, val


def require_dir(path, what: str, fix: str):
    """Return ``path`` as a Path, or raise a DatasetError naming it and the fix."""
    from pathlib import Path

    path = Path(path)
    if not path.is_dir():
        msg = f"{what} {path} does not exist or is not a folder; {fix}"
        raise DatasetError(msg)
    return path
