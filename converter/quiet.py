"""Keep TensorFlow's C++ log and known harmless Keras warnings out of a command's output.

``lineside train``, ``eval`` and ``export`` call ``quiet_tensorflow()`` before they import
TensorFlow, so a user sees lineside's own lines and real problems. What stays visible:
exceptions (lineside's one-line errors included), Python-level TensorFlow warnings
(``WARNING:tensorflow``), and every Python warning except the exact ones listed in
``KNOWN_WARNINGS``. ``lineside -v`` or a ``TF_CPP_MIN_LOG_LEVEL`` set by the user keeps
everything.
"""

from __future__ import annotations

import os
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


def quiet_tensorflow(verbose: bool = False) -> None:
    """Hide TensorFlow's C++ log and the known Keras warnings, unless ``verbose``.

    Must run before TensorFlow is imported: the C++ log level is read once, when its
    library loads. A ``TF_CPP_MIN_LOG_LEVEL`` already in the environment wins.
    """
    if verbose:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", TF_LOG_LEVEL)
    for category, message, module in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
