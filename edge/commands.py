"""``lineside run | worker | keys | bench | demo``: the line-side subcommands."""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

from converter.overrides import add_set_flag

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run a line: cameras, workers, collector (Ctrl-C or SIGTERM stops it)")
    p.add_argument("--config", required=True, help="line config YAML (see configs/demo.yaml)")
    p.add_argument(
        "--duration", type=float, default=0.0, help="stop after this many seconds (0 = run until stopped)"
    )
    p.add_argument("--summary", default=None, help="write the final accounting summary (JSON) here")
    add_set_flag(p, "workers.count=2")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("worker", help="a worker that attaches to a running line (possibly on another box)")
    p.add_argument("--config", required=True, help="the line's config YAML (model and decision settings)")
    p.add_argument(
        "--connect",
        required=True,
        help="the line's work endpoint, e.g. tcp://linebox:5571 (its endpoints.work)",
    )
    p.add_argument(
        "--results",
        required=True,
        help="the line's results endpoint, e.g. tcp://linebox:5572 (its endpoints.results)",
    )
    p.add_argument("--index", type=int, default=0, help="worker number, for names in logs")
    p.add_argument(
        "--connect-timeout",
        type=float,
        default=60.0,
        help="give up when no line has answered within this many seconds",
    )
    p.add_argument(
        "--keys",
        default=None,
        help="CURVE keys folder on this box (the line's server.key and this worker's client pair; "
        "docs/security.md); default: the config's security.keys",
    )
    p.add_argument("--client", default=None, help="the client pair of --keys to use (keys/clients/NAME)")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser(
        "keys",
        help="make CURVE keys for a line (docs/security.md)",
        description=(
            "Without --client/--subscriber: the line's keys (server.key, server.key_secret and the "
            "line's own client pair, authorized). With them: client pairs in DIR/clients/, authorized "
            "at once when DIR holds the line's secret, else to be copied to the line box. "
            "Secret files are 0600; existing keys are never replaced without --force."
        ),
    )
    p.add_argument("dir", help="keys folder, e.g. /etc/lineside/keys")
    p.add_argument(
        "--client", action="append", default=[], metavar="NAME", help="a client that may join the line"
    )
    p.add_argument(
        "--subscriber",
        action="append",
        default=[],
        metavar="NAME",
        help="a client that may only subscribe to the publish endpoint",
    )
    p.add_argument("--force", action="store_true", help="replace existing keys")
    p.set_defaults(func=cmd_keys)

    p = sub.add_parser(
        "bench",
        help="backends side by side on a model package; --pipeline: the whole line against the bare backend",
    )
    p.add_argument("package", help="model package folder")
    p.add_argument(
        "--backends",
        default=None,
        help="comma-separated, first row is the ratios' base (default: all of "
        "onnxruntime:fp32,onnxruntime:fp16,onnxruntime:int8,openvino,opencv,keras,tensorrt; "
        "those that cannot run here are listed with the reason); BACKEND@FOLDER runs it on the "
        "package in FOLDER: one model against another on the same images",
    )
    p.add_argument(
        "--backend",
        default=None,
        choices=("onnxruntime", "tensorrt", "openvino"),
        help="one backend only (with --precision); with --pipeline, the line's backend (default onnxruntime)",
    )
    p.add_argument(
        "--precision",
        default="fp32",
        choices=("fp32", "fp16", "int8"),
        help="with --backend onnxruntime: the graph's precision",
    )
    p.add_argument("--keras", default=None, metavar="MODEL.keras", help="the Keras model for the keras row")
    p.add_argument("--batch", default=None, help="comma-separated batch sizes (default 1,4,8; --pipeline: 8)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds per batch size")
    p.add_argument(
        "--seconds",
        type=float,
        default=5.0,
        help="time per backend and batch size, split over the rounds; --pipeline: measured time per cell",
    )
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0 = all cores)")
    p.add_argument(
        "--json", default=None, metavar="FILE", help="also write the report here (edge/bench_schema.json)"
    )
    p.add_argument("--plot", default=None, metavar="FILE.png", help="also plot it (needs matplotlib)")
    p.add_argument(
        "--pipeline",
        action="store_true",
        help="run the whole line (cameras to collector) per worker count and batch size, "
        "against the bare backend",
    )
    p.add_argument(
        "--null",
        action="store_true",
        help="--pipeline with a near-free graph of the package's I/O: the plumbing alone",
    )
    p.add_argument("--cameras", type=int, default=2, help="--pipeline: synthetic cameras")
    p.add_argument("--workers", default="1,2", help="--pipeline: comma-separated worker counts")
    p.add_argument("--warmup", type=float, default=5.0, help="--pipeline: seconds before measuring each cell")
    p.add_argument(
        "--fps",
        type=float,
        default=0.0,
        help="--pipeline: frames per second per camera (0 = 1.5x what the bare backend takes: saturated); "
        "a low rate with --null measures the transport hop (the queue stage)",
    )
    p.set_defaults(func=cmd_bench)

    register_demo(sub)


