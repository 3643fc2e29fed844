"""`lineside ui` over real HTTP: a real line runs, the UI runs as its own process, and the
tests talk to it with urllib (the page's JSON, its event stream, the NG files and
POST /v1/inspect), as a browser or an MES would."""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import MODEL_CLASS, MODEL_SIZE
from tests.edge.daemon import ROOT, Daemon, free_port, one_error_line
from tests.edge.uihelp import (
    Ui,
    decided,
    start_line_and_ui,
    stop_line,
    wait_for_first_decisions,
    wait_json,
    wait_until,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def line(trained_package: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, Ui]]:
    """A running line and its UI, for the module (the last of its tests stops the line)."""
    tmp = tmp_path_factory.mktemp("ui")
    daemon, ui = start_line_and_ui(tmp, trained_package, ui_extra=("--max-upload-mb", "1"))
    try:
        yield daemon, ui
    finally:
        ui.stop()
        stop_line(daemon)


@pytest.fixture
def ui(line: tuple[Daemon, Ui]) -> Ui:
    return line[1]


def test_state_follows_the_running_line(line: tuple[Daemon, Ui]) -> None:
    daemon, ui = line
    first = wait_for_first_decisions(daemon, ui)
    assert first["line"] == "uitest"
    assert set(first["cameras"]) == {"cam1", "cam2"}
    later = wait_json(ui, "/api/state", lambda s: decided(s) > decided(first) + 5, 20, "more decisions")
    latest = wait_json(
        ui, "/api/state", lambda s: all(c["latest"] for c in s["cameras"].values()), 20, "each camera"
    )
    for cam in latest["cameras"].values():
        assert cam["latest"]["decision"] in ("PASS", "FAIL", "NO_DECISION")
    assert later["e2e_ms"]["p50"] > 0 and later["e2e_ms"]["p99"] >= later["e2e_ms"]["p50"]
    assert later["fps"] > 0
    assert latest["line_running"] is True
    # the line's /readyz, polled by the UI
    ready = wait_json(ui, "/api/state", lambda s: s["health"]["readyz"]["ready"] is True, 20, "ready")
    assert ready["health"]["readyz"]["reasons"] == []
    assert "worker:0" in ready["health"]["processes"]
    hour = wait_json(ui, "/api/state", lambda s: decided({"since_start": s["last_hour"]}), 10, "the log")
    assert 0 <= hour["last_hour"]["yield"] <= 1


