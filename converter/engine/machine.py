"""TensorRT, pycuda and the GPU of this machine: lazy imports with an install hint, and
the facts an engine depends on (TensorRT, CUDA toolkit, CUDA driver API and NVIDIA driver
versions, GPU name, compute capability). The NVML and nvidia-smi probes here are also
``lineside doctor``'s (edge/doctor.py) and the GPU acceptance run's.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import subprocess
from collections.abc import Callable
from typing import Any, TypeVar

from converter.engine.manifest import MachineInfo
from converter.errors import LinesideError

log = logging.getLogger(__name__)

T = TypeVar("T")

INSTALL_HINT = (
    "on the line-side GPU box install the TensorRT extra for its driver: `pip install -e '.[gpu-cu12]'`, "
    "or `'.[gpu-cu13]'` on driver r580+ (`lineside doctor` says which); pycuda builds against the CUDA "
    "toolkit in CUDA_ROOT and needs an NVIDIA driver; see docs/gpu.md"
)


class TensorRTUnavailable(LinesideError, RuntimeError):
    """TensorRT, pycuda or a usable NVIDIA GPU is missing on this machine."""


#: what to do when the driver cannot run this TensorRT's CUDA (CUDA 13 needs driver r580+)
CUDA_MAJOR_HINT = (
    "check the NVIDIA driver with `nvidia-smi`: TensorRT for CUDA 13 (tensorrt-cu13, every TensorRT 11) "
    "needs driver r580 or newer; with an older driver install `lineside[gpu-cu12]` (TensorRT 10 for "
    "CUDA 12, driver r525+), else `lineside[gpu-cu13]`"
)


def _missing_library(message: str) -> str:
    """What a loader message such as "libcuda.so.1: cannot open shared object file" means."""
    found = re.search(r"(lib[A-Za-z0-9_+-]+)\.so[0-9.]*", message)
    library = found.group(0) if found else ""
    stem = found.group(1) if found else ""
    if stem == "libcuda":
        return (
            f"{library} is missing: the NVIDIA driver is not installed or not on the loader path "
            "(install the driver; `nvidia-smi` must work, and `ldconfig -p | grep libcuda` must list it)"
        )
    if stem.startswith("libnvinfer") or stem.startswith("libnvonnxparser"):
        return (
            f"{library} is missing: TensorRT's own libraries are not installed or not on the loader path "
            "(reinstall the TensorRT wheel with its libs, `pip install --force-reinstall "
            "'lineside[gpu-cu12]'` or `[gpu-cu13]`, or add TensorRT's lib folder to LD_LIBRARY_PATH)"
        )
    if stem.startswith(("libcudart", "libcublas", "libcudnn", "libnvrtc", "libnvJitLink")):
        return (
            f"{library} is missing: the CUDA runtime libraries of this CUDA major are not installed or not "
            "on the loader path (install the CUDA toolkit whose major the TensorRT wheel names, or add its "
            "lib64 folder to LD_LIBRARY_PATH)"
        )
    if library:
        return f"{library} is missing or not on the loader path (LD_LIBRARY_PATH)"
    return ""


def _import_failure(what: str, module: str, exc: BaseException) -> TensorRTUnavailable:
    """ "not installed" only for ModuleNotFoundError of ``module`` itself; any other import
    failure (a library that cannot load, a broken wheel) shows its message and names the
    missing library, since reinstalling the Python package would not fix it."""
    if isinstance(exc, ModuleNotFoundError) and exc.name in (module, module.split(".")[0]):
        return TensorRTUnavailable(f"{what} is not installed here ({exc.name}); {INSTALL_HINT}")
    text = " ".join(str(exc).split())
    library = _missing_library(text)
    fix = library or INSTALL_HINT
    return TensorRTUnavailable(f"{what} is installed but cannot load ({type(exc).__name__}: {text}); {fix}")


def import_tensorrt():
    """``import tensorrt`` or one line saying what to install, or which library is missing."""
    try:
        import tensorrt as trt
    except Exception as exc:  # ImportError, or OSError/RuntimeError from a wheel whose libnvinfer cannot load
        raise _import_failure("TensorRT", "tensorrt", exc) from None
    return trt


def import_pycuda():
    """``import pycuda.driver`` and initialise CUDA, or one line saying what is missing."""
    try:
        import pycuda.driver as cuda
    except Exception as exc:  # pycuda._driver links libcuda.so.1: without the driver it cannot load
        raise _import_failure("pycuda", "pycuda", exc) from None
    try:
        cuda.init()
        count = cuda.Device.count()
    except Exception as exc:  # pycuda raises its own Error types, or OSError without libcuda
        text = " ".join(str(exc).split())
        why = _missing_library(text) or "is the NVIDIA driver installed and loaded? (`nvidia-smi`)"
        msg = f"CUDA cannot start ({type(exc).__name__}: {text}); {why}; {INSTALL_HINT}"
        raise TensorRTUnavailable(msg) from None
    if count == 0:
        msg = f"no NVIDIA GPU is visible to CUDA (check CUDA_VISIBLE_DEVICES and nvidia-smi); {INSTALL_HINT}"
        raise TensorRTUnavailable(msg)
    return cuda


def trt_object(what: str, factory: Callable[..., T], *args: Any) -> T:
    """Make a TensorRT object (``trt.Builder(logger)``, ``trt.Runtime(logger)``); the
    ``TypeError: ... factory function returned nullptr`` that pybind11 raises when TensorRT
    cannot start CUDA (a CUDA 13 wheel on a driver older than r580, no driver, no GPU left)
    becomes one TensorRTUnavailable line with the fix. Any other TypeError is a bug and stays one."""
    try:
        return factory(*args)
    except TypeError as exc:
        if "nullptr" not in str(exc):
            raise
        msg = (
            f"TensorRT could not create its {what}: CUDA did not start inside TensorRT "
            f"({' '.join(str(exc).split())}){_cuda_versions()}; {CUDA_MAJOR_HINT}"
        )
        raise TensorRTUnavailable(msg) from None


def _cuda_versions() -> str:
    """ " (tensorrt-cu13 11.4 installed; this driver runs CUDA up to 12.9)", as far as known:
    the two facts that decide whether TensorRT's CUDA can start here."""
    from importlib import metadata

    facts = []
    for name in ("tensorrt-cu13", "tensorrt-cu12", "tensorrt-cu13-libs", "tensorrt-cu12-libs"):
        try:
            facts.append(f"{name} {metadata.version(name)} installed")
            break
        except metadata.PackageNotFoundError:
            continue
    try:
        import pycuda.driver as cuda

        facts.append(f"this driver runs CUDA up to {_version(int(cuda.get_driver_version()))}")
    except Exception:  # pycuda missing or CUDA not started: the hint still says what to check
        pass
    return f" ({'; '.join(facts)})" if facts else ""