def register_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="the README demo: synthesize data, train, export, then run the line on it",
        description=(
            "Each step is skipped when its output already exists in --workdir, so a second run "
            "goes straight to the line. Delete the folder (or pass --fresh) to start over."
        ),
    )
    p.add_argument("--workdir", default=".lineside-demo", help="where data, checkpoint and package go")
    p.add_argument("--config", default="configs/demo.yaml", help="line config to run")
    p.add_argument("--train-config", default="configs/train/demo.yaml", help="training recipe")
    p.add_argument("--duration", type=float, default=45.0, help="seconds to run the line")
    p.add_argument("--fresh", action="store_true", help="redo every step")
    p.add_argument(
        "--ui-port",
        type=int,
        default=8080,
        help="port of the operators' page beside the line, a free one when busy (0 = none; default: 8080)",
    )
    p.set_defaults(func=cmd_demo)


def cmd_run(args: argparse.Namespace) -> int:
    from edge.config import load_config
    from edge.supervisor import Supervisor

    cfg = load_config(args.config, args.set)
    return Supervisor(cfg, duration=args.duration, summary_path=args.summary).run()


def check_endpoint_flag(flag: str, value: str, key: str) -> str:
    """``value`` if ZeroMQ can connect to it, else a ConfigError that names the flag (not the
    config, which the flag replaces) and the line's config key it must match."""
    import zmq

    from edge.config import ConfigError

    scheme, _, address = value.partition("://")
    host, _, port = address.rpartition(":")
    tcp_ok = scheme == "tcp" and host != "" and port.isdigit() and 0 < int(port) < 65536
    if not (scheme == "ipc" and address) and not tcp_ok:
        msg = f"{flag} {value}: must be tcp://HOST:PORT (or ipc://PATH on the line's box), the line's {key}"
        raise ConfigError(msg)
    ctx = zmq.Context()
    probe = ctx.socket(zmq.DEALER)
    try:
        probe.connect(value)  # checks the address's form; a tcp peer is only looked for later
    except zmq.ZMQError as exc:
        why = zmq.strerror(exc.errno)
        msg = f"{flag} {value}: not an endpoint ZeroMQ can connect to ({why}); give the line's {key}"
        raise ConfigError(msg) from None
    finally:
        probe.close(linger=0)
        ctx.term()
    return value