def test_event_stream_sends_snapshots(ui: Ui) -> None:
    with urllib.request.urlopen(ui.url + "/events", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        seen: list[dict] = []
        end = time.monotonic() + 15
        while len(seen) < 2 and time.monotonic() < end:
            line = r.readline().decode()
            if line.startswith("data: "):
                seen.append(json.loads(line[6:]))
    assert len(seen) == 2, seen
    assert seen[1]["version"] > seen[0]["version"]


def test_history_is_filtered_and_paged(ui: Ui) -> None:
    everything = wait_json(ui, "/api/history?per_page=5", lambda h: h["total"] >= 10, 30, "logged rows")
    assert len(everything["rows"]) == 5
    assert [r["capture_ts"] for r in everything["rows"]] == sorted(
        (r["capture_ts"] for r in everything["rows"]), reverse=True
    )
    # the line logs on between the two requests: page 1's as_of keeps page 2 where it was
    page2 = ui.get(f"/api/history?per_page=5&page=2&as_of={everything['as_of']}")
    both = ui.get(f"/api/history?per_page=10&as_of={everything['as_of']}")
    key = lambda r: (r["camera_id"], r["seq"])  # noqa: E731
    assert [key(r) for r in everything["rows"] + page2["rows"]] == [key(r) for r in both["rows"]]
    assert page2["total"] == both["total"] == everything["total"]
    cam2 = ui.get("/api/history?camera=cam2&per_page=500")
    assert 0 < cam2["total"] < ui.get("/api/history")["total"]
    assert {r["camera_id"] for r in cam2["rows"]} == {"cam2"}
    fails = wait_json(ui, "/api/history?decision=FAIL&per_page=500", lambda h: h["total"], 30, "a FAIL")
    assert {r["decision"] for r in fails["rows"]} == {"FAIL"}
    rows = everything["rows"]
    newest, oldest = rows[0]["capture_ts"], rows[-1]["capture_ts"]
    window = ui.get(f"/api/history?since={oldest}&until={newest}&per_page=500")
    assert {(r["camera_id"], r["seq"]) for r in rows} <= {(r["camera_id"], r["seq"]) for r in window["rows"]}
    assert ui.get(f"/api/history?since={time.time() + 3600}")["total"] == 0
    status, _, body = ui.request("/api/history?decision=MAYBE")
    assert status == 400 and "PASS, FAIL, NO_DECISION" in json.loads(body)["error"]
    status, _, body = ui.request("/api/history?as_of=newest")
    assert status == 400 and "as_of='newest'" in json.loads(body)["error"]
    status, _, body = ui.request("/api/history?since=yesterday")
    assert status == 400 and "ISO" in json.loads(body)["error"]


def test_ng_gallery_serves_image_mask_and_metadata(ui: Ui) -> None:
    page = wait_json(ui, "/api/ng", lambda p: p["total"], 30, "an NG entry")
    # page 1's as_of bounds a later request to what page 1 counted, whatever the line stored since
    assert ui.get(f"/api/ng?per_page=200&as_of={page['as_of']}")["total"] == page["total"]
    entry = page["entries"][0]
    assert entry["meta"]["reason"] and entry["meta"]["camera_id"] in ("cam1", "cam2")
    folder = "/ng/" + "/".join(entry["id"].split("/")[:2])
    for name in (entry["meta"]["image"], entry["meta"]["mask"]):
        status, _, body = ui.request(f"{folder}/{name}")
        assert status == 200 and body.startswith(b"\x89PNG"), (name, status)
    for bad in ("/ng/..%2F..%2Fetc/x/passwd.png", "/ng/cam1/20260101/..png", "/ng/cam1/x/y.txt"):
        assert ui.request(bad)[0] == 404, bad
    # a FAIL in the history links its NG entry
    fails = ui.get("/api/history?decision=FAIL&per_page=500")
    assert any(r["ng"] for r in fails["rows"])


def test_camera_overlay_is_a_png(ui: Ui) -> None:
    wait_until(lambda: ui.get("/api/state")["cameras"]["cam1"]["latest"], 30, "cam1")
    status, headers, body = ui.request("/api/camera/cam1/overlay.png")
    assert status == 200 and headers["content-type"] == "image/png"
    image = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.shape[0] >= MODEL_SIZE
    assert ui.request("/api/camera/nope/overlay.png")[0] == 404


def test_a_pass_camera_card_shows_its_preview_frame(ui: Ui) -> None:
    """The line sends a small JPEG of each camera's frame a few times a second with any
    decision: a PASS camera's card draws its mask over that frame, not over a dark field."""

    def pass_with_preview() -> str | None:
        cams = ui.get("/api/state")["cameras"]
        return next(
            (
                c
                for c, i in cams.items()
                if i["latest"]
                and i["latest"]["decision"] == "PASS"
                and i["latest"]["preview_seq"] is not None
            ),
            None,
        )

    cam = wait_until(pass_with_preview, 30, "a PASS camera with a preview")
    status, headers, body = ui.request(f"/api/camera/{cam}/preview.jpg")
    assert status == 200 and headers["content-type"] == "image/jpeg"
    preview = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
    assert preview is not None and max(preview.shape[:2]) <= 256
    status, _, body = ui.request(f"/api/camera/{cam}/overlay.png")
    overlay = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
    assert status == 200 and overlay.shape == preview.shape  # a camera's previews keep their size
    dark = float((overlay == 40).all(axis=2).mean())
    assert dark < 0.5, f"{dark:.0%} of the card's image is the dark field of a mask-only overlay"
    assert ui.request("/api/camera/nope/preview.jpg")[0] == 404


def test_the_page_and_its_scripts_are_served(ui: Ui) -> None:
    status, _, body = ui.request("/")
    assert status == 200 and b"/static/app.js" in body
    assert ui.request("/static/app.js")[0] == 200
    assert ui.request("/static/style.css")[0] == 200


# -- POST /v1/inspect -------------------------------------------------------------------------------
def synthetic(defective: bool, seed: int) -> np.ndarray:
    from converter.synthetic import render

    image, _, _ = render(np.random.default_rng(seed), MODEL_SIZE, MODEL_CLASS, defective)
    return image


def encoded(image: np.ndarray, ext: str) -> bytes:
    ok, buf = cv2.imencode(ext, image)
    assert ok
    return buf.tobytes()


def inspect(ui: Ui, body: bytes, ctype: str, query: str = "") -> tuple[int, dict]:
    status, _, raw = ui.request(f"/v1/inspect{query}", data=body, headers={"Content-Type": ctype})
    return status, json.loads(raw)


def test_inspect_answers_as_the_line_does(ui: Ui) -> None:
    clean, defective = synthetic(False, 3), synthetic(True, 3)
    status, result = inspect(ui, encoded(defective, ".png"), "image/png")
    assert status == 200, result
    assert result["decision"] == "FAIL", result
    assert result["defect_count"] >= 1 and result["boxes"]
    assert result["backend"] == "onnxruntime" and result["model_id"] == "session-tinyunet"
    assert set(result["latency_ms"]) == {
        "capture_to_send",
        "queue",
        "worker_wait",
        "preprocess",
        "infer",
        "postprocess",
        "end_to_end",
    }
    mask = cv2.imdecode(np.frombuffer(base64.b64decode(result["mask_png"]), np.uint8), cv2.IMREAD_UNCHANGED)
    assert list(mask.shape) == result["mask_shape"] == [MODEL_SIZE, MODEL_SIZE]
    assert int((mask > 0).sum()) == result["defect_area"]
    status, result = inspect(ui, encoded(clean, ".png"), "image/png")
    assert status == 200 and result["decision"] == "PASS", result
    assert result["mask_png"] is not None and result["defect_area"] == 0
    # the same image in every format the API takes, and as a multipart upload
    for ext, ctype in ((".jpg", "image/jpeg"), (".bmp", "image/bmp"), (".tiff", "image/tiff")):
        status, result = inspect(ui, encoded(defective, ext), ctype)
        assert status == 200 and result["decision"] == "FAIL", (ctype, result)
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="part.png"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + encoded(defective, ".png")
        + f"\r\n--{boundary}--\r\n".encode()
    )
    status, result = inspect(ui, body, f"multipart/form-data; boundary={boundary}", "?camera=cam1")
    assert status == 200 and result["decision"] == "FAIL" and result["cam"] == "cam1", result
    # a larger image is tiled as the line tiles it; a colour one is made grey
    big = cv2.cvtColor(np.tile(clean, (2, 2)), cv2.COLOR_GRAY2BGR)
    status, result = inspect(ui, encoded(big, ".png"), "image/png")
    assert status == 200 and result["mask_shape"] == [2 * MODEL_SIZE, 2 * MODEL_SIZE], result
    # too small for the model: NO_DECISION, as the line says for such a frame
    status, result = inspect(ui, encoded(clean[:32, :32], ".png"), "image/png")
    assert status == 200 and result["decision"] == "NO_DECISION", result


