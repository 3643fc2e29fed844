"""``POST /v1/inspect``: one image in, the line's decision out, on this process's own backend.

The decision is made by the line's own worker code (``edge.worker.Worker``: tiling,
normalization, the backend, the decision rules and tile merging), fed one frame at a time;
its result message is caught instead of sent, so the answer is exactly what the line would
publish for that image (docs/protocol.md), plus the mask as a base64 PNG.
"""

from __future__ import annotations

import base64
import copy
import json
import logging
import threading
import time
import types
from typing import Any

import cv2
import numpy as np

from converter.errors import LinesideError
from edge import protocol
from edge.config import LineConfig

log = logging.getLogger(__name__)

#: Content-Type -> what it is; anything else (but multipart/form-data) is a 415
IMAGE_TYPES = {
    "image/png": "PNG",
    "image/jpeg": "JPEG",
    "image/jpg": "JPEG",
    "image/bmp": "BMP",
    "image/x-ms-bmp": "BMP",
    "image/tiff": "TIFF",
}
#: the camera id of an answer when the request names no camera
API_CAMERA = "api"


class InspectError(LinesideError):
    """A request the API refuses: ``status`` is its HTTP code, the message its one line."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def decode_image(blob: bytes) -> np.ndarray:
    """PNG/JPEG/BMP/TIFF bytes -> a uint8 image (gray, BGR or BGRA); InspectError 400 otherwise."""
    if not blob:
        raise InspectError(400, "empty body: send the image bytes (PNG, JPEG, BMP or TIFF)")
    image = cv2.imdecode(np.frombuffer(blob, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        msg = f"the {len(blob)} bytes sent are not a readable PNG, JPEG, BMP or TIFF image"
        raise InspectError(400, msg)
    if image.dtype == np.uint16:  # 16-bit PNG/TIFF from machine-vision cameras: keep the top byte
        image = (image >> 8).astype(np.uint8)
    if image.dtype != np.uint8:
        msg = f"{image.dtype} pixels are not supported; send 8- or 16-bit images"
        raise InspectError(400, msg)
    return image


def encode_mask(mask: np.ndarray) -> str:
    ok, buf = cv2.imencode(".png", mask)
    if not ok:  # cannot happen for a 2-D uint8 array; still one clear line if it does
        msg = f"PNG encoding of the {mask.shape} mask failed"
        raise InspectError(500, msg)
    return base64.b64encode(buf.tobytes()).decode()


class _CaughtResult:
    """Stands in for the worker's results socket: keeps the parts of the one message sent."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def send(self, data: Any, flags: int = 0, copy: bool = True) -> None:
        self.parts.append(bytes(data))


class Inspector:
    """The line's model package on an ONNX Runtime backend of this process, loaded once."""

    def __init__(self, cfg: LineConfig, threads: int = 1) -> None:
        from edge.worker import open_worker

        cfg = copy.deepcopy(cfg)
        # the UI's own backend on the CPU: a second TensorRT context would take the line's GPU memory
        cfg.model.backend = "onnxruntime"
        cfg.model.threads = threads
        self.cfg = cfg
        self.worker = open_worker(cfg, "ui-inspect")
        self.lock = threading.Lock()
        self.requests = 0

    @property
    def model_id(self) -> str:
        return self.worker.package.model_id

    def close(self) -> None:
        self.worker.close()

    def shape_for(self, image: np.ndarray, camera: str) -> np.ndarray:
        """The frame the line would give the model: a named camera's ROI, grey, fit (``resize``
        or ``tile``) as its camera process does; without a camera, only grey."""
        from edge import imageops

        if not camera:
            return np.ascontiguousarray(imageops.to_gray(image))
        cams = {c.id: c for c in self.cfg.cameras}
        if camera not in cams:
            msg = f"camera {camera!r} is not in the line config; use one of {sorted(cams)} or none"
            raise InspectError(400, msg)
        from edge.camera import CameraLoop

        # the camera process's own shaping (ROI, grey, size check, fit), without its sockets
        shaper = types.SimpleNamespace(cam=cams[camera], input_hw=self.worker.hw)
        try:
            return CameraLoop.shape(shaper, image)
        except LinesideError as exc:
            raise InspectError(400, str(exc)) from None

    def inspect(self, blob: bytes, camera: str = "") -> dict[str, Any]:
        """Decode, shape and decide one image; the result header of docs/protocol.md with
        ``mask_png`` (base64) added, and ``latency_ms`` measured in this process."""
        from edge.worker import Item

        received = time.time()
        try:
            image = self.shape_for(decode_image(blob), camera)
        except LinesideError as exc:
            if isinstance(exc, InspectError):
                raise
            raise InspectError(400, str(exc)) from None
        with self.lock:
            self.requests += 1
            header = {
                "cam": camera or API_CAMERA,
                "epoch": 0,
                "seq": self.requests,
                "ts": received,
                "sent": received,
                "recv": time.time(),
                "truth": None,
                "tag": "",
            }
            caught = _CaughtResult()
            self.worker.batch.append(Item(header, image, time.monotonic()))
            self.worker.process(caught)
            self.worker.done.clear()  # no router to acknowledge frames to
        out = json.loads(caught.parts[0])
        # the worker's wire-only fields: the NG image, and a preview (the caller has the image)
        for key in ("t", "tag", "image_shape", "preview", "preview_shape"):
            out.pop(key, None)
        out["latency_ms"]["end_to_end"] = (time.time() - received) * 1000
        if out.pop("mask_empty", False) and out.get("mask_shape"):  # all background: not sent
            out["mask_png"] = encode_mask(np.zeros(out["mask_shape"], np.uint8))
        elif len(caught.parts) > 1 and out.get("mask_shape"):  # the mask is the first buffer
            mask = np.frombuffer(caught.parts[1], np.uint8).reshape(out["mask_shape"])
            out["mask_png"] = encode_mask(mask)
        else:
            out["mask_png"] = None
        return out


