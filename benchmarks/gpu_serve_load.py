"""A bounded loopback load on ``headstart serve``: images/s and latency at a fixed concurrency.

    python benchmarks/gpu_serve_load.py --port 8765 --images DIR [--concurrency 64] [--seconds 20]

``concurrency`` client threads each POST one image file (raw bytes,
``Content-Type: image/jpeg`` or ``image/png``) to ``/v1/predict`` on
127.0.0.1, wait for the answer, and send the next, until ``--seconds`` have
passed or ``--max_requests`` were sent.  The server must already be up (the
script waits for ``/v2/health/ready`` first).  Prints one JSON object: answers
by status, images/s, and latency percentiles in milliseconds.
"""

from __future__ import annotations

import argparse
import http.client
import json
import threading
import time
from pathlib import Path

import numpy as np


def wait_ready(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/v2/health/ready")
            if conn.getresponse().status == 200:
                return True
        except OSError:
            pass
        time.sleep(0.5)
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--images", type=Path, required=True, help="a folder of JPEG or PNG files")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--max_requests", type=int, default=200_000)
    parser.add_argument("--ready_timeout", type=float, default=120.0)
    args = parser.parse_args()

    files = sorted(p for p in args.images.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:512]
    if not files:
        raise SystemExit(f"no images in {args.images}")
    bodies = [(p.read_bytes(), "image/png" if p.suffix.lower() == ".png" else "image/jpeg") for p in files]
    if not wait_ready(args.port, args.ready_timeout):
        print(json.dumps({"error": f"server on port {args.port} not ready after {args.ready_timeout:.0f} s"}))
        return

    lock = threading.Lock()
    sent = [0]
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    deadline = time.monotonic() + args.seconds

    def client(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", args.port, timeout=60)
        i = k
        while time.monotonic() < deadline:
            with lock:
                if sent[0] >= args.max_requests:
                    return
                sent[0] += 1
            body, kind = bodies[i % len(bodies)]
            i += args.concurrency
            start = time.perf_counter()
            try:
                conn.request("POST", "/v1/predict", body=body, headers={"Content-Type": kind})
                response = conn.getresponse()
                response.read()
                status = str(response.status)
            except OSError as exc:
                status = type(exc).__name__
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", args.port, timeout=60)
            elapsed = time.perf_counter() - start
            with lock:
                statuses[status] = statuses.get(status, 0) + 1
                if status == "200":
                    latencies.append(elapsed)
        conn.close()

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(args.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=args.seconds + 90)
    wall = time.perf_counter() - start
    ms = np.array(latencies) * 1000 if latencies else np.zeros(1)
    print(json.dumps({
        "concurrency": args.concurrency, "seconds": round(wall, 2), "requests": sum(statuses.values()),
        "statuses": statuses, "images_per_s": round(len(latencies) / wall, 1),
        "latency_ms": {q: round(float(np.percentile(ms, p)), 1) for q, p in
                       (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))},
        "images_from": str(args.images), "distinct_images": len(bodies),
    }, indent=2))


if __name__ == "__main__":
    main()
