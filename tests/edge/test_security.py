"""CURVE on the line's tcp endpoints (docs/security.md): `lineside keys` makes the keys, a
line with `security.keys` decides frames with local and remote workers that hold authorized
keys, and nothing without one gets in: no frames to a stranger's worker, no results to a
plain subscriber, no forged result into the line. A line never listens to the network
unauthenticated unless its config says `insecure: true`, and then it says so at every start."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
import zmq
import zmq.auth

from edge import sockets
from edge.config import ConfigError, open_endpoints, parse_config
from edge.keys import CurveKeys
from tests.conftest import MODEL_SIZE
from tests.edge.daemon import ROOT, Daemon, Subscriber, free_port, line_config, synthetic_camera


def lineside(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edge.cli", *argv], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def curve_of(box: Path, client: str) -> tuple[bytes, bytes, bytes]:
    """(server public, client public, client secret) of a keys folder, for a hand-made socket."""
    server, _ = zmq.auth.load_certificate(box / "server.key")
    public, secret = zmq.auth.load_certificate(box / "clients" / f"{client}.key_secret")
    return server, public, secret


def client_box(line_keys: Path, box: Path, name: str, allow: str = "") -> Path:
    """Another box's keys, made as docs/security.md says: its own client pair, the line's
    public server key copied in, and its public key copied into the line's ``allow`` folder
    (authorized, subscribers; empty: nowhere). Only public keys cross between the folders."""
    done = lineside("keys", str(box), "--subscriber" if allow == "subscribers" else "--client", name)
    assert done.returncode == 0, done.stderr
    shutil.copy(line_keys / "server.key", box / "server.key")
    if allow:
        shutil.copy(box / "clients" / f"{name}.key", line_keys / allow / f"{name}.key")
    return box


# -- lineside keys --------------------------------------------------------------------------------
def test_keys_makes_loadable_pairs_with_private_secrets_and_never_overwrites(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    done = lineside("keys", str(keys))
    assert done.returncode == 0, done.stderr
    server_public, server_secret = zmq.auth.load_certificate(keys / "server.key_secret")
    assert zmq.auth.load_certificate(keys / "server.key") == (server_public, None)
    assert server_secret is not None and len(server_secret) == 40
    line_public, line_secret = zmq.auth.load_certificate(keys / "clients" / "line.key_secret")
    assert line_secret is not None
    # The line's own client is authorized; the folder and every secret are the owner's only.
    assert zmq.auth.load_certificate(keys / "authorized" / "line.key")[0] == line_public
    assert mode(keys) == 0o700
    secrets = sorted(keys.rglob("*.key_secret"))
    assert len(secrets) == 2 and all(mode(p) == 0o600 for p in secrets), [(p, oct(mode(p))) for p in secrets]
    assert not list(keys.glob(".new-*")), "no temporary folder left behind"

    # Again: refused in one line, nothing changed.
    before = {p: p.read_bytes() for p in keys.rglob("*") if p.is_file()}
    again = lineside("keys", str(keys))
    assert again.returncode == 2
    assert again.stderr.strip().count("\n") == 0 and "--force" in again.stderr, again.stderr
    assert "server.key exists" in again.stderr
    assert {p: p.read_bytes() for p in keys.rglob("*") if p.is_file()} == before

    # A client: made beside the line's keys (the folder holds the server secret), so authorized.
    done = lineside("keys", str(keys), "--client", "gpu1", "--subscriber", "mes")
    assert done.returncode == 0, done.stderr
    gpu1 = zmq.auth.load_certificate(keys / "clients" / "gpu1.key_secret")
    assert zmq.auth.load_certificate(keys / "authorized" / "gpu1.key")[0] == gpu1[0]
    mes = zmq.auth.load_certificate(keys / "clients" / "mes.key_secret")
    assert zmq.auth.load_certificate(keys / "subscribers" / "mes.key")[0] == mes[0]
    assert not (keys / "authorized" / "mes.key").exists(), "a subscriber may not join the line"
    assert mode(keys / "clients" / "gpu1.key_secret") == 0o600
    refused = lineside("keys", str(keys), "--client", "gpu1")
    assert refused.returncode == 2 and "gpu1.key exists" in refused.stderr, refused.stderr
    assert zmq.auth.load_certificate(keys / "clients" / "gpu1.key_secret") == gpu1
    bad_name = lineside("keys", str(keys), "--client", "../evil")
    assert bad_name.returncode == 2 and "not usable" in bad_name.stderr, bad_name.stderr

    # --force replaces the server pair (and only when asked).
    forced = lineside("keys", str(keys), "--force")
    assert forced.returncode == 0, forced.stderr
    assert zmq.auth.load_certificate(keys / "server.key")[0] != server_public
    assert zmq.auth.load_certificate(keys / "authorized" / "gpu1.key")[0] == gpu1[0]

    # On another box (no server secret there): only the pair, to be copied by hand.
    box = tmp_path / "gpu-box"
    done = lineside("keys", str(box), "--client", "gpu2")
    assert done.returncode == 0, done.stderr
    assert (box / "clients" / "gpu2.key_secret").is_file() and not (box / "authorized").exists()
    assert "authorized/gpu2.key" in done.stdout, done.stdout


# -- the sockets themselves -------------------------------------------------------------------------
def test_curve_sockets_let_in_only_the_keys_of_their_folder(tmp_path: Path) -> None:
    """edge.sockets with real CURVE sockets: an authorized client gets through; a stranger's
    key, a plain socket and a subscriber key (on a socket that takes results in) do not; a
    subscriber key may read the PUB socket; a key copied in later is accepted without restart."""
    keys_dir = tmp_path / "keys"
    assert lineside("keys", str(keys_dir)).returncode == 0
    assert lineside("keys", str(keys_dir), "--client", "gpu1", "--subscriber", "mes").returncode == 0
    stranger = tmp_path / "stranger"
    assert lineside("keys", str(stranger), "--client", "late").returncode == 0
    shutil.copy(keys_dir / "server.key", stranger / "server.key")
    line = CurveKeys(keys_dir)
    ctx, cctx = zmq.Context(), zmq.Context()
    pull = sockets.make_socket(ctx, zmq.PULL, rcvtimeo_ms=1500)
    pub = sockets.make_socket(ctx, zmq.PUB)
    # CURVE servers, as sockets.bind makes them, on ports ZeroMQ picks at bind (no race)
    sockets.secure_server(pull, line)
    sockets.secure_server(pub, line)
    inbox = f"tcp://127.0.0.1:{pull.bind_to_random_port('tcp://127.0.0.1')}"
    board = f"tcp://127.0.0.1:{pub.bind_to_random_port('tcp://127.0.0.1')}"
    opened: list[zmq.Socket] = [pull, pub]

    def pusher(keys: CurveKeys | None) -> zmq.Socket:
        sock = sockets.make_socket(cctx, zmq.PUSH, linger_ms=0)
        sockets.connect(sock, inbox, keys)
        opened.append(sock)
        return sock

    def delivered(keys: CurveKeys | None, tag: bytes) -> bool:
        pusher(keys).send(tag)
        try:
            return pull.recv() == tag
        except zmq.Again:
            return False

    try:
        assert delivered(CurveKeys(keys_dir, "gpu1"), b"gpu1"), "an authorized client"
        assert not delivered(None, b"plain"), "a plain socket"
        assert not delivered(CurveKeys(stranger), b"stranger"), "a key not in authorized/"
        assert not delivered(CurveKeys(keys_dir, "mes"), b"mes"), "a subscriber key on a results socket"
        # The subscriber key may read what the line publishes.
        sub = sockets.make_socket(cctx, zmq.SUB, rcvtimeo_ms=200)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sockets.connect(sub, board, CurveKeys(keys_dir, "mes"))
        opened.append(sub)
        got = None
        for _ in range(25):
            pub.send(b"decision")
            try:
                got = sub.recv()
                break
            except zmq.Again:
                pass
        assert got == b"decision"
        # Authorized later: accepted at the stranger's next attempt, no restart.
        shutil.copy(stranger / "clients" / "late.key", keys_dir / "authorized" / "late.key")
        assert delivered(CurveKeys(stranger), b"late"), "a key authorized while the socket runs"
    finally:
        for sock in opened:
            sock.close(linger=0)
        cctx.term()
        started = time.monotonic()
        sockets.close_all(ctx)  # stops the ZAP handler: term() must not hang on it
        assert time.monotonic() - started < 5


def test_the_protocol_page_snippet_subscribes_with_a_client_key(tmp_path: Path) -> None:
    """The pyzmq snippet of docs/protocol.md, run as written against a CURVE publish socket."""
    doc = (ROOT / "docs" / "protocol.md").read_text()
    section = doc[doc.index("## Authentication (CURVE)") :]
    snippet = section[section.index("```python") + len("```python") : section.index("```\n\n")]
    line_dir, box = tmp_path / "line", tmp_path / "keys"
    assert lineside("keys", str(line_dir)).returncode == 0
    client_box(line_dir, box, "mes", "subscribers")
    ctx = zmq.Context()
    pub = sockets.make_socket(ctx, zmq.PUB)
    sockets.secure_server(pub, CurveKeys(line_dir))  # a CURVE server, as sockets.bind makes it
    board = f"tcp://127.0.0.1:{pub.bind_to_random_port('tcp://127.0.0.1')}"
    cwd = os.getcwd()
    os.chdir(tmp_path)  # the snippet reads keys/... relative to where it runs
    scope: dict = {}
    try:
        exec(snippet.replace("tcp://linebox:5570", board), scope)
        sub = scope["sub"]
        sub.setsockopt(zmq.RCVTIMEO, 200)
        got = None
        for _ in range(25):
            pub.send_multipart([b"result.cam1", b"{}", b""])
            with contextlib.suppress(zmq.Again):
                got = sub.recv_multipart()
                break
        assert got == [b"result.cam1", b"{}", b""]
    finally:
        os.chdir(cwd)
        if "sub" in scope:
            scope["sub"].close(0)
        pub.close(0)
        sockets.close_all(ctx)


# -- the line refuses to listen to the network without keys --------------------------------------------
@pytest.mark.parametrize(
    ("over", "names"),
    [
        ({"endpoints": {"work": "tcp://0.0.0.0:{port}"}}, "endpoints.work (tcp://0.0.0.0:"),
        ({"endpoints": {"publish": "tcp://*:{port}"}}, "endpoints.publish (tcp://*:"),
        ({"metrics": {"host": "0.0.0.0"}}, "metrics.host is '0.0.0.0'"),
    ],
    ids=["work-0.0.0.0", "publish-star", "metrics-0.0.0.0"],
)
def test_a_line_open_to_the_network_without_keys_does_not_start(
    tmp_path: Path, over: dict, names: str
) -> None:
    over = json.loads(json.dumps(over).replace("{port}", str(free_port())))
    cfg = line_config(tmp_path, tmp_path / "no-package-needed", [synthetic_camera("cam1", size=64)])
    for section, values in over.items():
        cfg[section].update(values)
    path = tmp_path / "line.yaml"
    path.write_text(yaml.safe_dump(cfg))
    done = lineside("run", "--config", str(path), "--duration", "5", timeout=30)
    assert done.returncode == 2, done.stderr
    # One line, before anything started (no process logged a word).
    assert done.stdout == "" and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"lineside: error: {path}: ") and names in done.stderr, done.stderr
    assert "security." in done.stderr, done.stderr


@pytest.mark.parametrize(
    ("host", "opens"),
    [
        ("127.0.0.1", False),
        ("127.0.0.2", False),
        ("localhost", False),
        ("[::1]", False),
        ("0.0.0.0", True),
        ("*", True),
        ("192.168.1.20", True),
        ("eth0", True),
        ("[::]", True),
        ("linebox.plant.local", True),
    ],
)
def test_which_bind_addresses_are_the_network(host: str, opens: bool) -> None:
    base = {"cameras": [{"id": "cam1"}], "endpoints": {"results": f"tcp://{host}:5572"}}
    if opens:
        with pytest.raises(ConfigError, match=r"endpoints\.results .* would accept anyone on the network"):
            parse_config(base, "line.yaml")
    else:
        parse_config(base, "line.yaml")
    # Keys make any address acceptable; so does insecure (the supervisor then warns).
    assert parse_config({**base, "security": {"keys": "keys"}}, "line.yaml")
    cfg = parse_config({**base, "security": {"insecure": True}}, "line.yaml")
    assert open_endpoints(cfg) == ([f"endpoints.results (tcp://{host}:5572)"] if opens else [])


def test_a_line_whose_keys_are_missing_or_readable_by_others_does_not_start(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    cfg = line_config(tmp_path, tmp_path / "no-package-needed", [synthetic_camera("cam1", size=64)])
    cfg["security"] = {"keys": str(keys)}
    path = tmp_path / "line.yaml"
    path.write_text(yaml.safe_dump(cfg))
    done = lineside("run", "--config", str(path), timeout=30)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert f"{keys}/server.key_secret not found" in done.stderr and "lineside keys" in done.stderr
    assert lineside("keys", str(keys)).returncode == 0
    os.chmod(keys / "server.key_secret", 0o644)
    done = lineside("run", "--config", str(path), timeout=30)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "readable by others" in done.stderr and "chmod 600" in done.stderr, done.stderr


# -- real lines ------------------------------------------------------------------------------------------
def forge_pass(endpoint: str, cam: str, seconds: float = 3.0) -> None:
    """A plain PUSH socket on the results endpoint sends a PASS no worker decided, again and
    again for ``seconds`` (as an attacker on the network would)."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    end = time.monotonic() + seconds
    seq = 0  # from 0: a gap in the forged epoch would count frames in flight
    while time.monotonic() < end:
        now = time.time()
        header = {
            "t": "result",
            "cam": cam,
            "epoch": 1,
            "seq": seq,
            "ts": now,
            "decided_ts": now,
            "decision": "PASS",
            "reason": "forged",
            "defect_area": 0,
            "defect_count": 0,
            "boxes": [],
            "model_id": "forged",
            "worker": "forger",
            "backend": "onnxruntime",
            "latency_ms": {},
            "truth": None,
            "tag": "0" * 32,  # a frame tag it cannot make: only the line's processes hold the key
        }
        with contextlib.suppress(zmq.Again):  # a line that refuses us holds nothing for us
            sock.send_multipart([json.dumps(header).encode(), b""], zmq.NOBLOCK)
        seq += 1
        time.sleep(0.1)
    sock.close(0)
    ctx.term()