class ModelSlot:
    """The Inspector, loaded by the first request (a second or so), so that a page nobody
    asks to inspect costs the line box no model; a request waits for the load at most
    ``wait_s``, and gets a 503 naming the problem when the package cannot be loaded (the
    page works without it)."""

    def __init__(self, cfg: LineConfig, threads: int = 1, wait_s: float = 60.0) -> None:
        self.cfg, self.threads, self.wait_s = cfg, threads, wait_s
        self.loaded = threading.Event()
        self.inspector: Inspector | None = None
        self.error = ""
        self._lock = threading.Lock()
        self._started = False

    def _load(self) -> None:
        try:
            self.inspector = Inspector(self.cfg, threads=self.threads)
            log.info("ui: POST /v1/inspect runs %s", self.inspector.model_id)
        except Exception as exc:  # open_worker makes its errors one line; anything else still is
            self.error = str(exc) if isinstance(exc, LinesideError) else f"{type(exc).__name__}: {exc}"
            log.warning("ui: POST /v1/inspect is off: %s", self.error)
        finally:
            self.loaded.set()

    def get(self) -> Inspector:
        with self._lock:
            if not self._started:
                self._started = True
                threading.Thread(target=self._load, name="ui-model", daemon=True).start()
        if not self.loaded.wait(self.wait_s):
            raise InspectError(503, "the model package is still loading; retry in a few seconds")
        if self.inspector is None:
            raise InspectError(503, f"the model package could not be loaded: {self.error}")
        return self.inspector

    def close(self) -> None:
        if self._started and self.loaded.wait(10) and self.inspector is not None:
            self.inspector.close()


OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "lineside inspection API",
        "version": "1",
        "description": "One image in, the line's decision out (docs/ui.md, docs/protocol.md).",
    },
    "paths": {
        "/v1/inspect": {
            "post": {
                "summary": "Inspect one image with the line's model package",
                "parameters": [
                    {
                        "name": "camera",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string"},
                        "description": "shape the image as this camera of the line config does "
                        "(ROI, fit) and apply its ignore mask; default: grey only, larger images tiled",
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        **{
                            t: {"schema": {"type": "string", "format": "binary"}}
                            for t in ("image/png", "image/jpeg", "image/bmp", "image/tiff")
                        },
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "properties": {"image": {"type": "string", "format": "binary"}},
                                "required": ["image"],
                            }
                        },
                    },
                },
                "responses": {
                    "200": {
                        "description": "the decision (a result header of docs/protocol.md)",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Result"}}},
                    },
                    "400": {"$ref": "#/components/responses/Error"},
                    "401": {"$ref": "#/components/responses/Error"},
                    "413": {"$ref": "#/components/responses/Error"},
                    "415": {"$ref": "#/components/responses/Error"},
                    "503": {"$ref": "#/components/responses/Error"},
                },
            }
        }
    },
    "components": {
        "responses": {
            "Error": {
                "description": "refused: 400 not an image (or an unknown camera), 401 no or wrong "
                "credentials, 413 larger than the limit, 415 not an image type, 503 model not loaded",
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {"error": {"type": "string"}},
                            "required": ["error"],
                        }
                    }
                },
            }
        },
        "schemas": {
            "Result": {
                "type": "object",
                "required": [*protocol.RESULT_FIELDS, "mask_png"],
                "properties": {
                    "cam": {"type": "string", "description": "the camera named, or `api`"},
                    "epoch": {"type": "integer"},
                    "seq": {"type": "integer", "description": "requests answered by this process"},
                    "ts": {"type": "number", "description": "when the request arrived, Unix s"},
                    "decided_ts": {"type": "number"},
                    "decision": {"type": "string", "enum": ["PASS", "FAIL", "NO_DECISION"]},
                    "reason": {"type": "string"},
                    "defect_area": {"type": "integer"},
                    "defect_count": {"type": "integer"},
                    "boxes": {
                        "type": "array",
                        "items": {
                            "type": "array",
                            "items": {"type": "integer"},
                            "minItems": 4,
                            "maxItems": 4,
                        },
                    },
                    "mask_shape": {"type": "array", "items": {"type": "integer"}},
                    "model_id": {"type": "string"},
                    "worker": {"type": "string"},
                    "backend": {"type": "string"},
                    "latency_ms": {"type": "object", "additionalProperties": {"type": "number"}},
                    "truth": {"nullable": True},
                    "mask_png": {
                        "type": "string",
                        "format": "byte",
                        "nullable": True,
                        "description": "the defect mask as a base64 PNG (255 = defect); null without one",
                    },
                },
            }
        },
        "securitySchemes": {"basic": {"type": "http", "scheme": "basic"}},
    },
}
