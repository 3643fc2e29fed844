"""Which precision TensorRT chose, layer by layer: the engine inspector's JSON, parsed in
plain Python (no TensorRT needed, so ``lineside inspect`` reads it anywhere).

``build.py`` builds with ``ProfilingVerbosity.DETAILED`` and writes
``IEngineInspector.get_engine_information(LayerInformationFormat.JSON)`` beside the plan as
``<plan>.layers.json`` (what ``trtexec --dumpLayerInfo --profilingVerbosity=detailed``
prints). Its shape, as NVIDIA's trt-engine-explorer (trex) reads it::

    {"Layers": [{"Name": "...", "LayerType": "CaskConvolution",
                 "Inputs": [{"Name": "...", "Dimensions": [...], "Format/Datatype": "..."}],
                 "Outputs": [{..., "Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}],
                 ...}, ...],
     "Bindings": ["image", "probability"]}

With less than DETAILED verbosity each layer is only its name (a string): its precision
is "unknown". ``Format/Datatype`` is a long text ("Row major linear FP32", "Two wide
channel vectorized row major FP16 format") or, for Myelin/kgen layers, the bare type
("Half", "Float", "Int8"); the words are mapped as trex's ``activations.py`` maps them.

What counts (documented in docs/converter.md):

- a **compute layer** is every layer except those that only move, reshape or convert
  data (Reformat, Shuffle, NoOp, Constant, Shape, Identity, Cast, Copy): TensorRT adds
  reformats between precisions, and counting them would let noise decide the share;
- a compute layer's **precision** is that of its first output, except that a layer
  reading an INT8 input is "int8" (an INT8 convolution may write a float output when the
  next layer runs in float).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

#: the words of ``Format/Datatype`` and the precision each names (trex activations.py)
_WORDS = {
    "fp32": "fp32",
    "float": "fp32",
    "fp16": "fp16",
    "half": "fp16",
    "bf16": "bf16",
    "bfloat16": "bf16",
    "fp8": "fp8",
    "int8": "int8",
    "int4": "int4",
    "fp4": "fp4",
    "int32": "other",
    "int64": "other",
    "int16": "other",
    "uint8": "other",
    "uint16": "other",
    "uint32": "other",
    "uint64": "other",
    "bool": "other",
    "double": "other",
}
#: layer types (lower case, substring) that only move or convert data
_NOT_COMPUTE = ("reformat", "shuffle", "noop", "constant", "shape", "identity", "cast", "copy")
#: always in the shares, so a reader sees "int8 0%" rather than nothing
_ALWAYS = ("fp32", "fp16", "int8")


def tensor_precision(desc: Any) -> str:
    """ "Channel major FP16 format where channel % 8 == 0" -> "fp16"; "unknown" when no word says."""
    if not isinstance(desc, str):
        return "unknown"
    for word in re.findall(r"[A-Za-z0-9]+", desc):
        found = _WORDS.get(word.lower())
        if found:
            return found
    return "unknown"


def _is_compute(layer: dict[str, Any]) -> bool:
    kind = str(layer.get("LayerType", "")).lower()
    return not any(word in kind for word in _NOT_COMPUTE)


def layer_precision(layer: Any) -> str:
    """The precision of one entry of ``Layers`` ("unknown" for a name-only layer)."""
    if not isinstance(layer, dict):
        return "unknown"
    inputs = [t for t in layer.get("Inputs") or [] if isinstance(t, dict)]
    outputs = [t for t in layer.get("Outputs") or [] if isinstance(t, dict)]
    if any(tensor_precision(t.get("Format/Datatype")) == "int8" for t in inputs):
        return "int8"
    if not outputs:
        return "unknown"
    return tensor_precision(outputs[0].get("Format/Datatype"))


def layer_counts(info: dict[str, Any] | list[Any]) -> Counter:
    """Compute layers per precision in the inspector's JSON (parsed)."""
    layers = info.get("Layers", []) if isinstance(info, dict) else info
    counts: Counter = Counter()
    for layer in layers if isinstance(layers, list) else []:
        if isinstance(layer, dict) and not _is_compute(layer):
            continue
        counts[layer_precision(layer)] += 1
    return counts


def precision_shares(info: dict[str, Any] | list[Any] | str) -> dict[str, float]:
    """{"fp16": 0.93, "fp32": 0.07, "int8": 0.0, ...}: the share of compute layers per precision
    (rounded to 4 places; ``{}`` when there is no layer). ``info`` may be the JSON text."""
    if isinstance(info, str):
        info = json.loads(info)
    counts = layer_counts(info)
    total = sum(counts.values())
    if not total:
        return {}
    shares = {key: 0.0 for key in _ALWAYS}
    shares.update({key: round(n / total, 4) for key, n in counts.items()})
    return shares


def read_shares(path: str | Path) -> dict[str, float]:
    """precision_shares of a ``<plan>.layers.json`` file; ``{}`` when it is missing or unreadable."""
    try:
        return precision_shares(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return {}


def format_shares(shares: dict[str, float]) -> str:
    """ "fp16 93%, fp32 7%, int8 0%" (largest first), or "unknown" when there is nothing to say."""
    if not shares:
        return "unknown (no layer information)"
    ordered = sorted(shares.items(), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{key} {value:.0%}" for key, value in ordered)


def precision_problem(precision: str, shares: dict[str, float]) -> str:
    """Why an engine did not run in the precision it was built for, or "" when it did.

    An "fp16" engine needs at least half of its compute layers in FP16; an "int8" engine
    needs at least one INT8 layer. With no layer information nothing is claimed ("").
    """
    known = {k: v for k, v in shares.items() if k != "unknown"}
    if not shares or not any(known.values()):
        return ""
    if precision == "fp16" and shares.get("fp16", 0.0) < 0.5:
        return (
            f"the fp16 engine runs only {shares.get('fp16', 0.0):.0%} of its compute layers in FP16 "
            f"({format_shares(shares)}); TensorRT fell back to FP32: check the graph's casts "
            "(model.fp16.onnx) and the TensorRT log"
        )
    if precision == "int8" and shares.get("int8", 0.0) == 0.0:
        return (
            f"the int8 engine has no INT8 layer ({format_shares(shares)}); TensorRT ignored the Q/DQ "
            "nodes of model.int8.onnx: re-export it and check the TensorRT log"
        )
    return ""
