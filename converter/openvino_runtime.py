"""OpenVINO: the precision this box runs fastest, the compiled model, and its gate record.

Shared by the line's backend (``edge.backends.openvino``) and ``lineside gate`` (the
converter may not import ``edge``), as ``converter.engine.runtime`` is for TensorRT.
Nothing here imports OpenVINO until a function needs it, so a box without it still runs
the rest of lineside, and a missing OpenVINO is one line naming the install.

Precision on the CPU (what OpenVINO's ``OPTIMIZATION_CAPABILITIES`` lists, plus VNNI):

- ``bf16`` where the CPU lists BF16 (AMX or AVX512-BF16): the FP32 graph compiled with
  ``INFERENCE_PRECISION_HINT: bf16``, 2.3x Keras on an AMX Xeon (docs/performance.md);
- ``int8`` where it lists INT8 *and* has VNNI (AVX512-VNNI, AVX-VNNI or AMX-INT8), and the
  package has the Q/DQ graph ``model.int8.onnx``: without VNNI the int8 kernels gain nothing;
- ``fp32`` otherwise.

On an Intel GPU or NPU (``model.device: GPU``/``NPU``) the FP32 graph runs in ``fp16``, the
precision those devices compute in. Each (device, precision) must pass its accuracy gate
against ONNX Runtime FP32 (``lineside gate``); the manifest records it under
``gates["openvino:<precision>"]`` (``"openvino-gpu:fp16"`` for a GPU).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from converter.cpu import cpu_flags
from converter.errors import LinesideError

#: the one line a box without OpenVINO gets
INSTALL_HINT = "OpenVINO is not installed; pip install 'lineside[openvino]'"
#: lineside precision -> OpenVINO's INFERENCE_PRECISION_HINT
HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16", "int8": "f32"}
#: the package graph each precision compiles (int8: the Q/DQ graph; OpenVINO fuses it into int8 kernels)
GRAPHS = {"fp32": "fp32", "bf16": "fp32", "fp16": "fp32", "int8": "int8"}
#: CPU flags (Linux /proc/cpuinfo names) with the dot-product instructions int8 needs to pay off
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


class OpenVINOError(LinesideError, RuntimeError):
    """OpenVINO is missing, the device is absent, or a model cannot compile or run on it."""


def load_openvino():  # -> the openvino module
    """Import OpenVINO, or raise one line naming the install."""
    try:
        import openvino
    except ImportError:
        raise OpenVINOError(INSTALL_HINT) from None
    return openvino


@dataclass(frozen=True)
class Facts:
    """What OpenVINO says about this box: version, devices, and the CPU's capabilities."""

    version: str
    devices: tuple[str, ...]
    #: OPTIMIZATION_CAPABILITIES of the CPU plugin, e.g. ("FP32", "INT8", "BF16")
    capabilities: tuple[str, ...]
    cpu_name: str = ""
    flags: frozenset[str] = field(default_factory=frozenset)

    @property
    def vnni(self) -> bool:
        return bool(self.flags & VNNI_FLAGS)


