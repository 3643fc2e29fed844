"""What every spawned lineside process does first."""

from __future__ import annotations

import logging
import os


def setup_process(role: str, log_level: int) -> None:
    """Log with the process role in every line; keep math libraries to their share of cores."""
    logging.basicConfig(
        level=log_level,
        format=f"%(asctime)s %(levelname)s [{role}] %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )
    # OpenCV's own thread pool fights the inference threads for the same cores.
    import cv2

    cv2.setNumThreads(1)
    os.environ.setdefault("LINESIDE_ROLE", role)
