"""CURVE key folders: ``lineside keys`` makes them, the line and its clients load them.

A keys folder has the same layout on every box; each box holds only what it needs
(docs/security.md walks through a two-box line)::

    DIR/server.key              the line's public key: copied to every client box
    DIR/server.key_secret       the line's secret key (0600): on the line box only, never copied
    DIR/clients/NAME.key        a client pair made on this box: the public half ...
    DIR/clients/NAME.key_secret ... and the secret half (0600), which never leaves this box
    DIR/authorized/NAME.key     public keys of the clients that may join the line (workers,
                                cameras, the line's own processes: frames, work, results, publish)
    DIR/subscribers/NAME.key    public keys of the clients that may only subscribe (publish)

The files are pyzmq's own certificates (``zmq.auth.create_certificates``). The line's own
processes connect with the client pair ``line``, which ``lineside keys DIR`` makes and
authorizes beside the server pair.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import zmq
import zmq.auth

from converter.errors import LinesideError

if TYPE_CHECKING:
    from edge.config import LineConfig

log = logging.getLogger(__name__)

SERVER = "server"
#: the client pair the line's own processes connect with
LINE_CLIENT = "line"
#: ZAP domains, one per kind of access: joining the line (frames, work, results) or subscribing
JOIN, SUBSCRIBE = "line", "publish"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class KeysError(LinesideError):
    """A keys folder is missing a key, holds a broken one, or would be overwritten."""


def check_name(name: str) -> str:
    """A client name is a file name in the keys folder: letters, digits, ``_ . -``."""
    if not _NAME.fullmatch(name):
        msg = f"client name {name!r} is not usable; use letters, digits, '_', '.' or '-' (e.g. gpu-box-1)"
        raise KeysError(msg)
    return name


def _need_curve() -> None:
    # A libzmq built without libsodium/tweetnacl has no CURVE; pyzmq's wheels have it.
    if not zmq.has("curve"):
        msg = f"this libzmq ({zmq.zmq_version()}) has no CURVE support; install pyzmq from its wheels"
        raise KeysError(msg)


def _new_pair(folder: Path, name: str) -> Path:
    """A fresh pair ``NAME.key`` / ``NAME.key_secret`` in ``folder``; returns the public file.

    pyzmq writes with the process umask (often 0644), so the pair is made in a private
    0700 temporary folder and moved into place after the secret is 0600: nobody else can
    read it at any moment."""
    _need_curve()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder, prefix=".new-"))
    try:
        public, secret = zmq.auth.create_certificates(tmp, name)
        os.chmod(secret, 0o600)
        os.chmod(public, 0o644)
        os.replace(secret, folder / f"{name}.key_secret")
        os.replace(public, folder / f"{name}.key")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder / f"{name}.key"


def _authorize(public: Path, folder: Path) -> Path:
    folder.mkdir(mode=0o755, parents=True, exist_ok=True)
    target = folder / public.name
    shutil.copyfile(public, target)
    os.chmod(target, 0o644)
    return target


def _refuse_existing(paths: list[Path], what: str) -> None:
    present = [p for p in paths if p.exists()]
    if present:
        msg = f"{present[0]} exists ({what}); pass --force to replace it"
        raise KeysError(msg)


def make_line_keys(folder: Path, force: bool = False) -> list[str]:
    """The line box's keys: the server pair, the line's own client pair, that client authorized.
    Returns what was made, one line each."""
    server = [folder / f"{SERVER}.key", folder / f"{SERVER}.key_secret"]
    if not force:
        _refuse_existing(server, "every client of the line trusts that key and would need the new one")
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    made = [f"{_new_pair(folder, SERVER)} (+ .key_secret): the line's pair; copy server.key to client boxes"]
    public = _new_pair(folder / "clients", LINE_CLIENT)
    _authorize(public, folder / "authorized")
    made.append(f"{public} (+ .key_secret): the line's own processes connect with it (authorized)")
    (folder / "subscribers").mkdir(mode=0o755, exist_ok=True)
    return made


def make_client_keys(folder: Path, name: str, subscriber: bool = False, force: bool = False) -> list[str]:
    """A client pair ``clients/NAME``. On the line box (the folder holds the server's secret)
    it is authorized at once; elsewhere, the returned lines say where to copy its public key."""
    check_name(name)
    clients = folder / "clients"
    if not force:
        _refuse_existing(
            [clients / f"{name}.key", clients / f"{name}.key_secret"],
            "a client with that name already exists (the line may trust its key)",
        )
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    public = _new_pair(clients, name)
    allowed = folder / ("subscribers" if subscriber else "authorized")
    role = "may subscribe to the publish endpoint" if subscriber else "may join the line"
    if (folder / f"{SERVER}.key_secret").exists():
        _authorize(public, allowed)
        return [f"{public} (+ .key_secret): {role} (authorized in {allowed})"]
    return [
        f"{public} (+ .key_secret): copy {public.name} to the line box's keys folder, "
        f"{allowed.name}/{public.name} ({role}), and the line's server.key to {folder}/"
    ]


def _secret_is_private(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        msg = f"{path} is readable by others (mode {mode:o}); run `chmod 600 {path}`"
        raise KeysError(msg)


def load_pair(path: Path, secret: bool, fix: str) -> tuple[bytes, bytes | None]:
    """(public, secret) from a pyzmq certificate file; every problem is one line naming the file."""
    _need_curve()
    if not path.is_file():
        msg = f"{path} not found; {fix}"
        raise KeysError(msg)
    if secret:
        _secret_is_private(path)
    try:
        public, secret_key = zmq.auth.load_certificate(path)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        msg = f"{path}: not a CURVE key file ({exc}); make keys with `lineside keys`"
        raise KeysError(msg) from None
    if secret and secret_key is None:
        msg = f"{path}: holds no secret key; {fix}"
        raise KeysError(msg)
    return public, secret_key


@dataclass
class CurveKeys:
    """One box's view of a keys folder: what the line binds with, what a client connects with,
    and which clients the line accepts. Files are read when first needed, so a client box
    needs no server secret and the line box no subscriber keys."""

    folder: Path
    #: the client pair this box connects with (clients/NAME); empty: ``line``, else the only one
    client: str = ""
    _cache: dict = field(default_factory=dict, repr=False)
    _warned: set = field(default_factory=set, repr=False)

    def server_public(self) -> bytes:
        if "server_public" not in self._cache:
            path = self.folder / f"{SERVER}.key"
            fix = "copy server.key from the line box's keys folder (made there by `lineside keys DIR`)"
            self._cache["server_public"] = load_pair(path, False, fix)[0]
        return self._cache["server_public"]

    def server_pair(self) -> tuple[bytes, bytes]:
        if "server_pair" not in self._cache:
            path = self.folder / f"{SERVER}.key_secret"
            fix = f"the line binds tcp endpoints with it; make its keys with `lineside keys {self.folder}`"
            self._cache["server_pair"] = load_pair(path, True, fix)
        return self._cache["server_pair"]

    def client_name(self) -> str:
        if self.client:
            return check_name(self.client)
        clients = self.folder / "clients"
        names = sorted(p.name[: -len(".key_secret")] for p in clients.glob("*.key_secret"))
        if LINE_CLIENT in names:
            return LINE_CLIENT
        if len(names) == 1:
            return names[0]
        if not names:
            msg = (
                f"{clients} holds no client pair; make one with `lineside keys {self.folder} --client NAME` "
                f"(on the line box: `lineside keys {self.folder}`)"
            )
            raise KeysError(msg)
        msg = f"{clients} holds several client pairs ({', '.join(names)}); choose one with --client NAME"
        raise KeysError(msg)

    def client_pair(self) -> tuple[bytes, bytes]:
        if "client_pair" not in self._cache:
            name = self.client_name()
            path = self.folder / "clients" / f"{name}.key_secret"
            fix = f"make this box's client pair with `lineside keys {self.folder} --client {name}`"
            self._cache["client_pair"] = load_pair(path, True, fix)
        return self._cache["client_pair"]

    def allowed(self, domain: str) -> set[bytes]:
        """Public keys (Z85) the line accepts in ``domain``, read now: a key copied into the
        folder is accepted at the client's next attempt, without a restart."""
        folders = ["authorized"] + (["subscribers"] if domain == SUBSCRIBE else [])
        keys = set()
        for name in folders:
            for path in sorted((self.folder / name).glob("*.key")):
                try:
                    keys.add(zmq.auth.load_certificate(path)[0])
                except (OSError, ValueError, UnicodeDecodeError) as exc:
                    if path not in self._warned:
                        self._warned.add(path)
                        log.warning("%s: not a CURVE public key (%s); ignored", path, exc)
        return keys

    def describe(self, domain: str) -> str:
        """Where the keys of ``domain`` live, for messages."""
        if domain == SUBSCRIBE:
            return f"{self.folder}/authorized or {self.folder}/subscribers"
        return f"{self.folder}/authorized"


def line_keys(cfg: LineConfig) -> CurveKeys | None:
    """The keys of ``cfg.security`` (None: the line runs without CURVE)."""
    if not cfg.security.keys:
        return None
    return CurveKeys(cfg.resolve(cfg.security.keys), cfg.security.client)


def check_line_keys(cfg: LineConfig) -> CurveKeys | None:
    """Before a line starts: load every key its processes will need, so a missing or broken
    file stops start-up with one line instead of a child failing later."""
    keys = line_keys(cfg)
    if keys is None:
        return None
    names = ("frames", "work", "results", "publish")
    tcp = [n for n in names if getattr(cfg.endpoints, n).startswith("tcp://")]
    if tcp:
        keys.server_pair()
    # Cameras, workers, the router and the supervisor connect to these when they are tcp.
    if any(n in tcp for n in ("frames", "work", "results")):
        public, _ = keys.client_pair()
        if public not in keys.allowed(JOIN):
            name = keys.client_name()
            msg = (
                f"{keys.folder}/clients/{name}.key is not in {keys.folder}/authorized; the line's own "
                f"processes connect with it: copy it there (cp {keys.folder}/clients/{name}.key "
                f"{keys.folder}/authorized/)"
            )
            raise KeysError(msg)
    return keys


def client_keys(cfg: LineConfig, endpoints: list[str]) -> CurveKeys | None:
    """The keys a client process connects to ``endpoints`` with, loaded now when one of them
    is tcp, so that a missing key stops it with one line before it loads a model."""
    keys = line_keys(cfg)
    if keys is not None and any(ep.startswith("tcp://") for ep in endpoints):
        keys.server_public()
        keys.client_pair()
    return keys