def _version(number: int) -> str:
    """CUDA's 12040 -> "12.4"."""
    return f"{number // 1000}.{(number % 1000) // 10}"


def one_line(exc: BaseException) -> str:
    """An exception as one line, "OSError: [Errno 2] No such file", or its type alone."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def run_command(argv: list[str], timeout: float = 10.0) -> tuple[int, str]:
    """(exit code, stdout+stderr) of a short external command; (-1, why) when it cannot run."""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return -1, one_line(exc)
    return proc.returncode, (proc.stdout or "") + (proc.stderr or "")


def _text(value: Any) -> str:
    """NVML's strings; nvidia-ml-py < 11.515 returned bytes."""
    return value.decode() if isinstance(value, bytes) else str(value)


def probe_nvml() -> dict[str, Any]:
    """NVML through nvidia-ml-py (module ``pynvml``): driver, CUDA driver API and GPUs, never raising.

    {"usable": bool, "gpus": [{"index", "name", "compute_capability", "memory_total_mib",
    "memory_used_mib"}], "nvidia_driver", "cuda_driver_api", "why"}; "nvidia_driver" is there
    as soon as NVML gave it, even when a later query failed (then "usable" is false)."""
    result: dict[str, Any] = {"usable": False, "gpus": []}
    try:
        import pynvml
    except Exception as exc:
        result["why"] = f"nvidia-ml-py is not installed ({one_line(exc)})"
        return result
    try:
        pynvml.nvmlInit()
    except Exception as exc:
        result["why"] = f"NVML cannot start (no NVIDIA driver?): {one_line(exc)}"
        return result
    try:
        result["nvidia_driver"] = _text(pynvml.nvmlSystemGetDriverVersion())
        result["cuda_driver_api"] = _version(int(pynvml.nvmlSystemGetCudaDriverVersion()))
        for index in range(int(pynvml.nvmlDeviceGetCount())):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
            result["gpus"].append(
                {
                    "index": index,
                    "name": _text(pynvml.nvmlDeviceGetName(handle)),
                    "compute_capability": f"{major}.{minor}",
                    "memory_total_mib": int(memory.total) // (1 << 20),
                    "memory_used_mib": int(memory.used) // (1 << 20),
                }
            )
        result.update(usable=True, why="")
    except Exception as exc:
        result["why"] = f"NVML query failed: {one_line(exc)}"
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()
    return result


