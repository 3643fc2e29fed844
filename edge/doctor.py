"""``lineside doctor [PACKAGE] [--config LINE.yaml] [--json]``: one screen that says what this box can run.

Versions of everything the line touches, the GPUs found, for each backend whether it is
usable here and the one command that fixes it, and for a model package which engine or
graph this box would run and why. Exit 0 when the box can run its configured line
(``--config``), or at least ONNX Runtime (without it); 1 otherwise.

Every probe is guarded: a failure is reported as text, never as a traceback. Nothing slow
runs: TensorFlow is never imported (its version comes from the package metadata), and the
external commands (nvidia-smi, nvcc) have short timeouts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

# one NVML and nvidia-smi probe for the doctor and the engine manifest's driver version
from converter.engine.machine import one_line, probe_nvidia_smi, probe_nvml, run_command

#: the fix for TensorRT, by what the NVIDIA driver can run (TensorRT 11 wheels are CUDA 13 only,
#: and CUDA 13 needs driver r580 or newer; CUDA 12 wheels run on r525 and every newer driver)
FIX_CU12 = "pip install -e '.[gpu-cu12]'"
FIX_CU13 = "pip install -e '.[gpu-cu13]'"
FIX_ONNXRUNTIME = "pip install -e ."
CUDA13_MIN_DRIVER = 580

#: distribution names to read a version from, first found wins (the module may be absent)
DISTRIBUTIONS: dict[str, tuple[str, ...]] = {
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino"),
    "openvino": ("openvino",),
    "tensorrt": (
        "tensorrt",
        "tensorrt-cu12",
        "tensorrt-cu13",
        "tensorrt-cu12-bindings",
        "tensorrt-cu13-bindings",
    ),
    "pycuda": ("pycuda",),
    "nvidia-ml-py": ("nvidia-ml-py", "pynvml"),
    "opencv": (
        "opencv-python-headless",
        "opencv-python",
        "opencv-contrib-python-headless",
        "opencv-contrib-python",
    ),
    "tensorflow": ("tensorflow", "tensorflow-cpu", "tensorflow-gpu", "tf-nightly"),
    "numpy": ("numpy",),
    "pyzmq": ("pyzmq",),
    "onnx": ("onnx",),
}


def dist_version(component: str) -> str | None:
    """Installed version of ``component`` from package metadata (imports nothing), or None."""
    for name in DISTRIBUTIONS.get(component, (component,)):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        except Exception:  # a broken dist-info must not stop the doctor
            continue
    return None


# -- OpenCV and ONNX Runtime ------------------------------------------------------------------------


def parse_video_io(build_info: str) -> dict[str, str]:
    """The "Video I/O" section of ``cv2.getBuildInformation()`` as {backend: "YES (...)"/"NO"}.

    Only the section's top-level entries (FFMPEG, GStreamer, v4l/v4l2, ...), not FFmpeg's
    sub-libraries, which are indented deeper.
    """
    out: dict[str, str] = {}
    lines = build_info.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == "Video I/O:"), None)
    if start is None:
        return out
    indent = None
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        depth = len(line) - len(line.lstrip())
        if indent is None:
            indent = depth
        if depth < indent:
            break
        if depth == indent and ":" in line:
            key, value = line.strip().split(":", 1)
            out[key.strip()] = value.strip()
    return out


def probe_opencv() -> dict[str, Any]:
    """OpenCV's version and video backends; FFmpeg and GStreamer are what the camera sources use."""
    try:
        import cv2

        video = parse_video_io(cv2.getBuildInformation())
        return {"version": cv2.__version__, "video_io": video, "error": ""}
    except Exception as exc:
        return {"version": dist_version("opencv"), "video_io": {}, "error": one_line(exc)}


def probe_onnxruntime() -> dict[str, Any]:
    """ONNX Runtime usable = it imports and runs a one-node graph on the CPU provider, as the workers do."""
    result: dict[str, Any] = {"version": dist_version("onnxruntime"), "providers": [], "usable": False}
    try:
        import onnxruntime as ort

        result["version"] = ort.__version__
        result["providers"] = list(ort.get_available_providers())
    except Exception as exc:
        result.update(why=f"ONNX Runtime does not import ({one_line(exc)})", fix=FIX_ONNXRUNTIME)
        return result
    try:
        import numpy as np
        from onnx import TensorProto, helper

        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
        graph = helper.make_graph([helper.make_node("Sigmoid", ["x"], ["y"])], "doctor", [x], [y])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        out = session.run(None, {"x": np.zeros((1, 4), np.float32)})[0]
        if not np.allclose(out, 0.5):
            msg = f"a sigmoid of 0 gave {out.ravel().tolist()}"
            raise RuntimeError(msg)
    except Exception as exc:
        result.update(
            why=f"ONNX Runtime cannot run a graph on the CPU ({one_line(exc)})", fix=FIX_ONNXRUNTIME
        )
        return result
    result.update(usable=True, why="ran a one-node graph on CPUExecutionProvider", fix="")
    return result


