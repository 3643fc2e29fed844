"""Keep TensorFlow's C++ log and known harmless Keras warnings out of a command's output.

``lineside train``, ``eval`` and ``export`` call ``quiet_tensorflow()`` before they import
TensorFlow, so a user sees lineside's own lines and real problems. What stays visible:
exceptions (lineside's one-line errors included), Python-level TensorFlow warnings
(``WARNING:tensorflow``), and every Python warning except the exact ones listed in
``KNOWN_WARNINGS``. ``lineside -v`` or a ``TF_CPP_MIN_LOG_LEVEL`` set by the user keeps
everything.
"""

from __future__ import annotations

import atexit
import os
import re
import sys
import threading
import warnings

#: TensorFlow's C++ log threshold: 3 hides INFO, WARNING and ERROR lines. 2 (what the demo
#: used to set) still printed TF 2.21's "NodeDef mentions attribute use_unbounded_threadpool"
#: ERROR on every tf.data pipeline, which TensorFlow itself says may be ignored.
TF_LOG_LEVEL = "3"

#: (category, start of the message, module the warning is reported from): warnings that
#: Keras raises on every run of our own correct code and that name nothing a user can fix.
KNOWN_WARNINGS: tuple[tuple[type[Warning], str, str], ...] = (
    # model.fit on a tf.data pipeline: our pipeline shuffles itself, as Keras asks
    (UserWarning, r"`shuffle=True` was passed, but will be ignored", r"keras\.src\.trainers\."),
    # Keras' ONNX export probes numpy for np.object, which numpy 2 warns about
    (FutureWarning, r"In the future `np\.object` will be defined", r"keras\.src\.export\."),
)


#: C++ log lines that TF_CPP_MIN_LOG_LEVEL does not reach: absl writes every message logged before
#: absl::InitializeLog to stderr, with a banner, and TensorFlow logs "oneDNN custom operations are
#: on" that early on CPUs where it turns oneDNN on by itself (AVX-512 VNNI or BF16, AMX). INFO,
#: WARNING and ERROR lines, as level 3 hides; a FATAL line stays.
EARLY_LOG = re.compile(
    rb"^(?:WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    rb"|[IWE]\d{4} [\d:.]+\s+\d+ \S+:\d+\][^\n]*)\n?",
    re.MULTILINE,
)
_early_log_dropped = False


def quiet_tensorflow(verbose: bool = False, own_stderr: bool = False) -> None:
    """Hide TensorFlow's C++ log and the known Keras warnings, unless ``verbose``.

    Must run before TensorFlow is imported: the C++ log level is read once, when its
    library loads. A ``TF_CPP_MIN_LOG_LEVEL`` already in the environment wins. A command
    that owns its process's stderr (``own_stderr``) also drops the early lines that the
    level cannot reach (``EARLY_LOG``), from file descriptor 2 itself.
    """
    if verbose:
        return
    if own_stderr and "TF_CPP_MIN_LOG_LEVEL" not in os.environ:
        drop_early_log()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", TF_LOG_LEVEL)
    for category, message, module in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)


def drop_early_log() -> None:
    """Route file descriptor 2 through a pipe whose reader forwards everything at once (a
    progress bar's carriage returns included) except ``EARLY_LOG`` lines. Absl writes a log
    line in one write, so a read holds it whole. At exit fd 2 is restored and the reader drains
    what is left, so no line is lost on a normal exit or an uncaught exception."""
    global _early_log_dropped
    if _early_log_dropped:
        return
    _early_log_dropped = True
    read_fd, write_fd = os.pipe()
    original = os.dup(2)
    sys.stderr.flush()
    os.dup2(write_fd, 2)
    os.close(write_fd)

    def pump() -> None:
        while chunk := os.read(read_fd, 65536):
            kept = EARLY_LOG.sub(b"", chunk)
            if kept:
                os.write(original, kept)
        os.close(read_fd)

    reader = threading.Thread(target=pump, name="stderr-filter", daemon=True)
    reader.start()

    def restore() -> None:
        sys.stderr.flush()
        os.dup2(original, 2)  # the pipe's last write end closes: the reader sees its end
        reader.join(timeout=5)

    atexit.register(restore)
