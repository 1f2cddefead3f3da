"""Proving a walk: tcpdump on every interface the walk predicted, one real packet from SRC,
then per hop what the capture shows beside what the walk said it would show.

A hop is ok when its capture holds a packet of the predicted (inner) address pair carried
as predicted: encapsulation, UDP port, VNI, outer addresses and, where the frame has one,
the Ethernet destination. Nothing seen, or seen differently, fails the hop.
"""

from __future__ import annotations

import os
import subprocess
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labctl.capture import Capture
from labctl.checker import CaptureIndex, index_pcap
from labctl.nsutil import nsenter_argv
from labctl.probe import http_get, udp_ask
from labctl.state import LAB_ENV
from labctl.trace.walk import Hop, Json, Walk

TIMEOUT = 2.0  # seconds SRC waits for an answer (a dropped packet costs this much)
_CARRIER_KEYS = ("encap", "port", "vni", "outer_src", "outer_dst")


@dataclass
class Answer:
    """What came back to SRC: a line for people, and who answered (a pod's `ns/name`, an
    external host's name) when the server said so."""

    text: str
    who: str | None = None


@dataclass
class Proof:
    """The path the real packet took, each hop compared with its capture."""

    walk: Walk
    answer: Answer
    endpoint: str | None  # kube-proxy's pick ("ip:port"), when the walk forked at a DNAT
    passed: bool


def send(pid: int, protocol: str, dst: str, port: int | None, lab: str) -> Answer:
    """One real packet from the namespace of `pid`: an HTTP GET (TCP), a datagram (UDP) or
    one echo request (ICMP)."""
    try:
        if protocol == "tcp":
            lines = http_get(pid, dst, port or 80, TIMEOUT).splitlines()
            who = lines[0].strip() if lines else ""
            # The servers' second line is the client address they saw: proof of any SNAT.
            saw = f" (it saw {lines[1].strip()})" if len(lines) > 1 else ""
            return Answer(f"HTTP 200 from {who}{saw}", who)
        if protocol == "udp":
            who = udp_ask(pid, dst, port or 80, TIMEOUT).strip()
            return Answer(f"UDP echo from {who}", who)
    except ConnectionRefusedError:
        back = "a TCP RST" if protocol == "tcp" else "an ICMP port unreachable"
        return Answer(f"refused: {back} came back, so the path works but nothing listens")
    except OSError as e:
        return Answer(f"no answer ({e or type(e).__name__})")
    ping = subprocess.run(
        nsenter_argv(pid, ["ping", "-n", "-c", "1", "-W", str(int(TIMEOUT)), dst], mount=False),
        capture_output=True,
        text=True,
        env=dict(os.environ, **{LAB_ENV: lab}),
    )
    return Answer("echo reply" if ping.returncode == 0 else "no echo reply")


def _observations(index: CaptureIndex, src: str, dst: str) -> list[tuple[Json, int]]:
    """Packets of the pair src -> dst in a capture, as dicts like a hop's prediction."""
    out = []
    for obs, count in Counter(index.pairs.get((src, dst), Counter())).most_common():
        seen: Json = {"src": src, "dst": dst, "encap": obs.carrier.encap}
        if obs.carrier.encap != "bare":
            seen.update(outer_src=obs.outer_src, outer_dst=obs.outer_dst)
        if obs.carrier.port is not None:
            seen["port"] = obs.carrier.port
        if obs.carrier.vni is not None:
            seen["vni"] = obs.carrier.vni
        if obs.eth_dst is not None:
            seen["eth_dst"] = obs.eth_dst
        out.append((seen, count))
    return out


def _differences(predicted: Json, seen: Json) -> list[str]:
    out = [
        f"{k} {seen.get(k)} (predicted {predicted[k]})"
        for k in _CARRIER_KEYS
        if k in predicted and seen.get(k) != predicted[k]
    ]
    if "eth_dst" in predicted and "eth_dst" in seen and seen["eth_dst"] != predicted["eth_dst"]:
        out.append(f"eth_dst {seen['eth_dst']} (predicted {predicted['eth_dst']})")
    return out


