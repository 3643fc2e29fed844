"""``lineside build-engine``: ONNX graph of a model package -> TensorRT engine + manifest.

Small steps in order (Polygraphy's NetworkFromOnnxPath -> EngineBytesFromNetwork ->
SaveEngine):

    pick_graph -> network_from_onnx -> builder_config -> build_serialized -> save_engine
      -> layer_information -> manifest -> save_timing_cache

all inside device N's CUDA context (``--device``/``device=N``).

The network is strongly typed: precision comes from the graph (``model.fp16.onnx`` or
``model.int8.onnx``), which is what TensorRT 11 requires (it removed BuilderFlag.FP16,
the INT8 calibrators and OBEY_PRECISION_CONSTRAINTS). On TensorRT 10 only,
``builder_flag_fp16`` builds the FP32 graph with BuilderFlag.FP16 instead.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import logging
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from converter.engine.cuda import DeviceContext
from converter.engine.layers import format_shares, precision_shares
from converter.engine.machine import probe_machine
from converter.engine.manifest import EngineManifest, MachineInfo, manifest_path, plan_name
from converter.engine.profiles import BatchProfile
from converter.errors import LinesideError
from converter.package import ModelPackage, sha256_file

log = logging.getLogger(__name__)


class EngineBuildError(LinesideError, RuntimeError):
    """TensorRT could not parse the graph or build the engine."""


@dataclass
class BuildResult:
    plan_path: Path
    manifest: EngineManifest


def pick_graph(package: ModelPackage, precision: str, builder_flag_fp16: bool) -> Path:
    """The ONNX graph whose types the engine takes (the FP32 one for the builder-flag path)."""
    if builder_flag_fp16:
        if precision != "fp16":
            msg = f"--builder-flag-fp16 builds FP16 from the FP32 graph; it cannot make a {precision} engine"
            raise EngineBuildError(msg)
        return package.onnx_path("fp32")
    if not package.has_precision(precision):
        msg = (
            f"{package.root}: no {precision} graph to build from; make it first with "
            f"`lineside export CHECKPOINT --out {package.root} --precision {precision} --data DATASET`"
        )
        raise EngineBuildError(msg)
    if precision == "int8" and package.manifest.gates.get("int8", {}).get("target") == "onnxruntime":
        # uint8 activations with zero points: TensorRT takes only symmetric INT8 Q/DQ
        msg = (
            f"{package.root}: its INT8 graph is laid out for ONNX Runtime on the CPU (uint8 activations), "
            f"which TensorRT cannot build; re-export with `--int8-target tensorrt` for an INT8 engine"
        )
        raise EngineBuildError(msg)
    return package.onnx_path(precision)


def network_from_onnx(logger, onnx_path: Path, strongly_typed: bool):
    """Parse ``onnx_path`` into a (builder, network, parser); strongly typed unless told otherwise."""
    import tensorrt as trt

    from converter.engine.machine import trt_object

    builder = trt_object("Builder", trt.Builder, logger)  # nullptr (CUDA did not start): one line
    flags = 0
    if strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    # TensorRT's own normalization layer for the export's InstanceNormalization ops (models with
    # model.instance_norm), not the InstanceNormalization_TRT plugin: the default since TensorRT
    # 10, set here so that a parser built otherwise cannot ask for a plugin library the line lacks
    parser.set_flag(trt.OnnxParserFlag.NATIVE_INSTANCENORM)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [_parser_error(parser.get_error(i)) for i in range(parser.num_errors)]
        msg = f"{onnx_path}: TensorRT's ONNX parser failed: {' | '.join(errors[:3]) or 'no detail'}"
        raise EngineBuildError(msg)
    return builder, network, parser


def _parser_error(error) -> str:
    """One IParserError as "node (operator): description", as Polygraphy prints it."""
    desc = error.desc() if hasattr(error, "desc") else str(error)
    if hasattr(error, "node_name"):
        return f"{error.node_name()} ({error.node_operator()}): {desc}"
    return desc


def make_progress_monitor(stream=None):
    """A trt.IProgressMonitor that prints phases and, at most every 2 s, step counts.

    Built inside a function so importing this module never needs TensorRT.
    """
    import tensorrt as trt

    base = getattr(trt, "IProgressMonitor", None)
    if base is None:
        return None

    class _Progress(base):
        def __init__(self) -> None:
            base.__init__(self)
            self._start = time.monotonic()
            self._last = 0.0
            self._depth: dict[str, int] = {}
            self._steps: dict[str, int] = {}

        def _print(self, text: str) -> None:
            try:
                print(
                    f"[{time.monotonic() - self._start:6.1f}s] {text}", file=stream or sys.stderr, flush=True
                )
            except (OSError, ValueError) as exc:  # a closed terminal must not abort a build of minutes
                log.debug("progress line lost: %s", exc)

        def phase_start(self, phase_name, parent_phase, num_steps):
            depth = self._depth.get(parent_phase, -1) + 1 if parent_phase else 0
            self._depth[phase_name], self._steps[phase_name] = depth, num_steps
            if depth <= 1:
                self._print(f"{'  ' * depth}{phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name, step):
            now = time.monotonic()
            if self._depth.get(phase_name, 0) <= 1 and now - self._last >= 2.0:
                self._last = now
                indent = "  " * self._depth.get(phase_name, 0)
                self._print(f"{indent}{phase_name}: {step + 1}/{self._steps.get(phase_name, '?')}")
            return True  # False would cancel the build

        def phase_finish(self, phase_name):
            if self._depth.get(phase_name, 0) == 0:
                self._print(f"{phase_name} done")

    return _Progress()


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock beside ``path``: two builds never interleave a timing cache."""
    lock_path = path.with_name(path.name + ".lock")
    with open(lock_path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def builder_config(
    builder,
    network,
    *,
    input_shapes: dict[str, tuple[int, ...]],
    workspace_bytes: int,
    timing_cache: Path | None,
    builder_flag_fp16: bool,
):
    """The IBuilderConfig: workspace, one optimization profile, timing cache, progress, flags,
    and DETAILED profiling verbosity (the layer information records each layer's precision)."""
    import tensorrt as trt

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    profile = builder.create_optimization_profile()
    name = network.get_input(0).name
    profile.set_shape(name, input_shapes["min"], input_shapes["opt"], input_shapes["max"])
    config.add_optimization_profile(profile)
    if builder_flag_fp16:
        # TensorRT 10 only; 11 removed the flag (checked in build_engine before we get here)
        config.set_flag(getattr(trt.BuilderFlag, "FP16"))  # noqa: B009 - getattr: absent in TensorRT 11
    # as `trtexec --profilingVerbosity=detailed`: the engine inspector then names each layer's
    # tensor formats (so its precision); it does not change the kernels chosen
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if timing_cache is not None:
        load_timing_cache(config, timing_cache)
    monitor = make_progress_monitor()
    if monitor is not None:
        config.progress_monitor = monitor
    return config


def load_timing_cache(config, timing_cache: Path) -> bool:
    """Give the build the timing cache in ``timing_cache`` (an empty one when the file is
    missing or was written by another GPU or TensorRT); False when TensorRT takes none.

    As Polygraphy's CreateConfig: ``create_timing_cache`` returns None for a blob this
    TensorRT cannot read, and ``set_timing_cache(cache, ignore_mismatch=False)`` returns
    False for a cache from another device or version; both fall back to an empty cache
    with one warning, and the build goes on.
    """
    cached = b""
    if timing_cache.is_file():
        with locked(timing_cache):
            cached = timing_cache.read_bytes()
    cache = _create_timing_cache(config, cached) if cached else None
    if cached and cache is None:
        log.warning(
            "timing cache %s cannot be read by this TensorRT (another version, or damaged); "
            "starting with an empty one",
            timing_cache,
        )
    if cache is not None and not config.set_timing_cache(cache, ignore_mismatch=False):
        log.warning("timing cache %s is from another GPU/TensorRT, starting empty", timing_cache)
        cache = None
    if cache is None:
        empty = _create_timing_cache(config, b"")
        if empty is None or not config.set_timing_cache(empty, ignore_mismatch=False):
            log.warning("TensorRT gave no empty timing cache; building without one (slower)")
            return False
    return True


def _create_timing_cache(config, data: bytes):
    """``config.create_timing_cache(data)``, None when TensorRT refuses the blob."""
    try:
        return config.create_timing_cache(data)
    except (RuntimeError, TypeError, ValueError) as exc:  # some bindings raise instead of None
        log.debug("create_timing_cache refused %d bytes: %s", len(data), exc)
        return None


def save_timing_cache(config, timing_cache: Path) -> bool:
    """Merge this build's timing cache into ``timing_cache`` and write it, atomically and
    under the lock; False (with a warning) when it could not. Call it after the plan and
    its manifest are saved: a cache is an optimization, never worth an engine.

    As Polygraphy's EngineBytesFromNetwork: under the lock, the cache on disk (another
    build may have grown it since we read it) is combined into ours with
    ``combine(prev, ignore_mismatch=True)``, then ours is written.
    """
    try:
        cache = config.get_timing_cache()
        if cache is None:  # TensorRT returns None when the cache it was given did not fit
            log.warning("TensorRT returned no timing cache; %s is not updated", timing_cache)
            return False
        with locked(timing_cache):
            if timing_cache.is_file():
                previous = _create_timing_cache(config, timing_cache.read_bytes())
                if previous is None:
                    log.warning("timing cache %s is unreadable; replacing it with this build's", timing_cache)
                elif not cache.combine(previous, ignore_mismatch=True):
                    log.warning("could not merge %s into this build's timing cache", timing_cache)
            data = cache.serialize()
            if data is None:
                log.warning("TensorRT could not serialize the timing cache; %s is not updated", timing_cache)
                return False
            tmp = timing_cache.with_name(timing_cache.name + ".tmp")
            with open(tmp, "wb") as handle:
                handle.write(data)
            os.replace(tmp, timing_cache)
    except (OSError, RuntimeError, TypeError, ValueError) as exc:
        log.warning(
            "timing cache %s not written (%s: %s); the engine is saved", timing_cache, type(exc).__name__, exc
        )
        return False
    return True


def build_serialized(builder, network, config, onnx_path: Path):
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        msg = (
            f"{onnx_path}: TensorRT could not build an engine (see its log above); try a larger --workspace "
            "or a smaller --batch max"
        )
        raise EngineBuildError(msg)
    return serialized


def layer_information(logger, serialized) -> str:
    """The engine inspector's JSON for the plan just built ("" when TensorRT gives none).

    As ``trtexec --dumpLayerInfo``: deserialize, ``create_engine_inspector()``,
    ``get_engine_information(LayerInformationFormat.JSON)``. Diagnostics only: any failure
    is a warning, never a lost engine. Runs inside the build's device context.
    """
    import tensorrt as trt

    runtime = engine = inspector = None
    try:
        runtime = trt.Runtime(logger)
        engine = runtime.deserialize_cuda_engine(serialized)
        inspector = engine.create_engine_inspector() if engine is not None else None
        info = inspector.get_engine_information(trt.LayerInformationFormat.JSON) if inspector else None
    except (RuntimeError, TypeError, ValueError, AttributeError) as exc:
        log.warning("no layer information for the new engine (%s: %s)", type(exc).__name__, exc)
        return ""
    finally:
        # inspector, then engine, then the runtime that made it, while the context is current
        del inspector, engine, runtime
    if not info:
        log.warning("TensorRT gave no layer information for the new engine; precisions unknown")
        return ""
    return str(info)


def layers_path(plan_path: Path) -> Path:
    """``engines/x.plan`` -> ``engines/x.plan.layers.json`` (the inspector's JSON)."""
    return plan_path.with_name(plan_path.name + ".layers.json")


def save_engine(serialized, plan_path: Path) -> None:
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = plan_path.with_name(plan_path.name + ".tmp")
    with open(tmp, "wb") as handle:
        handle.write(serialized)
    os.replace(tmp, plan_path)


def engine_manifest(
    *,
    package: ModelPackage,
    machine: MachineInfo,
    plan_path: Path,
    onnx_path: Path,
    precision: str,
    builder_flag_fp16: bool,
    input_name: str,
    shapes: dict[str, tuple[int, ...]],
    workspace_bytes: int,
    build_seconds: float,
    layer_precisions: dict[str, float] | None = None,
) -> EngineManifest:
    versions = {}
    for name in ("lineside", "tensorrt", "pycuda"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return EngineManifest(
        plan_file=plan_path.name,
        model_id=package.model_id,
        precision=precision,
        builder_flag_fp16=builder_flag_fp16,
        strongly_typed=not builder_flag_fp16,
        onnx_file=onnx_path.name,
        onnx_sha256=sha256_file(onnx_path),
        input_name=input_name,
        profiles=[{"input": input_name, **{k: list(v) for k, v in shapes.items()}}],
        tensorrt_version=machine.tensorrt_version,
        cuda_toolkit_version=machine.cuda_toolkit_version,
        cuda_driver_api_version=machine.cuda_driver_api_version,
        nvidia_driver_version=machine.nvidia_driver_version,
        gpu_name=machine.gpu_name,
        compute_capability=machine.compute_capability,
        workspace_bytes=workspace_bytes,
        build_seconds=round(build_seconds, 1),
        created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        tool_versions=versions,
        plan_sha256=sha256_file(plan_path),
        layer_precisions=dict(layer_precisions or {}),
    )


def build_engine_for_package(
    package_dir: str | Path,
    *,
    precision: str = "fp16",
    batch: BatchProfile | None = None,
    workspace_bytes: int = 2 << 30,
    timing_cache: str | Path | None = None,
    builder_flag_fp16: bool = False,
    out: str | Path | None = None,
    device: int = 0,
) -> BuildResult:
    """Build ``precision``'s engine for this GPU into ``PACKAGE/engines/`` and write its manifest."""
    package = ModelPackage.open(package_dir)
    package.verify()  # an engine is built only from a graph as export wrote it
    onnx_path = pick_graph(package, precision, builder_flag_fp16)
    batch = batch or BatchProfile(1, 4, 8)
    machine = probe_machine(device)  # one clear line when TensorRT, pycuda or the GPU is missing
    import tensorrt as trt  # importable: probe_machine checked it

    if builder_flag_fp16 and not hasattr(trt.BuilderFlag, "FP16"):
        msg = (
            f"TensorRT {trt.__version__} has no BuilderFlag.FP16 (removed in 11); "
            "build the strongly typed FP16 graph (drop --builder-flag-fp16)"
        )
        raise EngineBuildError(msg)
    m = package.manifest
    shapes = batch.shapes(m.input.height, m.input.width, m.input.channels, m.input.layout)
    plan_path = Path(out) if out else package.engines_dir / plan_name(machine, precision, batch.max)
    cache_path = Path(timing_cache) if timing_cache else None
    log.info(
        "building %s engine from %s on GPU %d, %s (sm %s), TensorRT %s: batch %s, workspace %.1f GiB, %s, "
        "timing cache %s",
        precision,
        onnx_path.name,
        device,
        machine.gpu_name,
        machine.compute_capability,
        machine.tensorrt_version,
        batch.as_list(),
        workspace_bytes / 2**30,
        "BuilderFlag.FP16" if builder_flag_fp16 else "strongly typed",
        cache_path or "none",
    )
    # TensorRT's builder uses the CUDA runtime, which works in the thread's current driver
    # context: push device N's primary context for the whole build, else it runs on device 0
    # while the manifest records GPU N
    ctx = DeviceContext(device)
    try:
        with ctx:
            return _build_in_context(
                trt,
                package=package,
                machine=machine,
                onnx_path=onnx_path,
                precision=precision,
                builder_flag_fp16=builder_flag_fp16,
                shapes=shapes,
                workspace_bytes=workspace_bytes,
                plan_path=plan_path,
                cache_path=cache_path,
            )
    finally:
        ctx.free()


def _build_in_context(
    trt,
    *,
    package: ModelPackage,
    machine: MachineInfo,
    onnx_path: Path,
    precision: str,
    builder_flag_fp16: bool,
    shapes: dict[str, tuple[int, ...]],
    workspace_bytes: int,
    plan_path: Path,
    cache_path: Path | None,
) -> BuildResult:
    """Parse, build, save plan + layer information + manifest, then the timing cache.

    Every TensorRT object is made and dropped here, while the device's context is current.
    """
    logger = trt.Logger(trt.Logger.WARNING)
    start = time.monotonic()
    builder, network, _parser = network_from_onnx(logger, onnx_path, strongly_typed=not builder_flag_fp16)
    config = builder_config(
        builder,
        network,
        input_shapes=shapes,
        workspace_bytes=workspace_bytes,
        timing_cache=cache_path,
        builder_flag_fp16=builder_flag_fp16,
    )
    serialized = build_serialized(builder, network, config, onnx_path)
    seconds = time.monotonic() - start
    save_engine(serialized, plan_path)
    info = layer_information(logger, serialized)
    shares = precision_shares(info) if info else {}
    if info:
        _write_text(layers_path(plan_path), info)
    else:  # never leave a previous build's layers beside this plan
        layers_path(plan_path).unlink(missing_ok=True)
    manifest = engine_manifest(
        package=package,
        machine=machine,
        plan_path=plan_path,
        onnx_path=onnx_path,
        precision=precision,
        builder_flag_fp16=builder_flag_fp16,
        input_name=network.get_input(0).name,
        shapes=shapes,
        workspace_bytes=workspace_bytes,
        build_seconds=seconds,
        layer_precisions=shares,
    )
    manifest.save(manifest_path(plan_path))
    # only now the cache: a failure there must not cost the engine just built
    if cache_path is not None:
        save_timing_cache(config, cache_path)
    log.info(
        "built %s in %.0f s (%.1f MB); layers: %s",
        plan_path,
        seconds,
        plan_path.stat().st_size / 1e6,
        format_shares(shares),
    )
    return BuildResult(plan_path=plan_path, manifest=manifest)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