def post_raw(ui: Ui, headers: dict[str, str], body: bytes) -> tuple[int, dict]:
    """POST /v1/inspect with exactly these headers and body bytes (http.client, no framing added)."""
    conn = http.client.HTTPConnection("127.0.0.1", ui.port, timeout=30)
    try:
        conn.putrequest("POST", "/v1/inspect")
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.endheaders()
        if body:
            conn.send(body)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_inspect_refuses_bad_requests_cleanly(ui: Ui) -> None:
    status, result = inspect(ui, b"certainly not a png", "image/png")
    assert status == 400 and "not a readable PNG" in result["error"]
    status, result = inspect(ui, b"", "image/png")
    assert status == 400 and "empty body" in result["error"]
    status, result = inspect(ui, b"hello", "text/plain")
    assert status == 415 and "text/plain" in result["error"]
    # the UI runs with --max-upload-mb 1: a declared length over it is refused before the body
    # is read (a client that sends it all anyway sees the connection closed, as with any server)
    status, result = post_raw(ui, {"Content-Type": "image/png", "Content-Length": str(2 << 20)}, b"")
    assert status == 413 and "1 MB" in result["error"]
    # a chunked body without a length is counted as it comes
    chunked = f"{(1 << 20) + 1:x}\r\n".encode() + b"\0" * ((1 << 20) + 1) + b"\r\n0\r\n\r\n"
    status, result = post_raw(ui, {"Content-Type": "image/png", "Transfer-Encoding": "chunked"}, chunked)
    assert status == 413 and "1 MB" in result["error"]
    status, result = inspect(ui, encoded(synthetic(False, 1), ".png"), "image/png", "?camera=nope")
    assert status == 400 and "nope" in result["error"]
    boundary = uuid.uuid4().hex
    body = f'--{boundary}\r\nContent-Disposition: form-data; name="note"\r\n\r\nhi\r\n--{boundary}--\r\n'
    status, result = inspect(ui, body.encode(), f"multipart/form-data; boundary={boundary}")
    assert status == 400 and "no file part" in result["error"]
    assert "\n" not in result["error"]


def test_openapi_describes_the_api(ui: Ui) -> None:
    schema = ui.get("/openapi.json")
    post = schema["paths"]["/v1/inspect"]["post"]
    assert {"image/png", "image/jpeg", "image/bmp", "image/tiff", "multipart/form-data"} <= set(
        post["requestBody"]["content"]
    )
    assert {"200", "400", "413", "415"} <= set(post["responses"])