def forged_in_log(cfg: dict) -> int:
    with sqlite3.connect(cfg["sinks"]["decision_log"]) as db:
        return db.execute("SELECT count(*) FROM decisions WHERE worker_id = 'forger'").fetchone()[0]


def decided_in_log(cfg: dict) -> int:
    with sqlite3.connect(cfg["sinks"]["decision_log"]) as db:
        return db.execute("SELECT count(*) FROM decisions").fetchone()[0]


def remote_worker(cfg: dict, tmp: Path, keys: Path, index: int, timeout_s: float) -> subprocess.Popen:
    """`lineside worker --keys` with a config of its own that names no keys (another box)."""
    config = tmp / f"worker{index}.yaml"
    config.write_text(yaml.safe_dump({k: v for k, v in cfg.items() if k != "security"}))
    argv = [
        *(sys.executable, "-m", "edge.cli", "worker", "--config", str(config)),
        *("--connect", cfg["endpoints"]["work"], "--results", cfg["endpoints"]["results"]),
        *("--keys", str(keys), "--index", str(index), "--connect-timeout", str(timeout_s)),
    ]
    return subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_a_line_with_keys_serves_its_clients_and_nobody_else(line_package: Path, tmp_path: Path) -> None:
    keys = tmp_path / "line-keys"
    assert lineside("keys", str(keys)).returncode == 0
    gpu_box = client_box(keys, tmp_path / "gpu-box", "gpu1", "authorized")
    mes_box = client_box(keys, tmp_path / "mes-box", "mes", "subscribers")
    rogue_box = client_box(keys, tmp_path / "rogue-box", "rogue")
    cams = [synthetic_camera("cam1", size=MODEL_SIZE, fps=10, seed=31)]
    # Every endpoint tcp: the local worker and the camera are CURVE clients too.
    cfg = line_config(tmp_path, line_package, cams, security={"keys": str(keys)})
    mes = Subscriber(cfg["endpoints"]["publish"], curve=curve_of(mes_box, "mes")).start()
    plain = Subscriber(cfg["endpoints"]["publish"]).start()
    example = subprocess.Popen(
        [sys.executable, "examples/subscriber.py", cfg["endpoints"]["publish"], "--keys", str(mes_box)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    daemon = Daemon(cfg, tmp_path).start()
    remote = remote_worker(cfg, tmp_path, gpu_box, 7, 60)
    rogue = remote_worker(cfg, tmp_path, rogue_box, 9, 12)
    try:
        workers = lambda s: {r["worker"].rsplit("-", 1)[0][-3:] for r in s.results}  # noqa: E731
        assert mes.wait_for(lambda s: {"-w0", "-w7"} <= workers(s), 120), (workers(mes), daemon.output())
        rogue_out = rogue.communicate(timeout=60)[0]
        forge_pass(cfg["endpoints"]["results"], "cam1")
        time.sleep(1)
    finally:
        daemon.terminate()
        code = daemon.wait(60)
        remote.terminate()
        remote_out = remote.communicate(timeout=30)[0]
        rogue.kill()
        example.terminate()
        example_out = example.communicate(timeout=10)[0]
        mes.wait_for(lambda s: any(st.get("final") for st in s.statuses), 5)
        mes.close()
        plain.close()
    assert code == 0, daemon.output()
    assert remote.returncode == 0, remote_out
    # docs/security.md step 6: the example subscriber with the subscriber box's keys.
    assert "cam1#" in example_out and ("PASS" in example_out or "FAIL" in example_out), example_out
    # The worker whose key is not authorized got no frame, and gave up saying where to look.
    assert "-w9-" not in json.dumps(mes.results)
    assert rogue.returncode == 2, rogue_out
    assert "authorized folder" in rogue_out.strip().splitlines()[-1], rogue_out
    assert "refused a CURVE client" in daemon.output() and "is not in" in daemon.output()
    # A plain subscriber heard nothing; the forged PASS reached neither subscribers nor the log.
    assert plain.results == [] and plain.statuses == []
    assert not [r for r in mes.results if r["worker"] == "forger"]
    assert decided_in_log(cfg) >= len(mes.results) > 0
    assert forged_in_log(cfg) == 0
    # CURVE refused it at the door: the collector never even saw it (on an insecure line it
    # does, and refuses it for want of a frame tag: the test below).
    assert daemon.summary()["rejected"]["results"]["unauthenticated"] == 0


@pytest.mark.slow
def test_an_insecure_line_starts_says_so_and_takes_anything(line_package: Path, tmp_path: Path) -> None:
    """`insecure: true` binds 0.0.0.0 without keys and warns naming the open endpoints; the
    same plain subscriber as above then gets every result, and the forged PASS reaches the
    collector (the checks above can fail), where only the frame tag stops it."""
    work, results, publish = free_port(), free_port(), free_port()
    cams = [synthetic_camera("cam1", size=MODEL_SIZE, fps=10, seed=32)]
    cfg = line_config(tmp_path, line_package, cams, security={"insecure": True})
    cfg["endpoints"].update(
        work=f"tcp://0.0.0.0:{work}", results=f"tcp://0.0.0.0:{results}", publish=f"tcp://0.0.0.0:{publish}"
    )
    plain = Subscriber(f"tcp://127.0.0.1:{publish}").start()
    daemon = Daemon(cfg, tmp_path).start()
    try:
        assert plain.wait_for(lambda s: len(s.results) >= 5, 120), daemon.output()
        forge_pass(f"tcp://127.0.0.1:{results}", "cam1", seconds=1.5)
        time.sleep(1)
    finally:
        daemon.terminate()
        code = daemon.wait(60)
        plain.close()
    out = daemon.output()
    assert code == 0, out
    warning = next(line for line in out.splitlines() if "security.insecure" in line)
    assert "WARNING" in warning, warning
    for name, port in (("work", work), ("results", results), ("publish", publish)):
        assert f"endpoints.{name} (tcp://0.0.0.0:{port})" in warning, warning
    assert "endpoints.frames" not in warning  # loopback is not the network
    assert daemon.summary()["rejected"]["results"]["unauthenticated"] >= 10
    assert not [r for r in plain.results if r["worker"] == "forger"]
    assert forged_in_log(cfg) == 0