def cmd_worker(args: argparse.Namespace) -> int:
    from edge.config import load_config, to_dict
    from edge.worker import worker_main

    endpoints = {
        "work": check_endpoint_flag("--connect", args.connect, "endpoints.work"),
        "results": check_endpoint_flag("--results", args.results, "endpoints.results"),
    }
    cfg = load_config(args.config)
    if args.keys:
        # The folder on this box, not the line box's path that the config may name.
        cfg.security.keys = os.path.abspath(args.keys)
    if args.client:
        cfg.security.client = args.client
    worker_main(
        to_dict(cfg),
        args.index,
        logging.getLogger().getEffectiveLevel(),
        endpoints,
        connect_timeout_s=args.connect_timeout,
    )
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from pathlib import Path

    from edge.keys import make_client_keys, make_line_keys

    folder = Path(args.dir)
    made = []
    if not args.client and not args.subscriber:
        made += make_line_keys(folder, force=args.force)
    for name in args.client:
        made += make_client_keys(folder, name, force=args.force)
    for name in args.subscriber:
        made += make_client_keys(folder, name, subscriber=True, force=args.force)
    for line in made:
        print(line)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from edge import bench

    def ints(text: str) -> list[int]:
        return [int(b) for b in text.split(",") if b.strip()]

    if args.pipeline or args.null:
        bench.bench_pipeline(
            args.package,
            args.cameras,
            ints(args.workers),
            ints(args.batch or "8"),
            args.seconds,
            args.threads,
            json_path=args.json,
            null=args.null,
            backend=args.backend or "onnxruntime",
            rounds=args.rounds,
            warmup_s=args.warmup,
            plot_path=args.plot,
            fps=args.fps,
        )
        return 0
    if args.backends:
        specs = [b.strip() for b in args.backends.split(",") if b.strip()]
    elif args.backend:
        specs = [f"onnxruntime:{args.precision}" if args.backend == "onnxruntime" else args.backend]
    else:
        specs = list(bench.BACKENDS)
    report = bench.bench_backends(
        args.package, specs, ints(args.batch or "1,4,8"), args.rounds, args.seconds, args.threads, args.keras
    )
    if args.json:
        bench.write_json(report, args.json)
    if args.plot:
        bench.write_plot(report, args.plot)
    if not report["rows"]:
        log.error("none of %s can run here (reasons above)", ", ".join(specs))
        return 1
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Run each step as its own ``lineside`` process: the line side never imports TensorFlow."""
    import contextlib
    import shutil
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    work = Path(args.workdir)
    if args.fresh and work.exists():
        shutil.rmtree(work)
    data, ckpt, package = work / "data", work / "checkpoint", work / "package"
    root = f"dataset.root={data}"
    steps = [
        (
            "synthesize a DAGM-like data set",
            data / "Class1" / "Test",
            ["synth", str(data), "--classes", "1", "--n-train", "120", "--n-test", "60"],
        ),
        (
            "train TinyUNet on it",
            ckpt / "training.json",
            ["train", args.train_config, "-o", str(ckpt), "--set", "dataset.kind=dagm", "--set", f"{root}"],
        ),
        (
            "export the model package (ONNX checked against Keras)",
            package / "manifest.json",
            ["export", str(ckpt), "--out", str(package), "--data", str(data)],
        ),
    ]
    # each step logs as this command was asked to (-v / -q)
    verbosity = [flag for flag, on in (("-v", "verbose"), ("-q", "quiet")) if getattr(args, on, False)]
    lineside = [sys.executable, "-m", "edge.cli", *verbosity]
    # train and export keep TensorFlow's C++ chatter out themselves (converter.quiet)
    for title, done_marker, argv in steps:
        if done_marker.exists():
            print(f"== {title}: cached ({done_marker.parent})", flush=True)
            continue
        print(f"== {title}: lineside {' '.join(argv)}", flush=True)
        start = time.monotonic()
        code = subprocess.call(lineside + argv)
        if code != 0:
            print(f"lineside demo: step failed ({title}), exit code {code}", file=sys.stderr)
            return code
        print(f"== {title}: done in {time.monotonic() - start:.0f} s", flush=True)
    # The line runs on the package and writes the sinks of this work folder, whatever the
    # config's own paths say (they name the default folder).
    runs = (work / "runs").resolve()
    overrides = [
        "--set",
        f"model.package={package.resolve()}",
        "--set",
        f"sinks.decision_log={runs / 'decisions.sqlite'}",
        "--set",
        f"sinks.ng_store={runs / 'ng'}",
    ]
    run = ["run", "--config", args.config, "--duration", str(args.duration)]
    run += ["--summary", str(runs / "summary.json"), *overrides]
    ui = start_demo_ui(lineside, args.config, overrides, args.ui_port) if args.ui_port else None
    print(f"== run the line for {args.duration:.0f} s: lineside {' '.join(run)}", flush=True)
    line = subprocess.Popen([*lineside, *run])
    interrupted: list[int] = []

    def on_ctrl_c(*_: Any) -> None:
        # Ctrl-C stops the line, which drains first; a flag, not an exception, so that a line
        # that exits at the same moment cannot make the interrupted demo report success
        interrupted.append(1)
        with contextlib.suppress(OSError):
            line.send_signal(signal.SIGINT)  # also when only the demo got it (kill -INT)

    previous = signal.signal(signal.SIGINT, on_ctrl_c)
    try:
        code = line.wait()
    finally:
        signal.signal(signal.SIGINT, previous)
        if ui is not None:
            stop_process(ui)
    return 130 if interrupted else code


def start_demo_ui(lineside: list[str], config: str, overrides: list[str], port: int) -> Any:
    """`lineside ui` for the demo line, as its own process (the line never waits for it)."""
    import socket
    import subprocess

    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            probe.bind(("127.0.0.1", 0))
            print(f"== port {port} is busy: the page takes port {probe.getsockname()[1]}", flush=True)
            port = probe.getsockname()[1]
    argv = ["ui", "--config", config, "--port", str(port), *overrides]
    proc = subprocess.Popen([*lineside, *argv])
    print(f"== the operators' page: http://127.0.0.1:{port}/ (lineside {' '.join(argv)})", flush=True)
    return proc


def stop_process(proc: Any, timeout_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL past ``timeout_s``."""
    import subprocess

    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
