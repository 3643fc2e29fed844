"""A pretrained encoder that installs from PyPI: the PP-OCRv4 text detector's backbone.

No Keras application's pretrained weights ship in a wheel, and their hosts are not reachable
from every machine (here only PyPI is); but ``rapidocr_onnxruntime`` (Apache-2.0, on PyPI)
ships PaddleOCR's PP-OCRv4 mobile text detector as ``models/ch_PP-OCRv4_det_infer.onnx``.
Its backbone (PPLCNetV3, trained to find thin strokes of text on photographs of every kind of
background) has what a defect model trained on a few hundred photographs lacks: features
learned from far more images than a line has.

The wheel is not installed (it requires the GUI build of OpenCV, which would replace the
headless one that lineside uses); ``ppocr_weights_path`` takes the one file from it, with
``pip download`` from PyPI once, checks its SHA-256 and keeps it in lineside's cache.

``build_trunk`` rebuilds that backbone up to stride 16 from the ONNX file in built-in Keras
layers, weights included, so the model trains, saves, loads and exports like any other:

- each Conv with the BatchNormalization or the learnable scalar affine (Mul, Add) after it
  is one Conv2D / DepthwiseConv2D with both folded into its kernel and bias (exact);
- the hard swish (Add 3, Clip 0..6, Mul, Div 6) is ``Activation("hard_swish")``;
- the learnable affine after an activation is a 1x1 DepthwiseConv2D (exact, built in);
- a padded stride-2 conv is ZeroPadding2D + "valid" (Keras "same" pads 0 before and 1
  after on even sides, Paddle 1 and 1).

Any other node in the trunk is refused, so a changed file fails loudly, not subtly.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from converter.errors import LinesideError

logger = logging.getLogger(__name__)

#: the file in the rapidocr_onnxruntime wheel, and the name that asks for it
PPOCR_WEIGHTS = "ppocr"
PPOCR_PACKAGE = "rapidocr_onnxruntime"
PPOCR_VERSION = "1.4.4"
PPOCR_FILE = "models/ch_PP-OCRv4_det_infer.onnx"
#: the file's SHA-256 in that wheel: a different file is a different network
PPOCR_SHA256 = "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9"

#: the ONNX tensors whose *inputs* are the trunk's features at each stride: the first
#: depthwise conv of the next stage takes the last output of this one
TAPS = {
    "depthwise_conv2d_1.tmp_0": 2,
    "depthwise_conv2d_3.tmp_0": 4,
    "depthwise_conv2d_5.tmp_0": 8,
    "depthwise_conv2d_10.tmp_0": 16,
}

#: ImageNet's per-channel mean and spread, PaddleOCR's usual input normalization (RapidOCR
#: feeds this detector mean 0.5 and spread 0.5 instead; fine-tuning adapts to either)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PretrainedError(LinesideError, ValueError):
    """The pretrained encoder's file is missing or is not the network it should be."""


