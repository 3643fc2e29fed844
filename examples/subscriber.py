"""A minimal results subscriber: prints every decision of a running line.

    python examples/subscriber.py tcp://127.0.0.1:5570            # all cameras
    python examples/subscriber.py tcp://127.0.0.1:5570 cam1       # one camera

Needs only pyzmq and numpy. The protocol is in docs/protocol.md; a PLC/MES bridge
starts from here and replaces ``handle`` with its own output.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import zmq


def handle(header: dict, mask: np.ndarray | None) -> None:
    """What to do with one decision: here, print it."""
    lat = header["latency_ms"]
    pixels = int((mask > 0).sum()) if mask is not None else 0
    print(
        f"{header['cam']}#{header['seq']:<6} {header['decision']:<11} {header['reason']:<40} "
        f"mask px={pixels:<6} e2e={lat['end_to_end']:.0f} ms (infer {lat.get('infer', 0):.0f} ms)",
        flush=True,
    )


def main(endpoint: str, camera: str = "") -> None:
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
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
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(*sys.argv[1:3])
