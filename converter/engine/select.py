"""Which engine of a model package fits this machine, and why (``--backend auto``, ``inspect``)."""

from __future__ import annotations

from pathlib import Path

from converter.engine.manifest import (
    EngineManifest,
    EngineManifestError,
    MachineInfo,
    load_engine_manifest,
    mismatches,
)
from converter.package import ModelPackage, sha256_file

#: FP16 first: it is the precision the line is designed around; INT8 passed a looser gate
DEFAULT_PREFERENCE = ("fp16", "int8", "fp32")


def engine_candidates(
    package: ModelPackage, machine: MachineInfo
) -> tuple[list[tuple[Path, EngineManifest]], list[str]]:
    """(engines that fit ``machine``, one reason per engine that does not)."""
    fits, rejected = [], []
    hashes: dict[str, str | None] = {}
    for plan in package.engine_plans():
        try:
            manifest = load_engine_manifest(plan)
        except EngineManifestError as exc:
            rejected.append(str(exc))
            continue
        if manifest.onnx_file not in hashes:
            graph = package.root / manifest.onnx_file
            hashes[manifest.onnx_file] = sha256_file(graph) if graph.is_file() else "missing"
        reasons = mismatches(manifest, machine, hashes[manifest.onnx_file])
        if reasons:
            rejected.append(f"{plan.name}: {'; '.join(reasons)}")
        else:
            fits.append((plan, manifest))
    return fits, rejected


def select_engine(
    package: ModelPackage,
    machine: MachineInfo | None = None,
    prefer: tuple[str, ...] = DEFAULT_PREFERENCE,
    device: int = 0,
) -> tuple[Path | None, str]:
    """The plan to run on this machine, or None, with a one-line reason either way.

    ``machine`` defaults to probing this one (TensorRT, pycuda, GPU); without TensorRT
    the answer is None and the reason says what to install.
    """
    plans = package.engine_plans()
    if machine is None:
        from converter.engine.machine import machine_or_reason

        machine, why = machine_or_reason(device)
        if machine is None:
            have = f" (the package has {len(plans)} engine(s))" if plans else ""
            return None, f"no TensorRT on this machine{have}: {why}"
    if not plans:
        return (
            None,
            f"the package has no TensorRT engine; build one here with `lineside build-engine {package.root}`",
        )
    fits, rejected = engine_candidates(package, machine)
    if not fits:
        here = f"{machine.gpu_name}, sm {machine.compute_capability}, TensorRT {machine.tensorrt_version}"
        return None, (
            f"no engine fits this machine ({here}): {' | '.join(rejected)}; "
            f"rebuild with `lineside build-engine {package.root}`"
        )
    rank = {p: i for i, p in enumerate(prefer)}
    plan, manifest = min(fits, key=lambda pm: (rank.get(pm[1].precision, len(rank)), pm[1].created_at))
    batches = f"batch {manifest.profiles[0]['min'][0]}-{manifest.max_batch}"
    reason = (
        f"{plan.name} ({manifest.precision}, {batches}) was built for this GPU ({machine.gpu_name}, "
        f"sm {machine.compute_capability}) and TensorRT {machine.tensorrt_version} "
        f"from the package's current {manifest.onnx_file}"
    )
    return plan, reason