def cache_dir() -> Path:
    """Where lineside keeps what it fetched: ``$LINESIDE_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/lineside``, else ``~/.cache/lineside``."""
    if os.environ.get("LINESIDE_CACHE_DIR"):
        return Path(os.environ["LINESIDE_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lineside"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _from_wheel(wheel: Path) -> Path:
    """Take the detector out of a rapidocr_onnxruntime wheel into the cache, checked."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            data = archive.read(f"{PPOCR_PACKAGE}/{PPOCR_FILE}")
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        msg = (
            f"{wheel} holds no {PPOCR_PACKAGE}/{PPOCR_FILE} ({exc}); "
            f"give rapidocr_onnxruntime {PPOCR_VERSION}'s wheel"
        )
        raise PretrainedError(msg) from None
    if _sha256(data) != PPOCR_SHA256:
        msg = (
            f"{wheel}: its {Path(PPOCR_FILE).name} is not the one of rapidocr_onnxruntime {PPOCR_VERSION} "
            f"(SHA-256 {_sha256(data)[:12]}..., not {PPOCR_SHA256[:12]}...); give that version's wheel"
        )
        raise PretrainedError(msg)
    target = cache_dir() / Path(PPOCR_FILE).name
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".partial", delete=False) as partial:
            partial.write(data)
        os.chmod(partial.name, 0o644)  # a cache file, not a secret (mkstemp makes it 0600)
        Path(partial.name).replace(target)  # whole or absent, even when two runs fetch at once
    except OSError as exc:
        msg = (
            f"cannot write the PP-OCRv4 detector to {target} ({exc}); "
            "set LINESIDE_CACHE_DIR to a writable folder"
        )
        raise PretrainedError(msg) from None
    return target


def _fetch_wheel(folder: Path) -> Path:
    """``pip download`` the rapidocr_onnxruntime wheel (15 MB, without its dependencies)."""
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--ignore-requires-python", "--disable-pip-version-check", "-q",
        f"{PPOCR_PACKAGE}=={PPOCR_VERSION}", "-d", str(folder),
    ]  # fmt: skip
    logger.info("fetching PP-OCRv4's detector: pip download %s==%s (once)", PPOCR_PACKAGE, PPOCR_VERSION)
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wheels = sorted(folder.glob("*.whl"))
    if done.returncode or not wheels:
        last = (done.stderr.strip().splitlines() or ["no wheel"])[-1]
        msg = (
            f"could not fetch {PPOCR_PACKAGE} {PPOCR_VERSION} from PyPI ({last}); on a machine that "
            f"reaches PyPI run `pip download --no-deps {PPOCR_PACKAGE}=={PPOCR_VERSION}` and set "
            "model.encoder_weights to the .whl it writes"
        )
        raise PretrainedError(msg)
    return wheels[0]


def ppocr_weights_path(encoder_weights: str | Path) -> Path:
    """The ONNX file that ``model.encoder_weights`` names: ``ppocr`` (rapidocr_onnxruntime's,
    from the cache, or fetched into it), a rapidocr_onnxruntime ``.whl``, or a PP-OCRv4 det
    ``.onnx`` file."""
    if str(encoder_weights) != PPOCR_WEIGHTS:
        path = Path(encoder_weights)
        if not path.is_file():
            msg = (
                f"model.encoder_weights {path} does not exist; "
                "give ppocr, a rapidocr_onnxruntime .whl or a PP-OCRv4 det .onnx"
            )
            raise PretrainedError(msg)
        return _from_wheel(path) if path.suffix == ".whl" else path
    cached = cache_dir() / Path(PPOCR_FILE).name
    if cached.is_file() and _sha256(cached.read_bytes()) == PPOCR_SHA256:
        return cached
    with tempfile.TemporaryDirectory(prefix="lineside-ppocr-") as folder:
        return _from_wheel(_fetch_wheel(Path(folder)))


def build_trunk(keras: Any, path: Path, x: Any, load_weights: bool = True) -> dict[int, Any]:
    """The backbone in ``path`` applied to ``x`` (NHWC, 3 channels, ImageNet-normalized), as
    ``{stride: features}`` for strides 2, 4, 8 and 16. With ``load_weights`` false the layers
    keep Keras's initial weights (the same network learned from nothing: the control)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from converter.onnx_graph import attributes

    try:
        graph = onnx.load(str(path)).graph
    except Exception as exc:  # onnx raises DecodeError and others for a file that is not a model
        msg = f"model.encoder_weights {path} is not an ONNX model ({exc})"
        raise PretrainedError(msg) from None
    const = {
        n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in graph.node if n.op_type == "Constant"
    }
    nodes = [n for n in graph.node if n.op_type != "Constant"]
    layers = keras.layers
    tensors = {graph.input[0].name: x}
    feats: dict[int, Any] = {}

    def scalar(name: str) -> float | None:
        value = const.get(name)
        return float(value.reshape(-1)[0]) if value is not None and value.size == 1 else None

    def is_affine(i: int) -> bool:
        # a learnable affine: Mul(constant, x) then Add(x, constant), both of one value
        return (
            i + 1 < len(nodes)
            and nodes[i].op_type == "Mul"
            and nodes[i + 1].op_type == "Add"
            and scalar(nodes[i].input[0]) is not None
            and const.get(nodes[i + 1].input[1], np.zeros(0)).shape == (1,)
        )

    i, k = 0, 0
    while i < len(nodes):
        node = nodes[i]
        if node.output[0] in TAPS:
            stride = TAPS[node.output[0]]
            feats[stride] = tensors[node.input[0]]
            if stride == max(TAPS.values()):
                return feats
        if node.op_type == "Conv":
            weight = const[node.input[1]]
            bias = const[node.input[2]] if len(node.input) > 2 else np.zeros(weight.shape[0], np.float32)
            scale = np.ones(weight.shape[0], np.float32)
            shift = np.zeros(weight.shape[0], np.float32)
            j = i + 1
            if nodes[j].op_type == "BatchNormalization":
                gamma, beta, mean, var = (const[v] for v in nodes[j].input[1:])
                scale = gamma / np.sqrt(var + attributes(nodes[j]).get("epsilon", 1e-5))
                shift = beta - mean * scale
                j += 1
            elif is_affine(j):
                scale[:] = scalar(nodes[j].input[0])
                shift[:] = scalar(nodes[j + 1].input[1])
                j += 2
            weight = weight * scale[:, None, None, None]
            bias = bias * scale + shift
            attrs = attributes(node)
            stride, pad, size = attrs["strides"][0], attrs["pads"][0], attrs["kernel_shape"][0]
            if len(set(attrs["pads"])) > 1 or (stride == 1 and pad not in (0, size // 2)):
                # Keras pads a stride-1 conv by half its kernel on every side, or not at all
                msg = f"{path}: conv {node.output[0]} pads {attrs['pads']}, not as PP-OCRv4's trunk does"
                raise PretrainedError(msg)
            h = tensors[node.input[0]]
            padding = "same" if pad else "valid"
            if stride > 1 and pad:
                h = layers.ZeroPadding2D(pad, name=f"encoder_pad_{k}")(h)
                padding = "valid"
            if attrs.get("group", 1) == 1:
                layer = layers.Conv2D(
                    weight.shape[0], size, strides=stride, padding=padding, name=f"encoder_conv_{k}"
                )
                kernel = weight.transpose(2, 3, 1, 0)
            elif attrs["group"] == weight.shape[0] and weight.shape[1] == 1:
                layer = layers.DepthwiseConv2D(size, strides=stride, padding=padding, name=f"encoder_dw_{k}")
                kernel = weight.transpose(2, 3, 0, 1)
            else:
                msg = f"{path}: a grouped conv ({attrs['group']} groups) is not in PP-OCRv4's trunk"
                raise PretrainedError(msg)
            tensors[nodes[j - 1].output[0]] = layer(h)
            if load_weights:
                layer.set_weights([kernel, bias])
            i, k = j, k + 1
            continue
        if node.op_type == "Add" and scalar(node.input[1]) == 3.0:
            ops = [n.op_type for n in nodes[i + 1 : i + 4]]
            clip = nodes[i + 1].input[1:] if ops else []
            if ops != ["Clip", "Mul", "Div"] or [scalar(v) for v in (*clip, nodes[i + 3].input[1])] != [
                0,
                6,
                6,
            ]:
                msg = f"{path}: Add 3 followed by {ops}, not a hard swish; not PP-OCRv4's trunk"
                raise PretrainedError(msg)
            h = layers.Activation("hard_swish", name=f"encoder_hswish_{k - 1}")(tensors[node.input[0]])
            out, i = nodes[i + 3].output[0], i + 4
            if is_affine(i):
                layer = layers.DepthwiseConv2D(1, name=f"encoder_affine_{k - 1}")
                h = layer(h)
                channels = h.shape[-1]
                # learned from nothing, the affine starts as the identity (as in PPLCNetV3)
                gain, offset = (
                    (scalar(nodes[i].input[0]), scalar(nodes[i + 1].input[1])) if load_weights else (1.0, 0.0)
                )
                layer.set_weights(
                    [np.full((1, 1, channels, 1), gain, np.float32), np.full(channels, offset, np.float32)]
                )
                out, i = nodes[i + 1].output[0], i + 2
            tensors[out] = h
            continue
        msg = f"{path}: node {node.op_type} ({node.output[0]}) is not in PP-OCRv4's trunk"
        raise PretrainedError(msg)
    msg = f"{path}: the trunk's stride-16 features ({max(TAPS, key=TAPS.get)}) are not in this file"
    raise PretrainedError(msg)