def compare(hop: Hop, index: CaptureIndex | None) -> None:
    """Fill `hop.seen` and `hop.ok` from the capture of its interface."""
    pred = hop.predicted
    if hop.capture is None or not pred:
        # A decision with no interface of its own to watch (the packet never left SRC).
        hop.seen, hop.ok = {"note": "nothing to capture here"}, True
        return
    if index is None:
        hop.seen, hop.ok = {"problem": "no capture"}, False
        return
    found = _observations(index, pred["src"], pred["dst"])
    for seen, count in found:
        if not _differences(pred, seen):
            hop.seen, hop.ok = {**seen, "packets": count}, True
            return
    if found:
        seen, count = found[0]
        hop.seen = {**seen, "packets": count, "problem": "; ".join(_differences(pred, seen))}
        hop.ok = False
        return
    # Not the predicted pair: show what carried either address instead (an unpredicted
    # NAT, another source), else say nothing came by.
    others = [
        pair
        for pair in index.pairs
        if pred["dst"] in pair or (pred["src"] is not None and pred["src"] in pair)
    ]
    if others:
        seen, count = _observations(index, *others[0])[0]
        hop.seen = {**seen, "packets": count, "problem": "a different address pair"}
    else:
        hop.seen = {"packets": 0, "problem": "nothing seen"}
    hop.ok = False


def _choose(walk: Walk, answer: Answer, pod_ips: Mapping[str, str]) -> tuple[str | None, Walk]:
    """The path the packet took: the endpoint that answered, else the best-matching one."""
    paths = walk.paths()
    if len(paths) == 1:
        return paths[0]
    ip = pod_ips.get(answer.who or "")
    for key, path in paths:
        if key is not None and ip is not None and key.split(":")[0] == ip:
            return key, path
    return max(paths, key=lambda kp: sum(bool(h.ok) for h in kp[1].hops))


def prove(
    lab: str,
    walk: Walk,
    pids: Mapping[str, int],
    src_ns: str,
    protocol: str,
    dst_ip: str,
    port: int | None,
    outdir: Path,
    pod_ips: Mapping[str, str],
) -> Proof:
    """Capture every predicted interface (of every DNAT branch), send one packet from
    `src_ns`, compare hop by hop on the path it took."""
    wanted: dict[tuple[str, str], str] = {}
    for _, path in walk.paths():
        for hop in path.hops:
            if hop.capture is not None and (hop.ns, hop.capture) not in wanted:
                wanted[(hop.ns, hop.capture)] = f"{len(wanted):02d}-{hop.ns.replace('/', '_')}"
    for stale in outdir.glob("*.pcap") if outdir.is_dir() else []:
        stale.unlink()
    cap = Capture(lab)
    targets = {name: (pids[ns], iface) for (ns, iface), name in wanted.items()}
    cap.start(targets, outdir)
    try:
        answer = send(pids[src_ns], protocol, dst_ip, port, lab)
    finally:
        files = cap.stop()
    indexes = {key: index_pcap(files[name]) for key, name in wanted.items()}
    for _, path in walk.paths():
        for hop in path.hops:
            compare(hop, indexes.get((hop.ns, hop.capture or "")))
    endpoint, path = _choose(walk, answer, pod_ips)
    passed = path.reached and all(h.ok for h in path.hops)
    return Proof(path, answer, endpoint, passed)


def proof_json(proof: Proof, src: str, dst: str, protocol: str, port: int | None) -> Any:
    """The `trace -o json` document."""
    return {
        "src": src,
        "dst": dst,
        "protocol": protocol,
        "port": port,
        "hops": [h.to_json() for h in proof.walk.hops],
        "reached": proof.walk.reached,
        "reason": proof.walk.reason,
        "endpoint": proof.endpoint,
        "answer": proof.answer.text,
        "passed": proof.passed,
    }