# -- pycuda and the CUDA toolkit (NVML and nvidia-smi: converter.engine.machine) --------------------


def probe_pycuda() -> dict[str, Any]:
    """pycuda's toolkit and driver API versions and its GPUs; usable only when CUDA starts."""
    result: dict[str, Any] = {"version": dist_version("pycuda"), "usable": False, "gpus": []}
    try:
        from converter.engine.machine import import_pycuda

        cuda = import_pycuda()
    except Exception as exc:  # TensorRTUnavailable, or anything a broken install raises
        result["why"] = _strip_hint(str(exc) if hasattr(exc, "args") and exc.args else one_line(exc))
        return result
    try:
        result["cuda_toolkit"] = ".".join(str(v) for v in cuda.get_version())
        number = int(cuda.get_driver_version())
        result["cuda_driver_api"] = f"{number // 1000}.{(number % 1000) // 10}"
        for index in range(int(cuda.Device.count())):
            dev = cuda.Device(index)
            major, minor = dev.compute_capability()
            total = getattr(dev, "total_memory", None)
            result["gpus"].append(
                {
                    "index": index,
                    "name": str(dev.name()),
                    "compute_capability": f"{major}.{minor}",
                    "memory_total_mib": int(total()) // (1 << 20) if callable(total) else None,
                }
            )
        result.update(usable=True, why="")
    except Exception as exc:
        result["why"] = f"pycuda imports but a query failed: {one_line(exc)}"
    return result


