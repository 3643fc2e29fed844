"""``lineside ui``: the subcommand. Starlette and uvicorn are imported when it runs."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from converter.errors import LinesideError
from converter.overrides import add_set_flag

#: where ``--user`` finds its password when ``--password-file`` is not given
PASSWORD_ENV = "LINESIDE_UI_PASSWORD"


class UiError(LinesideError):
    """``lineside ui`` cannot start as asked (exposed without a password, a busy port, ...)."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ui",
        help="the operators' web page of a line, and POST /v1/inspect (docs/ui.md)",
        description=(
            "A separate process beside a running line: it subscribes to the line's publish socket, "
            "reads its decision log and NG store read-only and polls its /readyz. Binds 127.0.0.1 "
            f"unless --host says otherwise; then --user is required, with the password in ${PASSWORD_ENV} "
            "or --password-file (never on the command line)."
        ),
    )
    p.add_argument("--config", required=True, help="the line's config YAML")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="HTTP port (default: 8080)")
    p.add_argument(
        "--user",
        default=None,
        help="basic-auth user name; required when --host is not loopback (default: none, no authentication)",
    )
    p.add_argument(
        "--password-file",
        default=None,
        help=f"file holding the basic-auth password (default: the ${PASSWORD_ENV} environment variable)",
    )
    p.add_argument(
        "--max-upload-mb",
        type=float,
        default=32.0,
        help="largest image POST /v1/inspect takes, MB; larger gets 413",
    )
    p.add_argument(
        "--threads", type=int, default=1, help="ONNX Runtime threads of the inspection API (default: 1)"
    )
    add_set_flag(p, "cameras[0].fps=5")
    p.set_defaults(func=cmd_ui)


def read_auth(args: argparse.Namespace) -> tuple[str, str] | None:
    """(user, password) from --user and --password-file or the environment; None without --user."""
    from edge.config import is_loopback

    if not args.user:
        if not is_loopback(args.host):
            msg = (
                f"--host {args.host} would open the page and the API to the network without a password; "
                f"give --user NAME with the password in ${PASSWORD_ENV} or --password-file, or keep 127.0.0.1"
            )
            raise UiError(msg)
        return None
    if args.password_file:
        try:
            password = Path(args.password_file).read_text().strip()
        except OSError as exc:
            raise UiError(f"--password-file {args.password_file}: {exc.strerror}") from None
        where = f"--password-file {args.password_file}"
    else:
        password = os.environ.get(PASSWORD_ENV, "")
        where = f"${PASSWORD_ENV}"
    if not password:
        raise UiError(f"--user {args.user}: {where} is empty; put the password there")
    return args.user, password


def cmd_ui(args: argparse.Namespace) -> int:
    import socket

    from edge.config import load_config

    cfg = load_config(args.config, args.set)
    auth = read_auth(args)
    if args.max_upload_mb <= 0:
        raise UiError(f"--max-upload-mb {args.max_upload_mb:g}: give a positive size")
    # a busy port is one line before anything is loaded
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    with socket.socket(family) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((args.host, args.port))
        except OSError as exc:
            raise UiError(
                f"cannot serve on {args.host}:{args.port}: {exc.strerror}; pick another --port"
            ) from None

    import uvicorn

    from edge.ui.inspect_api import ModelSlot
    from edge.ui.server import build_app
    from edge.ui.state import LineState

    model = ModelSlot(cfg, threads=args.threads)
    state = LineState(cfg).start()
    app = build_app(state, model, int(args.max_upload_mb * (1 << 20)), auth)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(
        f"lineside ui: http://{host}:{args.port}/ (line {cfg.name}, publish {cfg.endpoints.publish})",
        flush=True,
    )
    try:
        uvicorn.run(
            app,
            host=args.host,
            port=args.port,
            log_level="warning",
            timeout_graceful_shutdown=2,
            access_log=False,
        )
    finally:
        state.close()
        model.close()
    return 0