def probe(core: Any = None) -> Facts:
    """Ask OpenVINO about this box (raises OpenVINOError when it is not installed)."""
    ov = load_openvino()
    core = core or ov.Core()
    devices = tuple(core.available_devices)
    caps: tuple[str, ...] = ()
    name = ""
    if "CPU" in devices:
        caps = tuple(str(c) for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
        name = str(core.get_property("CPU", "FULL_DEVICE_NAME"))
    version = ov.__version__.split("-")[0]
    return Facts(version=version, devices=devices, capabilities=caps, cpu_name=name, flags=cpu_flags())


def device_kind(device: str) -> str:
    """ "CPU", "GPU" or "NPU" from a device name such as "GPU.1"."""
    return device.split(".")[0].upper()


def check_device(facts: Facts, device: str) -> None:
    """Refuse a device OpenVINO does not list here, in one line."""
    if device_kind(device) not in ("CPU", "GPU", "NPU"):
        msg = f"OpenVINO device {device!r} is not supported by lineside; use CPU, GPU or NPU in model.device"
        raise OpenVINOError(msg)
    if device not in facts.devices:
        have = ", ".join(facts.devices) or "none"
        msg = (
            f"OpenVINO device {device} is not on this box (OpenVINO {facts.version} lists: {have}); "
            "set model.device to one of them (an Intel GPU/NPU needs its driver)"
        )
        raise OpenVINOError(msg)


def choose_precision(facts: Facts, device: str, has_int8_graph: bool) -> tuple[str, str]:
    """The precision ``device`` runs fastest here, and why (one phrase)."""
    if device_kind(device) != "CPU":
        return "fp16", f"{device} computes in FP16"
    caps = set(facts.capabilities)
    if "BF16" in caps:
        return "bf16", "the CPU lists BF16 (AMX or AVX512-BF16)"
    if "INT8" in caps and facts.vnni:
        if has_int8_graph:
            return "int8", "the CPU has VNNI and the package has the INT8 Q/DQ graph"
        return "fp32", "the CPU has VNNI but the package has no INT8 graph (lineside export --precision int8)"
    return "fp32", "the CPU lists neither BF16 nor INT8 with VNNI"


def supported_precisions(facts: Facts, device: str) -> tuple[str, ...]:
    """Precisions ``device`` really computes in here: a bf16 hint on a CPU without BF16 would
    silently run FP32, so gating it there would record a result for something never run."""
    if device_kind(device) != "CPU":
        return ("fp16",)
    caps = set(facts.capabilities)
    return ("fp32",) + (("bf16",) if "BF16" in caps else ()) + (("int8",) if "INT8" in caps else ())


def gate_key(device: str, precision: str) -> str:
    """The manifest ``gates`` key of OpenVINO on ``device`` in ``precision``."""
    kind = device_kind(device)
    return f"openvino:{precision}" if kind == "CPU" else f"openvino-{kind.lower()}:{precision}"


def gate_state(manifest: Any, device: str, precision: str) -> tuple[bool, str]:
    """Did (device, precision) pass its gate on the graph the package holds now? And why not."""
    key = gate_key(device, precision)
    gate = manifest.gates.get(key)
    if not isinstance(gate, dict):
        return False, f"gate {key} was never run"
    graph = manifest.files.get(GRAPHS[precision])
    if gate.get("graph_sha256") != manifest.files_sha256.get(graph, gate.get("graph_sha256")):
        return False, f"gate {key} was run on another {graph} (re-exported since)"
    if not gate.get("passed"):
        reasons = "; ".join(gate.get("reasons", [])) or "failed"
        return False, f"gate {key} failed ({reasons})"
    return True, f"gate {key} passed (Dice {gate.get('dice')}, agreement {gate.get('agreement')})"


def compile_config(device: str, precision: str, threads: int = 0) -> dict[str, str]:
    """The compile_model properties of ``precision`` on ``device``."""
    # LATENCY: the worker runs one batch at a time, so every core goes to that one request;
    # THROUGHPUT would split the cores into streams that a synchronous caller leaves idle.
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": HINTS[precision]}
    if threads and device_kind(device) == "CPU":
        config["INFERENCE_NUM_THREADS"] = str(threads)
    return config


class OpenVINORunner:
    """One compiled model and its infer request: ``load()``, ``infer(batch)``, ``free()``."""

    def __init__(self, graph: str | Path, device: str = "CPU", precision: str = "fp32", threads: int = 0):
        self.graph = Path(graph)
        self.device = device
        self.precision = precision
        self.threads = threads
        self._compiled = None
        self._request = None

    def load(self) -> None:
        ov = load_openvino()
        if not self.graph.is_file():
            msg = f"{self.graph}: ONNX graph not found; check the model package path"
            raise OpenVINOError(msg)
        core = ov.Core()
        check_device(probe(core), self.device)
        config = compile_config(self.device, self.precision, self.threads)
        try:
            self._compiled = core.compile_model(os.fspath(self.graph), self.device, config)
        except Exception as exc:  # OpenVINO raises RuntimeError with a multi-line message
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            msg = f"{self.graph}: OpenVINO cannot compile it for {self.device} ({first})"
            raise OpenVINOError(msg) from None
        self._request = self._compiled.create_infer_request()

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Run one batch; returns the first output, copied (the request reuses its buffer)."""
        self._request.infer({0: np.ascontiguousarray(batch, dtype=np.float32)})
        return np.array(self._request.get_output_tensor(0).data, dtype=np.float32, copy=True)

    def free(self) -> None:
        self._request = self._compiled = None
