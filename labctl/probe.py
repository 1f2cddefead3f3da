"""Pod-to-pod probes from one process: sockets are opened inside each source pod's namespace
and driven together from one selector, so a 200-pod matrix needs no per-pod processes."""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import selectors
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from labctl.nsutil import in_netns
from labctl.store import PodRecord

BATCH = 400
HTTP_REQUEST = b"GET / HTTP/1.1\r\nHost: labctl-probe\r\nConnection: close\r\n\r\n"


@dataclass
class Result:
    src: str
    dst: str
    ok: bool
    detail: str  # "ok" or why not (refused, timeout, unreachable, wrong pod answered)


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < min(hard, 4 * BATCH):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4 * BATCH), hard))


def default_port(pod: PodRecord, protocol: str) -> int:
    """The first declared port of that protocol (80 if none)."""
    for p in pod.ports:
        if p.protocol == protocol.upper():
            return p.containerPort
    return 80


ARP_STATS = "/proc/net/stat/arp_cache"


def arp_table_fulls() -> int | None:
    """How often the kernel's ARP table has been full ("neighbor table overflow").

    Every namespace shares that one table, sized by the host's gc_thresh3, which a lab must
    not change; reading its statistics changes nothing.
    """
    try:
        with open(ARP_STATS) as f:
            lines = f.read().split("\n")
    except OSError:
        return None
    header = lines[0].split()
    if "table_fulls" not in header:
        return None
    col = header.index("table_fulls")
    return sum(int(line.split()[col], 16) for line in lines[1:] if line.strip())


NOT_PROBED = "not probed: the host's ARP table overflowed"


def probe(
    pods: Sequence[PodRecord],
    pids: dict[str, int],
    protocol: str = "tcp",
    port: int | None = None,
    timeout: float = 2.0,
    expect: Mapping[tuple[str, str], bool] | None = None,
) -> list[Result]:
    """Probe every ordered pod pair (pods never probe themselves); see probe_pairs."""
    all_pairs = [(s, d) for s in pods for d in pods if s.key != d.key]
    return probe_pairs(all_pairs, pids, protocol, port, timeout, expect)


def probe_pairs(
    all_pairs: Sequence[tuple[PodRecord, PodRecord]],
    pids: dict[str, int],
    protocol: str = "tcp",
    port: int | None = None,
    timeout: float = 2.0,
    expect: Mapping[tuple[str, str], bool] | None = None,
) -> list[Result]:
    """Probe each ordered pod pair of `all_pairs`, in concurrent batches.

    Pairs that timed out get one more try, unless `expect` says policy blocks them (a blocked
    probe gives up after one `timeout`). If the host's shared ARP table overflows, the
    kernel drops packets for reasons that have nothing to do with the dataplane, and every
    further probe would only time out: probing stops and the rest are reported NOT_PROBED.
    """
    _raise_fd_limit()
    results: dict[tuple[str, str], Result] = {}
    fulls = arp_table_fulls()

    def run(pairs: Sequence[tuple[PodRecord, PodRecord]]) -> bool:
        for i in range(0, len(pairs), BATCH):
            for r in _batch(pids, pairs[i : i + BATCH], port, timeout, protocol):
                results[(r.src, r.dst)] = r
            now = arp_table_fulls()
            if fulls is not None and now is not None and now > fulls:
                return False
        return True

    if run(all_pairs):
        retry = [
            (s, d)
            for s, d in all_pairs
            if results[(s.key, d.key)].detail.startswith("timeout")
            and (expect is None or expect[(s.key, d.key)])
        ]
        # All pairs timing out is a dead dataplane, not a lost packet: don't wait on it twice.
        if retry and len(retry) < len(all_pairs):
            run(retry)
    return [
        results.get((s.key, d.key)) or Result(s.key, d.key, False, NOT_PROBED) for s, d in all_pairs
    ]


def _target(dst: PodRecord, port: int | None, protocol: str) -> tuple[str, int]:
    return dst.ip, port or default_port(dst, protocol)


