"""A TCP_RR-style request/response test (netperf is not in Debian main): one connection, one
outstanding request of SIZE bytes, the same size echoed back, each round trip timed on the
client. Runs inside pods: `python -m labctl.bench.rr serve PORT` prints "ready" when it
listens and answers one connection; `python -m labctl.bench.rr client IP PORT SECONDS`
prints one JSON line {"count", "seconds", "rate", "p50", "p99"} (microseconds).

Python adds the same few microseconds per transaction to every row, so compare ratios."""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time

from labctl.bench.model import percentile

SIZE = 1
WARMUP = 200  # round trips before timing: ARP, slow start, caches


def serve(port: int) -> None:
    """Echo every request on one accepted connection until the client closes it."""
    with socket.create_server(("", port)) as srv:
        print("ready", flush=True)
        conn, _ = srv.accept()
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            while data := conn.recv(SIZE):
                conn.sendall(data)


def client(ip: str, port: int, seconds: float) -> dict[str, float]:
    """Round trips for `seconds` after a warm-up; rate per second and p50/p99 in us."""
    rtts: list[int] = []
    req = b"x" * SIZE
    with socket.create_connection((ip, port), timeout=5) as conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(WARMUP):
            conn.sendall(req)
            _recv_exactly(conn, SIZE)
        clock = time.perf_counter_ns
        start = clock()
        end = start + int(seconds * 1e9)
        now = start
        while now < end:
            conn.sendall(req)
            _recv_exactly(conn, SIZE)
            t = clock()
            rtts.append(t - now)
            now = t
    took = (now - start) / 1e9
    us = [r / 1000 for r in rtts]
    return {
        "count": len(us),
        "seconds": round(took, 3),
        "rate": round(len(us) / took, 1),
        "p50": round(percentile(us, 50), 1),
        "p99": round(percentile(us, 99), 1),
    }


def _recv_exactly(conn: socket.socket, size: int) -> None:
    got = 0
    while got < size:
        chunk = conn.recv(size - got)
        if not chunk:
            raise ConnectionError("server closed the connection mid round trip")
        got += len(chunk)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m labctl.bench.rr`."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("port", type=int)
    c = sub.add_parser("client")
    c.add_argument("ip")
    c.add_argument("port", type=int)
    c.add_argument("seconds", type=float)
    args = parser.parse_args(argv)
    if args.cmd == "serve":
        serve(args.port)
    else:
        print(json.dumps(client(args.ip, args.port, args.seconds)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