def probe_nvcc() -> str | None:
    """The CUDA toolkit that pycuda would build against (nvcc on PATH or in CUDA_ROOT/CUDA_HOME)."""
    candidates = [shutil.which("nvcc")]
    for var in ("CUDA_ROOT", "CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            candidates.append(str(Path(os.environ[var]) / "bin" / "nvcc"))
    for exe in candidates:
        if exe and Path(exe).is_file():
            code, out = run_command([exe, "--version"], timeout=10)
            match = re.search(r"release\s+([\d.]+)", out) if code == 0 else None
            if match:
                return match.group(1)
    return None


def driver_major(version: str | None) -> int | None:
    """580 from "580.65.06"; None when unknown."""
    match = re.match(r"(\d+)", version or "")
    return int(match.group(1)) if match else None


def tensorrt_fix(nvidia_driver: str | None) -> str:
    """The one install command for TensorRT on this box: the CUDA 13 extra only on drivers >= r580."""
    major = driver_major(nvidia_driver)
    if major is not None and major >= CUDA13_MIN_DRIVER:
        return FIX_CU13
    return FIX_CU12


def _strip_hint(why: str) -> str:
    """machine.py's reasons end with its long install hint; the doctor names its own fix."""
    try:
        from converter.engine.machine import INSTALL_HINT

        why = why.replace(f"; {INSTALL_HINT}", "").replace(f" {INSTALL_HINT}", "")
    except Exception:
        pass
    return why


def probe_tensorrt(nvidia_driver: str | None, gpus_found: bool) -> dict[str, Any]:
    """TensorRT usable = it imports, pycuda starts CUDA and the GPU answers (machine_or_reason)."""
    version = dist_version("tensorrt")
    result: dict[str, Any] = {"version": version, "usable": False, "machine": None}
    fix = tensorrt_fix(nvidia_driver)
    try:
        from converter.engine.machine import machine_or_reason

        machine, why = machine_or_reason(0)
    except Exception as exc:  # anything the probe lets through is still one line here
        machine, why = None, f"the TensorRT probe failed: {one_line(exc)}"
    if machine is None:
        why = _strip_hint(why)
        major = driver_major(nvidia_driver)
        trt_major = driver_major(version)
        if trt_major is not None and trt_major >= 11 and major is not None and major < CUDA13_MIN_DRIVER:
            why += (
                f"; TensorRT {version} is CUDA 13 only and driver {nvidia_driver} is older than "
                f"r{CUDA13_MIN_DRIVER}: install the CUDA 12 build instead"
            )
            fix = f"pip uninstall -y tensorrt tensorrt-cu13 && {FIX_CU12}"
        elif not gpus_found:
            fix = f"needs an NVIDIA GPU and its driver (nvidia-smi must list it); then {fix}"
        result.update(why=why, fix=fix)
        return result
    info = machine_fields(machine)
    result.update(
        version=info["tensorrt_version"] or version,
        usable=True,
        machine=info,
        # kept (not reported) so select_engine does not probe the machine a second time
        machine_object=machine,
        why=f"TensorRT {info['tensorrt_version']} on {info['gpu_name']} (sm {info['compute_capability']})",
        fix="",
    )
    return result


def machine_fields(machine: Any) -> dict[str, Any]:
    """MachineInfo as a dict, with None for what the probe could not read."""
    fields = (
        "tensorrt_version",
        "cuda_toolkit_version",
        "cuda_driver_api_version",
        "nvidia_driver_version",
        "gpu_name",
        "compute_capability",
    )
    return {name: getattr(machine, name, None) or None for name in fields}


def probe_openvino(onnxruntime: dict[str, Any], facts: Any = None) -> dict[str, Any]:
    """OpenVINO: installed or not, its devices, and the precision this CPU runs fastest
    (what ``backend: openvino`` / ``auto`` would run once the package's gate passed)."""
    from converter import openvino_runtime as ovr
    from edge.backends.choice import probe_openvino as openvino_facts

    facts = facts if facts is not None else openvino_facts()
    via_ort = "OpenVINOExecutionProvider" in onnxruntime.get("providers", [])
    note = " (ONNX Runtime's OpenVINOExecutionProvider is not used by lineside)" if via_ort else ""
    if isinstance(facts, Exception):
        return {
            "version": dist_version("openvino"),
            "usable": False,
            "why": f"{facts}{note}",
            "fix": "pip install 'lineside[openvino]' (then `lineside gate PACKAGE --backend openvino`)",
        }
    precision, why = ovr.choose_precision(facts, "CPU", has_int8_graph=True)
    caps = ", ".join(facts.capabilities) or "none"
    return {
        "version": facts.version,
        "usable": True,
        "devices": list(facts.devices),
        "cpu_capabilities": list(facts.capabilities),
        "cpu_precision": precision,
        "why": (
            f"OpenVINO {facts.version}, devices {', '.join(facts.devices)}; the CPU ({caps}) runs "
            f"{precision} fastest: {why}; a package runs it once "
            f"`lineside gate PACKAGE --backend openvino` passed{note}"
        ),
        "fix": "",
    }


# -- model package and line config ------------------------------------------------------------------


def describe_package(
    path: str | Path,
    tensorrt: dict[str, Any],
    precision: str = "auto",
    openvino: Any = None,
    device: str = "CPU",
    backend: str = "auto",
) -> dict[str, Any]:
    """Which engine or graph this box would run from the package (as ``backend: auto`` picks), and why.

    ``openvino`` is ``edge.backends.choice.probe_openvino()``'s answer (probed here when None)."""
    result: dict[str, Any] = {"path": str(path), "opened": False}
    try:
        from converter.package import ModelPackage

        package = ModelPackage.open(path)
    except Exception as exc:
        result["why"] = str(exc) or one_line(exc)
        return result
    result.update(opened=True, model_id=package.model_id)
    result["graphs"] = {
        p: {"file": name, "present": (package.root / name).is_file()}
        for p, name in sorted(package.manifest.files.items())
    }
    engines = []
    for plan in package.engine_plans():
        entry: dict[str, Any] = {"plan": plan.name}
        try:
            from converter.engine.manifest import load_engine_manifest

            m = load_engine_manifest(plan)
            entry.update(
                precision=m.precision,
                tensorrt=m.tensorrt_version,
                gpu=m.gpu_name,
                compute_capability=m.compute_capability,
                max_batch=m.max_batch,
            )
        except Exception as exc:
            entry["error"] = str(exc) or one_line(exc)
        engines.append(entry)
    result["engines"] = engines
    try:
        from converter.engine.select import select_engine

        machine = tensorrt.get("machine_object")
        plan, why = select_engine(package, machine) if machine is not None else select_engine(package)
    except Exception as exc:
        plan, why = None, f"engine selection failed: {str(exc) or one_line(exc)}"
    result["engine"] = plan.name if plan is not None else None
    result["engine_why"] = _strip_hint(why)
    from edge.backends.choice import onnxruntime_precision, openvino_option, probe_openvino

    precision, ort_why = onnxruntime_precision(package, precision)
    graph = package.manifest.files.get(precision)
    if graph is None or not (package.root / graph).is_file():
        result["graph"] = None
        result["graph_why"] = (
            f"the package has no {precision} graph; make one with `lineside export --precision {precision}`"
            if precision != "fp32"
            else "the FP32 graph is missing; re-run `lineside export`"
        )
    else:
        result["graph"] = graph
        result["graph_why"] = ""
        try:
            package.check_graph_io(precision)
        except Exception as exc:
            result["graph"] = None
            result["graph_why"] = str(exc) or one_line(exc)
    facts = openvino if openvino is not None else probe_openvino()
    ov_precision, ov_why = openvino_option(package, device, facts, auto=backend != "openvino")
    result["openvino"] = {"device": device, "precision": ov_precision, "why": ov_why}
    if plan is not None:
        result["would_run"] = f"tensorrt {plan.name}"
        result["why"] = result["engine_why"]
    elif ov_precision is not None:
        from converter.openvino_runtime import GRAPHS

        result["would_run"] = (
            f"openvino {package.manifest.files[GRAPHS[ov_precision]]} ({ov_precision}, {device})"
        )
        result["why"] = f"no usable TensorRT engine: {result['engine_why']}; {ov_why}"
    elif result["graph"]:
        result["would_run"] = f"onnxruntime {graph} ({precision})"
        result["why"] = f"no usable TensorRT engine: {result['engine_why']}; {ov_why}; {ort_why}"
    else:
        result["would_run"] = None
        result["why"] = result["graph_why"]
    return result


def check_config(path: str, package_arg: str | None, report: dict[str, Any]) -> dict[str, Any]:
    """Can this box run the line of ``path``? Its backend: auto/onnxruntime need ONNX Runtime and
    the package's graph; tensorrt needs an engine that fits this GPU."""
    result: dict[str, Any] = {"path": path, "runnable": False}
    try:
        from edge.config import load_config

        cfg = load_config(path)
    except Exception as exc:
        result["why"] = str(exc) or one_line(exc)
        return result
    backend, precision = cfg.model.backend, cfg.model.precision
    package_path = package_arg or str(cfg.resolve(cfg.model.package))
    result.update(backend=backend, precision=precision, package=package_path)
    device = cfg.model.device
    pkg = describe_package(package_path, report["_tensorrt"], precision, report["_openvino"], device, backend)
    report["package"] = pkg
    ort_ok = report["backends"]["onnxruntime"]["usable"]
    if not pkg.get("opened"):
        result["why"] = f"the line's model package cannot be opened: {pkg.get('why')}"
    elif backend == "tensorrt":
        if pkg.get("engine"):
            result.update(runnable=True, why=f"backend tensorrt: {pkg['engine_why']}")
        else:
            result["why"] = f"backend tensorrt but no engine is usable here: {pkg['engine_why']}"
    elif backend == "auto" and pkg.get("engine"):
        result.update(runnable=True, why=f"backend auto runs TensorRT: {pkg['engine_why']}")
    elif backend in ("auto", "openvino") and pkg["openvino"]["precision"]:
        result.update(runnable=True, why=f"backend {backend} runs {pkg['openvino']['why']}")
    elif backend == "openvino":
        result["why"] = f"backend openvino: {pkg['openvino']['why']}"
    elif not ort_ok:
        result["why"] = f"backend {backend} needs ONNX Runtime: {report['backends']['onnxruntime']['why']}"
    elif not pkg.get("graph"):
        result["why"] = f"backend {backend}: {pkg['graph_why']}"
    else:
        result.update(
            runnable=True, why=f"backend {backend} runs ONNX Runtime on {pkg['graph']} ({precision})"
        )
    return result


# -- the report ------------------------------------------------------------------------------------------


def collect(package: str | None = None, config: str | None = None) -> dict[str, Any]:
    """Every probe, as one JSON-able dict; ``exit_code`` says whether this box can run its line."""
    report: dict[str, Any] = {
        "python": {"version": platform.python_version(), "executable": sys.executable},
        "platform": platform.platform(),
    }
    ort = probe_onnxruntime()
    opencv = probe_opencv()
    nvml = {"version": dist_version("nvidia-ml-py"), **probe_nvml()}
    smi = probe_nvidia_smi() if not nvml["usable"] else {"usable": False, "gpus": [], "why": "NVML answered"}
    pycuda = probe_pycuda()
    nvidia_driver = nvml.get("nvidia_driver") or smi.get("nvidia_driver")
    if pycuda["usable"]:
        gpus, gpu_source = pycuda["gpus"], "pycuda"
        free = {g["index"]: g for g in nvml["gpus"]}  # NVML adds what pycuda needs a context for
        for gpu in gpus:
            gpu["memory_used_mib"] = free.get(gpu["index"], {}).get("memory_used_mib")
    elif nvml["usable"]:
        gpus, gpu_source = nvml["gpus"], "NVML"
    elif smi["usable"]:
        gpus, gpu_source = smi["gpus"], "nvidia-smi"
    else:
        gpus, gpu_source = [], "none"
    trt = probe_tensorrt(nvidia_driver, bool(gpus))
    from edge.backends.choice import probe_openvino as openvino_facts

    report["_openvino"] = openvino_facts()
    report["versions"] = {
        "onnxruntime": ort["version"],
        "openvino": dist_version("openvino"),
        "tensorrt": trt["version"],
        "pycuda": pycuda["version"],
        "nvidia-ml-py": nvml["version"],
        "opencv": opencv["version"],
        "tensorflow": dist_version("tensorflow"),
        "numpy": dist_version("numpy"),
        "pyzmq": dist_version("pyzmq"),
        "onnx": dist_version("onnx"),
    }
    report["onnxruntime_providers"] = ort["providers"]
    report["opencv_video_io"] = opencv["video_io"]
    if opencv["error"]:
        report["opencv_error"] = opencv["error"]
    report["cuda"] = {
        "toolkit": pycuda.get("cuda_toolkit") or probe_nvcc(),
        "toolkit_source": "pycuda" if pycuda.get("cuda_toolkit") else "nvcc",
        "driver_api": pycuda.get("cuda_driver_api")
        or nvml.get("cuda_driver_api")
        or smi.get("cuda_driver_api"),
        "nvidia_driver": nvidia_driver,
        "pycuda": "usable" if pycuda["usable"] else pycuda.get("why", ""),
    }
    report["nvml"] = {k: nvml.get(k) for k in ("version", "usable", "why")}
    report["nvidia_smi"] = {"usable": smi["usable"], "why": smi.get("why", "")}
    report["gpus"] = gpus
    report["gpu_source"] = gpu_source
    report["backends"] = {
        "onnxruntime": {k: ort.get(k) for k in ("usable", "why", "fix")},
        "tensorrt": {k: trt.get(k) for k in ("usable", "why", "fix")},
        "openvino": probe_openvino(ort, report["_openvino"]),
    }
    report["machine"] = trt.get("machine")
    report["_tensorrt"] = trt
    report["package"] = (
        describe_package(package, trt, openvino=report["_openvino"]) if package and not config else None
    )
    report["config"] = check_config(config, package, report) if config else None
    if config:
        ok = bool(report["config"]["runnable"])
        verdict = report["config"]["why"]
    else:
        ok = bool(ort["usable"])
        verdict = (
            "ONNX Runtime works: this box can run a line on the CPU"
            + ("; TensorRT is usable too" if trt["usable"] else "")
            if ok
            else "ONNX Runtime does not work: this box cannot run a line"
        )
    report["verdict"] = verdict
    report["exit_code"] = 0 if ok else 1
    trt.pop("machine_object", None)
    del report["_tensorrt"], report["_openvino"]
    return report


def _yes_no(value: str | None) -> str:
    if not value:
        return "?"
    return "yes" if value.upper().startswith("YES") else "no"


def render(report: dict[str, Any]) -> str:
    """The one screen: versions, CUDA, GPUs, backends, package, verdict."""
    v = report["versions"]
    lines = [f"lineside doctor: {report['platform']}"]
    lines.append(f"  {'python':14} {report['python']['version']} ({report['python']['executable']})")
    video = report.get("opencv_video_io", {})
    notes = {
        "onnxruntime": f"providers: {', '.join(report['onnxruntime_providers']) or 'none'}",
        "opencv": (
            f"video: FFmpeg {_yes_no(video.get('FFMPEG'))}, GStreamer {_yes_no(video.get('GStreamer'))}"
            if video
            else report.get("opencv_error", "no Video I/O section in its build information")
        ),
        "tensorflow": "not imported; the line does not need it",
    }
    for name in ("onnxruntime", "openvino", "tensorrt", "pycuda", "nvidia-ml-py", "opencv", "tensorflow",
                 "numpy", "pyzmq", "onnx"):  # fmt: skip
        note = f"  ({notes[name]})" if name in notes else ""
        lines.append(f"  {name:14} {v.get(name) or '-'}{note}")
    cuda = report["cuda"]
    lines.append(
        f"  {'CUDA':14} toolkit {cuda['toolkit'] or '-'} ({cuda['toolkit_source']}), driver API "
        f"{cuda['driver_api'] or '-'}, NVIDIA driver {cuda['nvidia_driver'] or '-'}"
    )
    nvml = report["nvml"]
    lines.append(f"  {'NVML':14} {'usable' if nvml['usable'] else nvml['why']}")
    if report["gpus"]:
        for gpu in report["gpus"]:
            total = gpu.get("memory_total_mib")
            used = gpu.get("memory_used_mib")
            mem = f"{total} MiB" if total is not None else "memory ?"
            if used is not None:
                mem += f", {used} MiB used"
            lines.append(
                f"  GPU {gpu['index']:<10} {gpu['name']}, sm {gpu.get('compute_capability') or '?'}, {mem} "
                f"(via {report['gpu_source']})"
            )
    else:
        lines.append(f"  {'GPUs':14} none found (pycuda, NVML and nvidia-smi: {report['nvidia_smi']['why']})")
    lines.append("backends:")
    for name, b in report["backends"].items():
        state = "usable" if b["usable"] else "NOT usable"
        lines.append(f"  {name:12} {state:10} {b['why']}")
        if not b["usable"] and b.get("fix"):
            lines.append(f"  {'':12} {'fix:':10} {b['fix']}")
    pkg = report.get("package")
    if pkg:
        if not pkg.get("opened"):
            lines.append(f"package {pkg['path']}: cannot open: {pkg['why']}")
        else:
            graphs = ", ".join(
                f"{p} {g['file']}" + ("" if g["present"] else " (MISSING)") for p, g in pkg["graphs"].items()
            )
            lines.append(f"package {pkg['path']} ({pkg['model_id']})")
            lines.append(f"  graphs:  {graphs}")
            engines = ", ".join(
                e["plan"]
                + (f" ({e['precision']}, TensorRT {e['tensorrt']}, {e['gpu']})" if "precision" in e else "")
                for e in pkg["engines"]
            )
            lines.append(f"  engines: {engines or 'none'}")
            lines.append(f"  this box would run: {pkg['would_run'] or 'nothing'}: {pkg['why']}")
    cfg = report.get("config")
    if cfg:
        backend = f" (backend {cfg['backend']})" if "backend" in cfg else ""
        lines.append(f"line {cfg['path']}{backend}: {'runnable' if cfg['runnable'] else 'NOT runnable'}")
    word = "OK" if report["exit_code"] == 0 else "NO"
    lines.append(f"{word}: {report['verdict']} (exit {report['exit_code']})")
    return "\n".join(lines)


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``lineside doctor`` to the ``lineside`` parser."""
    p = sub.add_parser(
        "doctor",
        help="what this box can run: versions, GPUs, backends and the command that fixes each",
        description=(
            "Prints the versions of everything the line uses, the GPUs found, whether each backend is "
            "usable here (and the one command that fixes it), and for a model package which engine or "
            "graph this box would run. Exit 0 when the box can run --config's line (without --config: "
            "when ONNX Runtime works), 1 otherwise."
        ),
    )
    p.add_argument("package", nargs="?", default=None, help="model package folder (default: --config's)")
    p.add_argument("--config", default=None, help="line config YAML: exit 1 when this box cannot run it")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of text")
    p.set_defaults(func=cmd_doctor)


def cmd_doctor(args: argparse.Namespace) -> int:
    """Handler of ``lineside doctor``."""
    try:
        report = collect(args.package, args.config)
    except Exception as exc:  # a probe this module did not foresee: still one line, never a traceback
        print(f"lineside doctor: a probe failed unexpectedly: {one_line(exc)}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2, default=str) if args.json else render(report))
    return int(report["exit_code"])