def _batch(
    pids: dict[str, int],
    pairs: Sequence[tuple[PodRecord, PodRecord]],
    port: int | None,
    timeout: float,
    protocol: str,
) -> list[Result]:
    """Probe `pairs` concurrently: sockets opened in each source pod, one selector for all."""
    sel = selectors.DefaultSelector()
    socks: dict[int, socket.socket] = {}
    received: dict[int, bytearray] = {}
    results: dict[int, Result] = {}
    tcp = protocol == "tcp"
    kind = socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM
    for n, (s, d) in enumerate(pairs):
        with in_netns(pids[s.key]):
            sock = socket.socket(socket.AF_INET, kind)
            sock.setblocking(False)
            # UDP connect() too, so ICMP unreachables come back as errors on this socket.
            code = sock.connect_ex(_target(d, port, protocol))
        if code not in (0, errno.EINPROGRESS):
            results[n] = Result(s.key, d.key, False, os.strerror(code))
            sock.close()
            continue
        socks[n] = sock
        received[n] = bytearray()
        # TCP: send the HTTP request once connected, then read the answer to its end.
        sel.register(sock, selectors.EVENT_WRITE if tcp else selectors.EVENT_READ, n)
    deadline = time.monotonic() + timeout
    # UDP may lose a datagram to neighbour resolution: resend a few times. TCP retries itself.
    resend_every = timeout if tcp else timeout / 4
    next_send = deadline if tcp else time.monotonic()

    def finish(n: int, err: int) -> None:
        sock = socks.pop(n)
        sel.unregister(sock)
        sock.close()
        src, dst = pairs[n]
        results[n] = _judge(src, dst, bytes(received[n]), err, tcp)

    while socks and time.monotonic() < deadline:
        now = time.monotonic()
        if now >= next_send:
            for sock in socks.values():
                # An error here comes back from recv below, with the pair it belongs to.
                with contextlib.suppress(OSError):
                    sock.send(b"probe")
            next_send = now + resend_every
        for key, events in sel.select(max(0.0, min(next_send, deadline) - time.monotonic())):
            n = key.data
            sock = socks[n]
            if events & selectors.EVENT_WRITE:
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    finish(n, err)
                    continue
                try:
                    sock.send(HTTP_REQUEST)
                except OSError as e:
                    finish(n, e.errno or errno.EIO)
                    continue
                sel.modify(sock, selectors.EVENT_READ, n)
                continue
            try:
                data, err = sock.recv(4096), 0
            except BlockingIOError:
                continue
            except OSError as e:
                data, err = b"", e.errno or 0
            received[n] += data
            if not tcp or not data:  # UDP: one datagram; TCP: the server closes when done
                finish(n, err)
    for n, sock in socks.items():
        sock.close()
        results[n] = Result(
            pairs[n][0].key, pairs[n][1].key, False, f"timeout (no {protocol} answer)"
        )
    sel.close()
    return [results[n] for n in range(len(pairs))]


def answered_by(data: bytes, tcp: bool) -> str:
    """Who answered: the first line of the HTTP body (TCP) or of the datagram (UDP)."""
    text = data.decode(errors="replace")
    if tcp:
        head, sep, body = text.partition("\r\n\r\n")
        if not sep or not head.startswith("HTTP/1.1 200"):
            return text.strip()[:60]
        text = body
    return text.strip().split("\n", 1)[0] if text.strip() else ""


def _judge(s: PodRecord, d: PodRecord, data: bytes, err: int, tcp: bool) -> Result:
    if err:
        return Result(s.key, d.key, False, os.strerror(err))
    answer = answered_by(data, tcp)
    if answer == d.key:
        return Result(s.key, d.key, True, "ok")
    if not answer:
        return Result(s.key, d.key, False, "connection closed without an answer")
    return Result(s.key, d.key, False, f"answered by {answer}, not {d.key}")


def http_get(pid: int, ip: str, port: int, timeout: float) -> str:
    """One HTTP GET from the namespace of `pid`; the response body (OSError if none)."""
    with in_netns(pid):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with sock:
        sock.settimeout(timeout)
        sock.connect((ip, port))
        sock.sendall(HTTP_REQUEST)
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    head, sep, body = data.decode(errors="replace").partition("\r\n\r\n")
    if not sep or not head.startswith("HTTP/1.1 200"):
        raise OSError(f"not an HTTP 200 answer: {head[:40]!r}")
    return body


def udp_ask(pid: int, ip: str, port: int, timeout: float) -> str:
    """One UDP datagram from the namespace of `pid`; the answer's text (OSError if none)."""
    with in_netns(pid):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        sock.settimeout(timeout / 3)
        sock.connect((ip, port))
        for _ in range(3):  # a datagram may be lost to neighbour resolution
            sock.send(b"probe")
            try:
                return sock.recv(2048).decode(errors="replace")
            except TimeoutError:
                continue
    raise TimeoutError(f"no UDP answer from {ip}:{port}")
