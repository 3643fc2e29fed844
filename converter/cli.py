"""``lineside export | build-engine | gate | inspect``: the converter's subcommands.

Only argparse lives here at module level; each handler imports its step when it runs,
so ``lineside --help`` is instant and a line-side box needs neither TensorFlow nor TensorRT.
"""

from __future__ import annotations

import argparse


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        msg = f"must be a positive integer, got {text}"
        raise argparse.ArgumentTypeError(msg)
    return value


def register(sub: argparse._SubParsersAction) -> None:
    """Add the converter's subcommands to the ``lineside`` parser."""
    _register_export(sub)
    _register_build_engine(sub)
    _register_gate(sub)
    _register_inspect(sub)


def _register_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="trained model -> model package (model.onnx + manifest.json), checked against Keras",
        description=(
            "Export a training checkpoint (folder with model.keras + training.json), a .keras file or a "
            "SavedModel to a model package. ONNX Runtime is checked against the source model first. "
            "--precision fp16/int8 adds graphs that must pass their accuracy gate on --data images."
        ),
    )
    p.add_argument("checkpoint", help="checkpoint folder, .keras file or SavedModel folder")
    p.add_argument("--out", required=True, help="model package folder to write")
    p.add_argument("--data", default=None, help="data set folder (DAGM2007 or images/+masks/) for the checks")
    p.add_argument(
        "--model-id",
        default=None,
        help="model id in the manifest (default: the training run's name: the recipe name that "
        "training.json records, else the checkpoint's folder name)",
    )
    p.add_argument(
        "--precision",
        action="append",
        choices=("fp16", "int8"),
        default=[],
        help="also write model.<precision>.onnx behind its accuracy gate (repeatable; needs --data)",
    )
    p.add_argument(
        "--fold", action="store_true", help="also write model.uint8.onnx (uint8 frame in, uint8 mask out)"
    )
    p.add_argument("--samples", type=_positive_int, default=8, help="images for the Keras parity check")
    p.add_argument("--gate-samples", type=_positive_int, default=32, help="images for the FP16/INT8 gates")
    p.add_argument("--calibration-samples", type=_positive_int, default=32, help="INT8 calibration images")
    p.add_argument(
        "--calibration",
        choices=("minmax", "entropy", "percentile"),
        default="minmax",
        help="INT8 calibration method",
    )
    p.add_argument(
        "--int8-target",
        choices=("tensorrt", "onnxruntime"),
        default="tensorrt",
        help="lay the INT8 graph out for TensorRT (symmetric INT8) or for ONNX Runtime on the CPU",
    )
    p.add_argument("--atol", type=float, default=None, help="allowed max |ONNX - Keras| (default: 1e-4)")
    p.add_argument(
        "--no-auto-fp32",
        action="store_true",
        help="refuse an FP16 graph that fails its gate instead of keeping the overflowing nodes in FP32",
    )
    p.add_argument(
        "--height", type=_positive_int, default=None, help="input height when the model does not fix it"
    )
    p.add_argument(
        "--width", type=_positive_int, default=None, help="input width when the model does not fix it"
    )
    p.add_argument("--channels", type=_positive_int, default=None, help="input channels when unknown")
    p.add_argument("--threshold", type=float, default=None, help="override the decision threshold")
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    """Handler of ``lineside export``."""
    from converter.quiet import quiet_tensorflow

    quiet_tensorflow(getattr(args, "verbose", False), own_stderr=True)
    from converter.export import DEFAULT_ATOL, export_package

    package = export_package(
        args.checkpoint,
        args.out,
        data_dir=args.data,
        model_id=args.model_id,
        height=args.height,
        width=args.width,
        channels=args.channels,
        threshold=args.threshold,
        samples=args.samples,
        atol=DEFAULT_ATOL if args.atol is None else args.atol,
        precisions=tuple(dict.fromkeys(args.precision)),
        folded=args.fold,
        gate_samples=args.gate_samples,
        calibration_samples=args.calibration_samples,
        int8_method=args.calibration,
        int8_target=args.int8_target,
        fp16_auto_keep=not args.no_auto_fp32,
    )
    files = ", ".join(f"{k}={v}" for k, v in sorted(package.manifest.files.items()))
    print(f"model package {package.root}: {files}")
    for name, gate in sorted(package.manifest.gates.items()):
        print(f"  {name}: {_gate_line(gate)}")
    return 0


def _gate_line(gate: dict) -> str:
    keys = ("passed", "dice", "agreement", "max_abs_diff", "images", "kept_fp32")
    return ", ".join(f"{k}={gate[k]}" for k in keys if k in gate and gate[k] not in (None, []))