def test_counts_agree_with_the_line_when_it_stops(line: tuple[Daemon, Ui]) -> None:
    daemon, ui = line
    stop_line(daemon)
    summary = daemon.summary()
    state = wait_json(ui, "/api/state", lambda s: not s["line_running"], 20, "the line's final status")
    for d in ("PASS", "FAIL", "NO_DECISION"):
        assert state["since_start"][d] == summary["totals"][d], (d, state["since_start"], summary["totals"])
        for cam, counts in state["cameras"].items():
            assert counts["counts"][d] == summary["cameras"][cam][d], (cam, d)
    assert ui.get("/api/history")["total"] == summary["totals"]["decided"]
    assert state["line_running"] is False
    # a UI started after the line ran reads the last hour from the decision log
    after = Ui(daemon.tmp / "line.yaml", daemon.tmp).start()
    try:
        state = after.get("/api/state")
        assert state["line_running"] is False
        for d in ("PASS", "FAIL", "NO_DECISION"):
            assert state["last_hour"][d] == summary["totals"][d], (d, state["last_hour"])
        assert after.get("/api/history?per_page=1")["total"] == summary["totals"]["decided"]
    finally:
        after.stop()


# -- binding and authentication ------------------------------------------------------------------------
def test_open_host_without_a_password_is_refused(tmp_path: Path, trained_package: Path) -> None:
    from tests.edge.daemon import line_config, synthetic_camera

    cfg = tmp_path / "line.yaml"
    cfg.write_text(json.dumps(line_config(tmp_path, trained_package, [synthetic_camera("cam1", size=64)])))
    argv = [sys.executable, "-m", "edge.cli", "ui", "--config", str(cfg), "--port", str(free_port())]
    done = subprocess.run([*argv, "--host", "0.0.0.0"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "--user" in one_error_line(done)
    env = {k: v for k, v in os.environ.items() if k != "LINESIDE_UI_PASSWORD"}
    argv += ["--host", "0.0.0.0", "--user", "op"]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
    assert "LINESIDE_UI_PASSWORD" in one_error_line(done)


def test_basic_auth_guards_every_route(tmp_path: Path) -> None:
    """...on a UI whose model package is missing: the page works, the API says why it cannot."""
    from tests.edge.daemon import line_config, synthetic_camera

    cfg = tmp_path / "line.yaml"
    missing = tmp_path / "no-package"
    cfg.write_text(json.dumps(line_config(tmp_path, missing, [synthetic_camera("cam1", size=64)])))
    secret = tmp_path / "pw"
    secret.write_text("pw\n")
    ui = Ui(cfg, tmp_path, extra=("--user", "op", "--password-file", str(secret))).start()
    try:
        for path in ("/", "/api/state", "/api/history", "/openapi.json"):
            status, headers, _ = ui.request(path)
            assert status == 401 and headers["www-authenticate"].startswith("Basic"), path
            assert ui.request(path, auth=("op", "wrong"))[0] == 401
            assert ui.request(path, auth=("op", "pw"))[0] == 200, path
        png, ctype = encoded(synthetic(False, 1), ".png"), {"Content-Type": "image/png"}
        assert ui.request("/v1/inspect", data=png, headers=ctype)[0] == 401
        status, _, body = ui.request("/v1/inspect", data=png, headers=ctype, auth=("op", "pw"))
        error = json.loads(body)["error"]
        assert status == 503 and str(missing) in error and "\n" not in error, error
    finally:
        ui.stop()


# -- the demo ------------------------------------------------------------------------------------
def test_demo_prints_the_ui_url_and_the_ui_shows_its_line(trained_package: Path, tmp_path: Path) -> None:
    work = tmp_path / "demo"
    # The steps before the line are cached when their outputs exist: seed them.
    (work / "data" / "Class1" / "Test").mkdir(parents=True)
    (work / "checkpoint").mkdir()
    (work / "checkpoint" / "training.json").write_text("{}")
    shutil.copytree(trained_package, work / "package")
    port = free_port()
    argv = [sys.executable, "-m", "edge.cli", "demo", "--workdir", str(work), "--duration", "120"]
    out = tmp_path / "demo.log"
    with open(out, "w") as log:
        # its own process group: Ctrl-C reaches the demo, its line and its page, as in a terminal
        proc = subprocess.Popen(
            [*argv, "--ui-port", str(port)],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_until(lambda: f"== the operators' page: {url} " in out.read_text(), 60, "the page's address")

        def shows_the_line() -> dict | None:
            state = json.loads(urllib.request.urlopen(url + "api/state", timeout=5).read())
            return state if state["line"] == "demo" and decided(state) > 0 else None

        state = wait_until(shows_the_line, 60, "the demo line on the UI")
        assert set(state["cameras"]) == {"cam1", "cam2"}
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(60) == 130, out.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    # the line drained and stopped by itself (its summary), and the demo stopped its page
    assert json.loads((work / "runs" / "summary.json").read_text())["totals"]["decided"] > 0
    with pytest.raises(OSError):
        urllib.request.urlopen(url + "healthz", timeout=2)
    # nothing of it is left (a child that exited may stay a zombie until init reaps it)
    wait_until(lambda: group_gone(proc.pid), 10, "the demo's processes to end")


def group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False
