"""A minimal results subscriber: prints every decision of a running line.

    python examples/subscriber.py tcp://127.0.0.1:5570            # all cameras
    python examples/subscriber.py tcp://127.0.0.1:5570 cam1       # one camera
    python examples/subscriber.py tcp://linebox:5570 --keys DIR   # a line with CURVE keys

Needs only pyzmq and numpy. The protocol is in docs/protocol.md; a PLC/MES bridge
starts from here and replaces ``handle`` with its own output.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import zmq
import zmq.auth


def handle(header: dict, mask: np.ndarray | None) -> None:
    """What to do with one decision: here, print it."""
    lat = header["latency_ms"]
    pixels = int((mask > 0).sum()) if mask is not None else 0
    print(
        f"{header['cam']}#{header['seq']:<6} {header['decision']:<11} {header['reason']:<40} "
        f"mask px={pixels:<6} e2e={lat['end_to_end']:.0f} ms (infer {lat.get('infer', 0):.0f} ms)",
        flush=True,
    )


def use_keys(sock: zmq.Socket, folder: Path) -> None:
    """Connect as a CURVE client (docs/security.md): the line's public key (``server.key``)
    and this box's only client pair (``clients/NAME.key_secret``), set before connect."""
    pairs = sorted((folder / "clients").glob("*.key_secret"))
    if len(pairs) != 1:
        sys.exit(f"{folder}/clients must hold exactly one client pair, not {len(pairs)}")
    server_public, _ = zmq.auth.load_certificate(folder / "server.key")
    public, secret = zmq.auth.load_certificate(pairs[0])
    sock.setsockopt(zmq.CURVE_SERVERKEY, server_public)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, secret)


def main(endpoint: str, camera: str = "", keys: str = "") -> None:
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    if keys:
        use_keys(sub, Path(keys))
    sub.setsockopt(zmq.SUBSCRIBE, f"result.{camera}".encode())
    sub.setsockopt(zmq.SUBSCRIBE, b"status")
    sub.connect(endpoint)
    try:
        while True:
            if not sub.poll(1000):
                continue  # a timeout keeps Ctrl-C responsive
            topic, header_raw, *rest = sub.recv_multipart()
            header = json.loads(header_raw)
            if topic == b"status":
                t = header["totals"]
                print(f"-- status: {json.dumps(t)}", flush=True)
                continue
            mask = None
            if rest and rest[0] and "mask_shape" in header:
                mask = np.frombuffer(rest[0], np.uint8).reshape(header["mask_shape"])
            handle(header, mask)
    except KeyboardInterrupt:
        pass
    finally:
        sub.close()
        ctx.term()


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Print every decision of a running line.")
    parser.add_argument("endpoint", help="the line's endpoints.publish, e.g. tcp://127.0.0.1:5570")
    parser.add_argument("camera", nargs="?", default="", help="only this camera's results")
    parser.add_argument("--keys", default="", help="CURVE keys folder (docs/security.md)")
    args = parser.parse_args()
    main(args.endpoint, args.camera, args.keys)
