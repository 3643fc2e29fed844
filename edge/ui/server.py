"""The Starlette app of ``lineside ui``: the page, its JSON and event stream, and the API.

Routes (docs/ui.md): ``/`` the page; ``/events`` Server-Sent Events, one snapshot of the line
(``LineState.snapshot``) whenever it changed, at most every ``EVENT_EVERY_S``;
``/api/state``, ``/api/history``, ``/api/ng`` JSON; ``/api/camera/{cam}/overlay.png`` the
latest mask of a camera over its frame (the NG store's, or the latest preview's);
``/api/camera/{cam}/preview.jpg`` the latest preview as published; ``/ng/...`` NG files;
``POST /v1/inspect`` and ``/openapi.json``; ``/healthz``.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from edge.ui.inspect_api import IMAGE_TYPES, OPENAPI, InspectError, ModelSlot
from edge.ui.state import DECISIONS, LineState

STATIC = Path(__file__).parent / "static"
#: the event stream sends at most one snapshot this often (seconds), and a keep-alive otherwise
EVENT_EVERY_S = 0.5
KEEPALIVE_S = 15.0
#: the overlay of a FAIL waits this long (seconds) for the NG store to hold its frame
NG_WAIT_S = 1.0


class BasicAuth:
    """HTTP basic authentication for every route (ASGI middleware); constant-time compare."""

    def __init__(self, app: ASGIApp, user: str, password: str) -> None:
        self.app = app
        self.expected = b"Basic " + base64.b64encode(f"{user}:{password}".encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                response = JSONResponse(
                    {"error": "authentication required (HTTP basic)"},
                    status_code=401,
                    headers={"WWW-Authenticate": 'Basic realm="lineside"'},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def parse_time(value: str, name: str) -> float | None:
    """A time filter: Unix seconds or ISO 8601 (local time when it names no zone)."""
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        msg = f"{name}={value!r}: give Unix seconds or an ISO time such as 2026-12-03T07:30"
        raise InspectError(400, msg) from None


def int_param(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query_params.get(name, "")
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InspectError(400, f"{name}={raw!r}: give a whole number from {lo} to {hi}") from None
    if not lo <= value <= hi:
        raise InspectError(400, f"{name}={value}: give a whole number from {lo} to {hi}")
    return value


def overlay_png(state: LineState, cam: str) -> bytes | None:
    """The latest mask of ``cam`` in red over its frame: the NG store's frame of a FAIL (the
    line keeps full frames of NG parts); else the camera's latest preview with that frame's
    own mask (a few a second come with the results: ``publish.preview_px``); else the mask
    over a dark field, saying why there is no frame."""
    got = state.latest_mask(cam)
    if got is None:
        return None
    header, mask = got
    frame = None
    if header.get("decision") == "FAIL" and state.ng_root is not None:
        item = {"camera_id": cam, "capture_ts": header.get("ts"), "seq": header.get("seq", 0)}
        item["epoch"] = header.get("epoch", 0)
        # the collector saves NG frames off its hot path, just after publishing the result
        end = time.monotonic() + NG_WAIT_S
        while (entry := state.ng_entry_id(item)) is None and time.monotonic() < end:
            time.sleep(0.05)
        if entry is not None:
            frame = cv2.imread(str(state.ng_root / f"{entry}.png"), cv2.IMREAD_COLOR)
    if frame is None and (preview := state.latest_preview(cam)) is not None:
        decoded = cv2.imdecode(np.frombuffer(preview[2], np.uint8), cv2.IMREAD_COLOR)
        if decoded is not None:  # else (a broken JPEG) the mask alone, as before any preview
            frame, mask = decoded, preview[1]
    if mask is None and frame is None:
        mask = np.zeros((128, 128), np.uint8)
    if frame is None:
        frame = np.full((*mask.shape, 3), 40, np.uint8)
        # no preview yet (or previews off: publish.preview_px 0), and the frame of no NG part
        note = "mask only: no preview from the line yet"
        scale = frame.shape[1] / 700
        cv2.putText(frame, note, (4, frame.shape[0] - 6), cv2.FONT_HERSHEY_SIMPLEX, scale, (170, 170, 170), 1)
    if mask is not None:
        if mask.shape != frame.shape[:2]:  # a preview is smaller than the mask: scale the mask to it
            mask = cv2.resize(mask, (frame.shape[1], frame.shape[0]), interpolation=cv2.INTER_NEAREST)
        hit = mask > 0
        red = np.array([40, 40, 255], np.float32)
        frame[hit] = (0.45 * frame[hit] + 0.55 * red).astype(np.uint8)
    ok, buf = cv2.imencode(".png", frame)
    return buf.tobytes() if ok else None


def build_app(
    state: LineState,
    model: ModelSlot,
    max_upload_bytes: int = 32 << 20,
    auth: tuple[str, str] | None = None,
) -> Starlette:
    """The app over a started ``state``; ``model`` serves /v1/inspect."""

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html")

    async def healthz(request: Request) -> Response:
        return JSONResponse({"alive": True})

    async def api_state(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(state.snapshot))

    async def events(request: Request) -> Response:
        async def stream() -> Any:
            sent_version, last_sent = -1, 0.0
            while not await request.is_disconnected():
                now = time.monotonic()
                if state.version != sent_version:
                    sent_version = state.version
                    snap = await run_in_threadpool(state.snapshot)
                    last_sent = now
                    yield f"event: state\ndata: {json.dumps(snap)}\n\n"
                elif now - last_sent > KEEPALIVE_S:
                    last_sent = now
                    yield ": keep-alive\n\n"
                await asyncio.sleep(EVENT_EVERY_S)

        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)

    async def history(request: Request) -> Response:
        q = request.query_params
        decision = q.get("decision", "")
        if decision and decision not in DECISIONS:
            return error(400, f"decision={decision!r}: give one of {', '.join(DECISIONS)} or none")
        page = await run_in_threadpool(
            state.history,
            q.get("camera", ""),
            decision,
            parse_time(q.get("since", ""), "since"),
            parse_time(q.get("until", ""), "until"),
            int_param(request, "page", 1, 1, 10**9),
            int_param(request, "per_page", 50, 1, 500),
            int_param(request, "as_of", 0, 0, 2**63 - 1),
        )
        return JSONResponse(page)

    async def ng(request: Request) -> Response:
        page = await run_in_threadpool(
            state.ng_page,
            request.query_params.get("camera", ""),
            int_param(request, "page", 1, 1, 10**9),
            int_param(request, "per_page", 12, 1, 200),
            int_param(request, "as_of", 0, 0, 2**63 - 1),
        )
        return JSONResponse(page)

    async def ng_file(request: Request) -> Response:
        p = request.path_params
        path = state.ng_file(p["cam"], p["day"], p["name"])
        if path is None:
            return error(404, "no such NG file (it may have been rotated out)")
        return FileResponse(path)

    async def camera_overlay(request: Request) -> Response:
        png = await run_in_threadpool(overlay_png, state, request.path_params["cam"])
        if png is None:
            return error(404, f"no result from camera {request.path_params['cam']!r} yet")
        return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})

    async def camera_preview(request: Request) -> Response:
        got = state.latest_preview(request.path_params["cam"])
        if got is None:
            return error(404, f"no preview from camera {request.path_params['cam']!r} yet")
        return Response(got[2], media_type="image/jpeg", headers={"Cache-Control": "no-store"})

    async def openapi(request: Request) -> Response:
        return JSONResponse(OPENAPI)

    async def inspect(request: Request) -> Response:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype not in IMAGE_TYPES and ctype != "multipart/form-data":
            return error(
                415,
                f"Content-Type {ctype or '(none)'} is not supported; send image/png, image/jpeg, "
                f"image/bmp or image/tiff, or multipart/form-data with an 'image' file",
            )
        limit_mb = max_upload_bytes / (1 << 20)
        too_big = f"the upload is larger than the limit of {limit_mb:g} MB (lineside ui --max-upload-mb)"
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > max_upload_bytes:
            return error(413, too_big)
        body = bytearray()
        async for chunk in request.stream():  # a body without a length is bounded too
            body += chunk
            if len(body) > max_upload_bytes:
                return error(413, too_big)
        blob = bytes(body)
        if ctype == "multipart/form-data":

            async def replay() -> dict[str, Any]:
                return {"type": "http.request", "body": blob, "more_body": False}

            try:
                form = await Request(request.scope, replay).form(max_part_size=max_upload_bytes)
            except Exception as exc:  # python-multipart's own error types
                return error(400, f"not a readable multipart/form-data body ({exc})")
            upload = form.get("image")
            if upload is None:
                upload = next((v for v in form.values() if hasattr(v, "read")), None)
            if upload is None or not hasattr(upload, "read"):
                return error(400, "the multipart body has no file part; send the image as the 'image' field")
            blob = await upload.read()
        try:
            inspector = await run_in_threadpool(model.get)
            result = await run_in_threadpool(inspector.inspect, blob, request.query_params.get("camera", ""))
        except InspectError as exc:
            return error(exc.status, str(exc))
        return JSONResponse(result)

    async def on_inspect_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, InspectError)
        return error(exc.status, str(exc))

    routes = [
        Route("/", index),
        Route("/healthz", healthz),
        Route("/events", events),
        Route("/api/state", api_state),
        Route("/api/history", history),
        Route("/api/ng", ng),
        Route("/api/camera/{cam}/overlay.png", camera_overlay),
        Route("/api/camera/{cam}/preview.jpg", camera_preview),
        Route("/ng/{cam}/{day}/{name}", ng_file),
        Route("/openapi.json", openapi),
        Route("/v1/inspect", inspect, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    middleware = [Middleware(BasicAuth, user=auth[0], password=auth[1])] if auth else []
    app = Starlette(routes=routes, middleware=middleware, exception_handlers={InspectError: on_inspect_error})
    app.state.line = state
    return app
