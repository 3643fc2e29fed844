"""The MQTT sink against a real broker (Debian's Mosquitto, started here on a free port, with
TLS, client certificates and a password) and a real MQTT client (paho): results and the
retained status arrive on the documented topics (docs/integration.md), the last will says
offline when the sink dies, and the line keeps deciding through a broker outage, which the
sink counts and recovers from."""

from __future__ import annotations

import getpass
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge import protocol
from tests.conftest import MODEL_SIZE, need_peer
from tests.edge.daemon import (
    ROOT,
    finish,
    free_port,
    line_config,
    metric,
    one_error_line,
    scrape,
    start_line,
    synthetic_camera,
)

pytestmark = pytest.mark.slow

NEEDS = "install Debian's mosquitto package and paho-mqtt (.ci/run does)"


def make_certs(folder: Path) -> dict[str, Path]:
    """A CA, a broker certificate for 127.0.0.1 and a client certificate, all signed by the CA
    (PEM files in ``folder``)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    out: dict[str, Path] = {}

    def write(name: str, key: Any, cert: Any) -> None:
        out[f"{name}_cert"] = folder / f"{name}.pem"
        out[f"{name}_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        out[f"{name}_key"] = folder / f"{name}.key"
        out[f"{name}_key"].write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )

    def issue(name: str, issuer: Any, signer: Any, ca: bool, san: list | None = None) -> tuple[Any, Any]:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer or subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return key, builder.sign(signer or key, hashes.SHA256())

    ca_key, ca_cert = issue("lineside test CA", None, None, True)
    write("ca", ca_key, ca_cert)
    san = [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    write("broker", *issue("127.0.0.1", ca_cert.subject, ca_key, False, san))
    write("client", *issue("line1", ca_cert.subject, ca_key, False))
    return out


#: the broker's one user (its password reaches the sink through an environment variable)
USER, PASSWORD = "line1", "s3cret-for-the-test"


class Broker:
    """Mosquitto on 127.0.0.1:``port`` with TLS (client certificates required) and a password
    file; no persistence, so a restart forgets the retained messages and the sink must publish
    its status again."""

    def __init__(self, tmp: Path, port: int, certs: dict[str, Path]) -> None:
        self.port = port
        passwords = tmp / "mosquitto.passwd"
        if not passwords.exists():
            subprocess.run(
                ["mosquitto_passwd", "-b", "-c", str(passwords), USER, PASSWORD], check=True, timeout=30
            )
            passwords.chmod(0o600)
        self.conf = tmp / "mosquitto.conf"
        self.conf.write_text(
            f"listener {port} 127.0.0.1\n"
            f"allow_anonymous false\npassword_file {passwords}\n"
            f"cafile {certs['ca_cert']}\ncertfile {certs['broker_cert']}\nkeyfile {certs['broker_key']}\n"
            "require_certificate true\npersistence false\n"
            # started by root, Mosquitto switches to its own user, which cannot read the test's
            # private folder; as anyone else it stays who it is
            + (f"user {getpass.getuser()}\n" if os.geteuid() == 0 else "")
        )
        self.log = tmp / "mosquitto.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Broker:
        with open(self.log, "a") as out:
            self.proc = subprocess.Popen(["mosquitto", "-c", str(self.conf)], stdout=out, stderr=out)
        end = time.monotonic() + 10
        while time.monotonic() < end:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            assert self.proc.poll() is None, self.log.read_text()
            time.sleep(0.05)
        raise AssertionError(f"mosquitto did not listen on {self.port}: {self.log.read_text()}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


class Listener:
    """A paho client subscribed to ``topic`` (QoS 1) that keeps every message and reconnects
    by itself."""

    def __init__(self, port: int, topic: str, certs: dict[str, Path]) -> None:
        from paho.mqtt import client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.messages: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-{os.getpid()}-{time.time()}")
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.tls_set(str(certs["ca_cert"]), str(certs["client_cert"]), str(certs["client_key"]))
        self.client.username_pw_set(USER, PASSWORD)
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=5)
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self.lock:
            self.messages.append(
                {
                    "at": time.time(),
                    "topic": msg.topic,
                    "payload": json.loads(msg.payload),
                    "retain": bool(msg.retain),
                    "qos": msg.qos,
                }
            )

    def on(self, suffix: str, since: float = 0.0) -> list[dict[str, Any]]:
        with self.lock:
            return [m for m in self.messages if m["topic"].endswith(suffix) and m["at"] >= since]

    def wait(self, predicate: Any, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate():
                return True
            time.sleep(0.05)
        return False

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def retained_status(port: int, certs: dict[str, Path]) -> dict[str, Any]:
    """What a client that connects now gets on the status topic (the retained message)."""
    listener = Listener(port, "lineside/test/status", certs)
    try:
        assert listener.wait(lambda: listener.on("/status"), 10), "no retained status"
        first = listener.on("/status")[0]
    finally:
        listener.close()
    assert first["retain"], first
    return first["payload"]


@pytest.fixture
def broker(tmp_path: Path):
    """``broker(port, certs)`` starts Mosquitto; every one started is killed at the end."""
    if shutil.which("mosquitto") is None or importlib.util.find_spec("paho") is None:
        need_peer(f"mosquitto or paho-mqtt not found: {NEEDS}")
    brokers: list[Broker] = []

    def start(port: int, certs: dict[str, Path]) -> Broker:
        brokers.append(Broker(tmp_path, port, certs).start())
        return brokers[-1]

    yield start
    for b in brokers:
        b.kill()


def test_results_and_status_reach_a_real_broker_through_a_restart(
    line_package: Path, tmp_path: Path, broker: Any
) -> None:
    """TLS with client certificates and a password from an environment variable, all of it
    against the real broker; then its last will, an outage, and a clean stop."""
    port = free_port()
    certs = make_certs(tmp_path)
    mosquitto = broker(port, certs)
    listener = Listener(port, "lineside/test/#", certs)
    cam = synthetic_camera("cam1", size=MODEL_SIZE, fps=10, seed=5, policy="latest")
    mqtt = {
        "enabled": True,
        "port": port,
        "ca_file": str(certs["ca_cert"]),
        "cert_file": str(certs["client_cert"]),
        "key_file": str(certs["client_key"]),
        "username": USER,
        "password_env": "LINESIDE_TEST_MQTT_PASSWORD",
        # a queue of 5 results: a 3 s outage at 10 frames a second must drop (and count) some
        "queue": 5,
        "retry_initial_s": 0.2,
        "retry_max_s": 1,
    }
    cfg = line_config(tmp_path, line_package, [cam], sinks={"mqtt": mqtt})
    metrics_port = cfg["metrics"]["port"]
    os.environ["LINESIDE_TEST_MQTT_PASSWORD"] = PASSWORD  # the daemon inherits it
    try:
        daemon, sub = start_line(tmp_path, cfg)
    finally:
        del os.environ["LINESIDE_TEST_MQTT_PASSWORD"]
    try:
        # 1. every decision as JSON on lineside/<line>/<camera>/result, QoS 1, no mask
        assert listener.wait(lambda: len(listener.on("/cam1/result")) >= 5, 90), daemon.output()
        first = listener.on("/cam1/result")[0]
        assert first["topic"] == "lineside/test/cam1/result"
        assert set(first["payload"]) >= set(protocol.RESULT_FIELDS), first  # the fields always there
        assert "mask_png" not in first["payload"]
        assert first["payload"]["decision"] in ("PASS", "FAIL", "NO_DECISION")
        assert first["qos"] == 1 and not first["retain"]
        # 2. the status, retained, saying online, with the line's counters
        assert listener.wait(lambda: any("totals" in m["payload"] for m in listener.on("/status")), 10)
        status = retained_status(port, certs)
        assert status["online"] is True and status["line"] == "test" and "totals" in status, status

        # 3. the sink dies: the broker publishes its last will (offline), the supervisor
        # restarts it, and the status says online again
        assert sub.wait_for(lambda s: any("sink:mqtt" in st["processes"] for st in s.statuses), 10)
        pid = next(st["processes"]["sink:mqtt"] for st in sub.statuses if "sink:mqtt" in st["processes"])
        killed = time.time()
        os.kill(pid, signal.SIGKILL)
        assert listener.wait(
            lambda: any(not m["payload"]["online"] for m in listener.on("/status", killed)), 10
        )
        will = next(m for m in listener.on("/status", killed) if not m["payload"]["online"])
        # (a live subscriber gets it without the retain flag: MQTT sets that only for a message
        # delivered because it was retained when the client subscribed)
        assert will["payload"] == {"line": "test", "online": False, "reason": "the sink lost its connection"}
        back = lambda: any(m["payload"]["online"] for m in listener.on("/status", will["at"]))  # noqa: E731
        assert listener.wait(back, 60), daemon.output()

        # 4. the broker dies for 3 s; the line decides on, the sink counts what it could not
        # deliver, and reconnects with backoff when the broker is back on the same port
        assert listener.wait(lambda: listener.on("/cam1/result", time.time() - 0.5), 10)
        down_at = time.time()
        mosquitto.kill()
        time.sleep(3)
        page = scrape(metrics_port)
        assert metric(page, "lineside_sink_up", sink="mqtt") == 0, "the sink did not notice the outage"
        up_at = time.time()
        mosquitto = broker(port, certs)
        fresh = lambda: [m for m in listener.on("/cam1/result", up_at) if m["payload"]["ts"] > up_at]  # noqa: E731
        assert listener.wait(lambda: len(fresh()) >= 3, 30), daemon.output()
        during = [r for r in sub.results if down_at + 0.5 < r["decided_ts"] < up_at]
        assert len(during) >= 15, f"the line decided only {len(during)} frame(s) during the outage"

        def counted(_: Any) -> bool:
            page = scrape(metrics_port)
            return (
                metric(page, "lineside_sink_reconnects_total", sink="mqtt") >= 1
                and metric(page, "lineside_sink_dropped_total", reason="queue_full", sink="mqtt") >= 5
                and metric(page, "lineside_sink_up", sink="mqtt") == 1
            )

        sink_lines = lambda: [x for x in scrape(metrics_port).splitlines() if x.startswith("lineside_sink")]  # noqa: E731
        assert sub.wait_for(counted, 10), sink_lines()
        # deliveries reach the counter with the sink's next report, and a killed sink's last
        # ones never do: on an idle box the line may stand at a handful here, so wait for more
        sent = lambda _: metric(scrape(metrics_port), "lineside_sink_sent_total", sink="mqtt") >= 10  # noqa: E731
        assert sub.wait_for(sent, 10), sink_lines()
        # the restarted broker forgot the retained status; the sink published it again
        assert retained_status(port, certs)["online"] is True
    finally:
        daemon.terminate()
        code = finish(daemon, sub)
        listener.close()
    assert code == 0, daemon.output()
    # 5. a clean stop leaves the last status retained, saying offline
    last = retained_status(port, certs)
    assert last["online"] is False and last.get("final") is True, last


def test_a_missing_library_stops_lineside_run_with_one_line(line_package: Path, tmp_path: Path) -> None:
    """End to end: paho hidden from the command (``sys.modules[name] = None`` is how Python says
    "not installed"); exit 2 and one line, before any process of the line starts."""
    cam = synthetic_camera("cam1", size=MODEL_SIZE)
    path = tmp_path / "line.yaml"
    sinks = {"mqtt": {"enabled": True}}
    path.write_text(yaml.safe_dump(line_config(tmp_path, line_package, [cam], sinks=sinks)))
    argv = ["run", "--config", str(path), "--duration", "1"]
    code = f"import sys; sys.modules['paho'] = None\nfrom edge.cli import main; sys.exit(main({argv!r}))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    line = "lineside: error: sinks.mqtt needs paho-mqtt: pip install 'lineside[plant]'"
    assert one_error_line(done) == line


@pytest.mark.parametrize(
    ("sinks", "hide", "expected"),
    [
        ({"opcua": {"enabled": True}}, "asyncua", "sinks.opcua needs asyncua: pip install 'lineside[plant]'"),
        (
            {"mqtt": {"enabled": True, "username": "line", "password_env": "LINESIDE_TEST_NO_SUCH_VAR"}},
            "",
            "sinks.mqtt.password_env: the environment variable LINESIDE_TEST_NO_SUCH_VAR is not set; "
            "export it before `lineside run`",
        ),
        (
            {"mqtt": {"enabled": True, "username": "line", "password_file": "no-such-file"}},
            "",
            "sinks.mqtt.password_file: cannot read {tmp}/no-such-file (No such file or directory)",
        ),
        (
            {"mqtt": {"enabled": True, "ca_file": "ca.pem"}},
            "",
            "sinks.mqtt.ca_file: {tmp}/ca.pem is not a file; fix the path in the config",
        ),
    ],
    ids=["no-asyncua", "no-password-env", "no-password-file", "no-ca-file"],
)
def test_what_a_sink_needs_is_checked_before_the_line_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sinks: dict, hide: str, expected: str
) -> None:
    """The check the supervisor runs before any process starts (the line above shows that its
    SinkError is the one line of `lineside run`)."""
    from edge.config import parse_config
    from edge.sinks import SinkError
    from edge.sinks.feed import check_plant_sinks

    if hide:
        monkeypatch.setitem(sys.modules, hide, None)
    monkeypatch.delenv("LINESIDE_TEST_NO_SUCH_VAR", raising=False)
    cfg = parse_config({"cameras": [{"id": "cam1"}], "sinks": sinks}, base_dir=tmp_path)
    with pytest.raises(SinkError) as err:
        check_plant_sinks(cfg)
    assert str(err.value) == expected.format(tmp=tmp_path)


def test_the_mask_option_sends_the_defect_mask_as_a_png_that_decodes_to_it() -> None:
    """``include_mask: true``: ``mask_png`` is the published mask (frame 2), losslessly."""
    import base64

    import cv2
    import numpy as np

    from edge.sinks.mqtt import mask_png

    mask = np.zeros((32, 48), np.uint8)
    mask[4:9, 10:30] = 255
    png = mask_png({"mask_shape": [32, 48]}, mask.tobytes())
    decoded = cv2.imdecode(np.frombuffer(base64.b64decode(png), np.uint8), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(decoded, mask)
    assert mask_png({}, b"") is None  # a NO_DECISION without a mask


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {"name": "hall/2", "sinks": {"mqtt": {"enabled": True}}},
            "name is 'hall/2'; with sinks.mqtt enabled it is an MQTT topic level: no / + or #",
        ),
        (
            {"sinks": {"mqtt": {"topic_prefix": "plant/#"}}},
            "sinks.mqtt.topic_prefix is 'plant/#'; must be MQTT topic levels joined by / (no + or #, "
            "no empty level)",
        ),
        ({"sinks": {"mqtt": {"qos": 3}}}, "sinks.mqtt.qos is 3; must be between 0 and 2"),
        ({"sinks": {"mqtt": {"port": 0}}}, "sinks.mqtt.port is 0; must be between 1 and 65535"),
        (
            {"sinks": {"mqtt": {"password": "x"}}},
            "unknown key 'sinks.mqtt.password'; did you mean 'password_env'? (allowed here: enabled, host",
        ),
        (
            {"sinks": {"mqtt": {"enabled": True, "password_env": "P"}}},
            "sinks.mqtt.username is ''; a password needs a user name",
        ),
        (
            {
                "sinks": {
                    "mqtt": {"enabled": True, "username": "u", "password_env": "P", "password_file": "f"}
                }
            },
            "sinks.mqtt.password_file is 'f'; set password_env or password_file, not both",
        ),
        (
            {"sinks": {"mqtt": {"enabled": True, "cert_file": "c.pem"}}},
            "sinks.mqtt.key_file is ''; cert_file and key_file go together",
        ),
        (
            {"sinks": {"mqtt": {"retry_initial_s": 5, "retry_max_s": 1}}},
            "sinks.mqtt.retry_max_s is 1.0; must be >= retry_initial_s (5)",
        ),
    ],
    ids=["name", "prefix", "qos", "port", "password-key", "no-user", "two-passwords", "cert-no-key", "retry"],
)
def test_bad_mqtt_settings_are_one_line_naming_the_key(data: dict, expected: str) -> None:
    from edge.config import ConfigError, parse_config

    with pytest.raises(ConfigError) as err:
        parse_config({"cameras": [{"id": "cam1"}], **data}, "line.yaml")
    assert str(err.value).startswith(f"line.yaml: {expected}"), str(err.value)
