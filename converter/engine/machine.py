"""TensorRT, pycuda and the GPU of this machine: lazy imports with an install hint, and
the facts an engine depends on (TensorRT, CUDA toolkit, CUDA driver API and NVIDIA driver
versions, GPU name, compute capability).
"""

from __future__ import annotations

import logging
import shutil
import subprocess

from converter.engine.manifest import MachineInfo
from converter.errors import LinesideError

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "on the line-side GPU box run `pip install 'lineside[gpu]'` (TensorRT 10/11 and pycuda; pycuda builds "
    "against the CUDA toolkit in CUDA_ROOT and needs an NVIDIA driver); see docs/converter.md"
)


class TensorRTUnavailable(LinesideError, RuntimeError):
    """TensorRT, pycuda or a usable NVIDIA GPU is missing on this machine."""


def import_tensorrt():
    """``import tensorrt`` or one line saying what to install and where."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        msg = f"TensorRT is not installed here ({exc.name or exc}); {INSTALL_HINT}"
        raise TensorRTUnavailable(msg) from None
    except Exception as exc:  # a wheel whose libnvinfer cannot load raises OSError/RuntimeError
        msg = f"TensorRT is installed but cannot load ({type(exc).__name__}: {exc}); {INSTALL_HINT}"
        raise TensorRTUnavailable(msg) from None
    return trt


def import_pycuda():
    """``import pycuda.driver`` and initialise CUDA, or one line saying what is missing."""
    try:
        import pycuda.driver as cuda
    except ImportError as exc:
        msg = f"pycuda is not installed here ({exc.name or exc}); {INSTALL_HINT}"
        raise TensorRTUnavailable(msg) from None
    try:
        cuda.init()
        count = cuda.Device.count()
    except Exception as exc:  # pycuda raises its own Error types, or OSError without libcuda
        msg = (
            f"CUDA cannot start ({type(exc).__name__}: {exc}); is the NVIDIA driver installed? {INSTALL_HINT}"
        )
        raise TensorRTUnavailable(msg) from None
    if count == 0:
        msg = f"no NVIDIA GPU is visible to CUDA (check CUDA_VISIBLE_DEVICES and nvidia-smi); {INSTALL_HINT}"
        raise TensorRTUnavailable(msg)
    return cuda


def _version(number: int) -> str:
    """CUDA's 12040 -> "12.4"."""
    return f"{number // 1000}.{(number % 1000) // 10}"


def nvidia_driver_version() -> str:
    """The NVIDIA driver's own version ("575.57.08"), or "" when it cannot be found; never raises.

    CUDA reports only the driver API version it supports ("12.9"); the driver number comes
    from NVML (``nvidia-ml-py``'s ``pynvml``, when installed) or else from ``nvidia-smi``.
    """
    try:
        import pynvml
    except ImportError:
        pynvml = None
    if pynvml is not None:
        try:
            pynvml.nvmlInit()
            try:
                version = pynvml.nvmlSystemGetDriverVersion()
            finally:
                pynvml.nvmlShutdown()
            # nvidia-ml-py < 11.515 returned bytes
            return (version.decode() if isinstance(version, bytes) else str(version)).strip()
        except Exception as exc:  # NVMLError (no driver, no libnvidia-ml) must not stop a probe
            log.debug("NVML gave no driver version: %s", exc)
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return ""
    try:
        done = subprocess.run(
            [smi, "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=15,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        log.debug("nvidia-smi gave no driver version: %s", exc)
        return ""
    lines = done.stdout.split()
    # one line per GPU, all the same driver
    return lines[0].strip() if done.returncode == 0 and lines else ""


def probe_machine(device: int = 0) -> MachineInfo:
    """Versions and GPU of this machine; raises TensorRTUnavailable with the install hint."""
    trt = import_tensorrt()
    cuda = import_pycuda()
    if not 0 <= device < cuda.Device.count():
        msg = f"GPU {device} does not exist; this machine has {cuda.Device.count()} GPU(s)"
        raise TensorRTUnavailable(msg)
    dev = cuda.Device(device)
    major, minor = dev.compute_capability()
    return MachineInfo(
        tensorrt_version=str(trt.__version__),
        # the toolkit pycuda was compiled against, not necessarily the one TensorRT's wheel uses
        cuda_toolkit_version=".".join(str(v) for v in cuda.get_version()),
        cuda_driver_api_version=_version(int(cuda.get_driver_version())),
        gpu_name=str(dev.name()),
        compute_capability=f"{major}.{minor}",
        nvidia_driver_version=nvidia_driver_version(),
    )


def machine_or_reason(device: int = 0) -> tuple[MachineInfo | None, str]:
    """probe_machine without raising: (info, "") or (None, why not)."""
    try:
        return probe_machine(device), ""
    except TensorRTUnavailable as exc:
        return None, str(exc)