def probe_nvidia_smi() -> dict[str, Any]:
    """The driver and GPUs as ``nvidia-smi`` reports them (when NVML's Python binding is absent),
    in probe_nvml's keys (a GPU's numbers are None where nvidia-smi gave none)."""
    result: dict[str, Any] = {"usable": False, "gpus": []}
    exe = shutil.which("nvidia-smi")
    if exe is None:
        result["why"] = "nvidia-smi not found (no NVIDIA driver on this box?)"
        return result
    fields = "index,name,driver_version,memory.total,memory.used,compute_cap"
    code, out = run_command([exe, f"--query-gpu={fields}", "--format=csv,noheader,nounits"])
    if code != 0:  # drivers before r510 do not know compute_cap
        fields = fields.rsplit(",", 1)[0]
        code, out = run_command([exe, f"--query-gpu={fields}", "--format=csv,noheader,nounits"])
    if code != 0:
        result["why"] = f"nvidia-smi failed: {' '.join(out.split())[:200]}"
        return result
    for line in out.strip().splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) < 5:
            continue
        gpu: dict[str, Any] = {"index": int(cells[0]) if cells[0].isdigit() else cells[0], "name": cells[1]}
        result["nvidia_driver"] = cells[2]
        for key, cell in (("memory_total_mib", cells[3]), ("memory_used_mib", cells[4])):
            gpu[key] = int(float(cell)) if re.fullmatch(r"[\d.]+", cell) else None
        gpu["compute_capability"] = cells[5] if len(cells) > 5 else None
        result["gpus"].append(gpu)
    code, out = run_command([exe])
    match = re.search(r"CUDA Version:\s*([\d.]+)", out) if code == 0 else None
    if match:
        result["cuda_driver_api"] = match.group(1)
    result.update(usable=True, why="")
    return result


def nvidia_driver_version() -> str:
    """The NVIDIA driver's own version ("575.57.08"), or "" when it cannot be found; never raises.

    CUDA reports only the driver API version it supports ("12.9"); the driver number comes
    from NVML (``nvidia-ml-py``'s ``pynvml``, when installed) or else from ``nvidia-smi``.
    """
    nvml = probe_nvml()
    if nvml.get("nvidia_driver"):
        return str(nvml["nvidia_driver"]).strip()
    log.debug("NVML gave no driver version: %s", nvml.get("why"))
    try:
        smi = probe_nvidia_smi()
    except Exception as exc:  # output it cannot parse must not stop an engine build
        smi = {"why": one_line(exc)}
    if not smi.get("nvidia_driver"):
        log.debug("nvidia-smi gave no driver version: %s", smi.get("why"))
    return str(smi.get("nvidia_driver") or "").strip()


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