def _register_build_engine(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "build-engine",
        help="model package -> TensorRT engine for this GPU (needs TensorRT and an NVIDIA GPU)",
        description=(
            "Build a TensorRT engine (strongly typed, precision from the FP16/INT8/FP32 graph) into "
            "PACKAGE/engines/ with a manifest of the GPU and versions it is valid for."
        ),
    )
    p.add_argument("package", help="model package folder")
    p.add_argument("--precision", choices=("fp16", "int8", "fp32"), default="fp16", help="graph to build")
    p.add_argument(
        "--batch",
        default="1,4,8",
        metavar="MIN,OPT,MAX",
        help="batch profile min,opt,max; a single number N means 1,N,N",
    )
    p.add_argument("--workspace", default="2GiB", help="builder workspace limit, e.g. 512MiB, 2GiB")
    p.add_argument("--timing-cache", default=None, help="timing cache file, read and updated (default: none)")
    p.add_argument(
        "--builder-flag-fp16",
        action="store_true",
        help="TensorRT 10 only: build the FP32 graph with BuilderFlag.FP16 (not strongly typed)",
    )
    p.add_argument(
        "--out",
        default=None,
        help="plan path (default: PACKAGE/engines/<gpu>-sm<cc>-trt<ver>-b<max>-<precision>.plan)",
    )
    p.add_argument("--device", type=int, default=0, help="CUDA device index to build on")
    p.add_argument(
        "--verify",
        action="store_true",
        help="after building, compare the engine to ONNX Runtime (FP32 and the graph it was built from) "
        "and check its layer precisions",
    )
    p.add_argument(
        "--data", default=None, help="validation images for --verify (default: the manifest's data set)"
    )
    p.add_argument("--verify-samples", type=_positive_int, default=32, help="images for --verify")
    p.set_defaults(func=run_build_engine)


def run_build_engine(args: argparse.Namespace) -> int:
    """Handler of ``lineside build-engine``."""
    from converter.engine.build import build_engine_for_package
    from converter.engine.profiles import parse_batch_profile, parse_size

    result = build_engine_for_package(
        args.package,
        precision=args.precision,
        batch=parse_batch_profile(args.batch),
        workspace_bytes=parse_size(args.workspace),
        timing_cache=args.timing_cache,
        builder_flag_fp16=args.builder_flag_fp16,
        out=args.out,
        device=args.device,
    )
    from converter.engine.layers import format_shares

    print(f"engine {result.plan_path} ({result.manifest.build_seconds:.0f} s)")
    print(f"  layer precisions: {format_shares(result.manifest.layer_precisions)}")
    if args.verify:
        from converter.engine.verify import verify_engine

        report = verify_engine(
            args.package,
            result.plan_path,
            data_dir=args.data,
            samples=args.verify_samples,
            device=args.device,
        )
        print(report.summary())
        return 0 if report.passed else 1
    return 0


def _register_gate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "gate",
        help="gate a backend's precision against ONNX Runtime FP32 and record it in the package",
        description=(
            "Run the backend (OpenVINO: in the precision this box runs fastest, or --precision; "
            "ONNX Runtime: its INT8 graph, or --precision fp16) and ONNX Runtime FP32 on validation "
            "images, compare them with the FP16/INT8 accuracy gate, time both on this CPU and record "
            "the result in manifest.json under gates (e.g. openvino:bf16, onnxruntime:int8). The line "
            "runs only a gated precision; model.precision auto runs ONNX Runtime's INT8 graph where it "
            "passed and was the faster here. "
            "Exit 0 when the gate passed, 1 when it failed."
        ),
    )
    p.add_argument("package", help="model package folder")
    p.add_argument(
        "--backend", choices=("openvino", "onnxruntime"), default="openvino", help="backend to gate"
    )
    p.add_argument("--data", default=None, help="validation images (default: the manifest's data set)")
    p.add_argument("--device", default="CPU", help="OpenVINO device: CPU, GPU or NPU (default CPU)")
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16", "int8", "fp16"),
        default=None,
        help="precision to gate (default: OpenVINO, the one this box runs fastest; ONNX Runtime, int8)",
    )
    p.add_argument("--samples", type=_positive_int, default=32, help="images for the gate (default 32)")
    p.set_defaults(func=run_gate)


def run_gate(args: argparse.Namespace) -> int:
    """Handler of ``lineside gate``."""
    from converter.backend_gate import gate_onnxruntime, gate_openvino

    if args.backend == "onnxruntime":
        report, key = gate_onnxruntime(
            args.package, data_dir=args.data, samples=args.samples, precision=args.precision or "int8"
        )
        name = f"ONNX Runtime {key.split(':')[1].upper()}"
    else:
        report, key = gate_openvino(
            args.package,
            data_dir=args.data,
            samples=args.samples,
            device=args.device,
            precision=args.precision,
        )
        name = "OpenVINO"
    print(report.summary())
    from converter.manifest import ModelManifest

    speed = ModelManifest.load(args.package).gates[key].get("speed")
    if speed:  # interleaved rounds on one batch of the gate images (backend_gate.time_interleaved)
        ort = speed["onnxruntime_fp32_img_per_s"]
        other = next(
            v for k, v in speed.items() if k.endswith("_img_per_s") and not k.startswith("onnxruntime_fp32")
        )
        print(
            f"speed at batch {speed['batch']} on {speed['cpu']}: {name} {other} img/s, "
            f"ONNX Runtime FP32 {ort} img/s ({other / ort:.2f}x)"
        )
    print(f"recorded in {args.package}/manifest.json as gates[{key!r}]")
    return 0 if report.passed else 1


def _register_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="print a model package: manifest, inputs/outputs, engines and which one fits this machine",
    )
    p.add_argument("package", help="model package folder")
    p.set_defaults(func=run_inspect)


def run_inspect(args: argparse.Namespace) -> int:
    """Handler of ``lineside inspect``."""
    from converter.inspect import describe_package

    print(describe_package(args.package))
    return 0
