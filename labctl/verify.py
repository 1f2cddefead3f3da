"""verify: probe every pod pair while capturing every node's underlay, then prove from the
pcaps (Scapy, labctl.checker) that each pair crossed the wire the way the mode says, that
nothing else did, and that the pod MTU is exactly right. What "the way the mode says" and
"right" mean comes from labctl.oracle (the reference, as data), not from the plan that
configured the devices, so a wrong planner constant fails here."""

from __future__ import annotations

import fcntl
import socket
import struct
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

from labctl import checker, checks, oracle, state, store
from labctl import pairs as pair_choice
from labctl.capture import CAPTURE_ROOT, Capture
from labctl.checks.nat import outgoing_nat_checks
from labctl.controlplane.dynamics import leftovers
from labctl.modes import get_mode
from labctl.nsutil import in_netns, nsenter_argv
from labctl.plan import UNDERLAY_IF
from labctl.policy import checks as policy_checks
from labctl.probe import Result, arp_table_fulls, probe_pairs
from labctl.services.checks import (
    cluster_ip_wire_check,
    isolated_endpoints,
    policy_allows,
    service_checks,
)
from labctl.services.endpoints import compute_slices
from labctl.store import PodRecord
from labctl.topology import Topology, load_topology
from labctl.wire import CheckResult, Flow, PodLike, WireSpec, flow_between

MAX_PINGS = 64  # ping processes at once: a 20-node lab has 760 MTU probes
POD_IF = "eth0"
_SIOCGIFMTU = 0x8921
_SIOCGIFHWADDR = 0x8927


@dataclass
class Report:
    lab: str
    mode: str
    passed: bool = True
    checks: list[CheckResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    # Per protocol: ordered pod pairs probed, and how many the lab has.
    pairs: dict[str, tuple[int, int]] = field(default_factory=dict)

    def add(self, result: CheckResult) -> None:
        """Record one check; the report passes only if every check does."""
        self.checks.append(result)
        self.passed = self.passed and result.passed

    def to_dict(self) -> dict[str, Any]:
        """The report as the `verify -o json` document."""
        return asdict(self)


def _why_unreachable(src_node: str, dst_node: str, topo: Topology, warnings: list[str]) -> str:
    """The lab's own record of why a node cannot reach a peer's pods, if it has one."""
    cidr = str(topo.node_pod_cidrs[dst_node])
    for w in warnings:
        if w.startswith(f"{src_node}:") and cidr in w:
            return w
    return ""


def connectivity_checks(
    results: list[Result],
    topo: Topology,
    warnings: list[str],
    pod_node: dict[str, str],
    expect: dict[tuple[str, str], bool] | None = None,
) -> list[CheckResult]:
    """One check per ordered node pair (pods on the same node count as that node's pair):
    every pod pair answered, or, with NetworkPolicies, did exactly what Kubernetes says."""
    groups: dict[tuple[str, str], list[Result]] = {}
    for r in results:
        groups.setdefault((pod_node[r.src], pod_node[r.dst]), []).append(r)
    out = []
    for (a, b), rs in groups.items():
        want = {(r.src, r.dst): True if expect is None else expect[(r.src, r.dst)] for r in rs}
        bad = [r for r in rs if r.ok != want[(r.src, r.dst)]]
        blocked = sum(not w for w in want.values())
        name = f"connectivity {a} -> {b}"
        policy = f", {blocked} blocked by NetworkPolicy as expected" if blocked else ""
        if not bad:
            ok = len(rs) - blocked
            out.append(CheckResult(name, True, f"{ok}/{len(rs)} pod pairs answered{policy}"))
            continue
        examples = "; ".join(
            f"{r.src} -> {r.dst}: "
            + (r.detail if want[(r.src, r.dst)] else "answered although NetworkPolicy blocks it")
            for r in bad[:3]
        )
        why = _why_unreachable(a, b, topo, warnings)
        detail = f"{len(rs) - len(bad)}/{len(rs)} pod pairs as expected ({examples})"
        out.append(CheckResult(name, False, detail + (f"; because {why}" if why else "")))
    return out


def link_info(pid: int, ifname: str) -> tuple[str, int]:
    """(MAC, MTU) of `ifname` in the network namespace of `pid`, as the kernel has them."""
    with in_netns(pid):
        # The socket stays in that namespace; the ioctls look the name up there.
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        req = struct.pack("256s", ifname.encode())
        mac = fcntl.ioctl(sock.fileno(), _SIOCGIFHWADDR, req)[18:24].hex(":")
        mtu = struct.unpack("i", fcntl.ioctl(sock.fileno(), _SIOCGIFMTU, req)[16:20])[0]
    finally:
        sock.close()
    return mac, mtu


def mtu_verdict(
    name: str, expected: int, reason: str, link_mtu: int, fits: bool, over: bool
) -> CheckResult:
    """The MTU check of one pod pair: the source pod's eth0 has exactly the oracle's MTU, a
    DF packet of that size crosses to the other pod and one byte more does not."""
    ok = fits and not over and link_mtu == expected
    detail = (
        f"{expected}-byte DF packet {'passed' if fits else 'FAILED'}, "
        f"{expected + 1}-byte {'was refused' if not over else 'PASSED (MTU too large)'}; "
    )
    if link_mtu == expected:
        detail += f"pod eth0 MTU {link_mtu} ({reason})"
    else:
        wrong = "too small" if link_mtu < expected else "too large"
        detail += f"pod eth0 MTU {link_mtu} is {wrong}: expected {expected} ({reason})"
    return CheckResult(name, ok, detail)


def mtu_checks(
    pairs: Sequence[tuple[PodRecord, PodRecord]],
    mode: str,
    topo: Topology,
    pids: dict[str, int],
    icmp_allowed: dict[tuple[str, str], bool] | None = None,
) -> list[CheckResult]:
    """Per ordered node pair that `pairs` cross: a DF ping of exactly the oracle's pod MTU
    passes, one byte more fails, and the source pod's eth0 has that MTU (between the first
    of those pod pairs whose ICMP policy allows)."""
    pods = {p.key: p for pair in pairs for p in pair}
    ip_of = {k: p.ip for k, p in pods.items()}
    node_of = {k: p.node for k, p in pods.items()}
    mtu_of = {k: oracle.node_pod_mtu(mode, topo, p.node) for k, p in pods.items()}
    chosen: dict[tuple[str, str], tuple[str, str]] = {}
    for a, b in pairs:
        if a.node == b.node or (icmp_allowed and not icmp_allowed[(a.key, b.key)]):
            continue
        chosen.setdefault((a.node, b.node), (a.key, b.key))
    jobs = [
        (src, dst, size) for src, dst in chosen.values() for size in (mtu_of[src], mtu_of[src] + 1)
    ]
    passed: dict[tuple[str, str, int], bool] = {}
    for i in range(0, len(jobs), MAX_PINGS):
        wave = []
        for src, dst, size in jobs[i : i + MAX_PINGS]:
            argv = ["ping", "-n", "-q", "-c", "2", "-i", "0.2", "-W", "1", "-M", "do"]
            argv += ["-s", str(size - 28), ip_of[dst]]
            p = subprocess.Popen(
                nsenter_argv(pids[src], argv, mount=False),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            wave.append(((src, dst, size), p))
        for key, p in wave:
            passed[key] = p.wait() == 0
    link_mtu = {src: link_info(pids[src], POD_IF)[1] for src, _ in chosen.values()}
    out = []
    for src, dst in chosen.values():
        mtu = mtu_of[src]
        reason = oracle.mtu_reason(mode, topo, node_of[src])
        fits, over = passed[(src, dst, mtu)], passed[(src, dst, mtu + 1)]
        out.append(mtu_verdict(f"mtu {src} -> {dst}", mtu, reason, link_mtu[src], fits, over))
    return sorted(out, key=lambda c: c.name)


def oracle_flows(
    pods: Sequence[PodLike],
    mode: str,
    topo: Topology,
    node_macs: dict[str, str],
    pairs: Iterable[tuple[PodLike, PodLike]] | None = None,
) -> list[Flow]:
    """One Flow per ordered pair of `pods` (or per pair of `pairs`) on different nodes,
    carried as the oracle says: encapsulated between the two nodes' underlay addresses, or
    bare (to the peer node's MAC, `node_macs`, where the oracle names it as the next hop)."""
    if pairs is None:
        pairs = ((s, d) for s in pods for d in pods)
    paths: dict[tuple[str, str], oracle.Path] = {}
    out = []
    for src, dst in pairs:
        if src.node == dst.node:
            continue
        key = (src.node, dst.node)
        path = paths.get(key) or paths.setdefault(key, oracle.path(mode, topo, *key))
        out.append(
            flow_between(
                src,
                dst,
                str(topo.nodes[src.node].ip),
                str(topo.nodes[dst.node].ip),
                encap=path.carrier.encap,
                port=path.carrier.port,
                vni=path.carrier.vni,
                next_hop_mac=None if path.next_hop is None else node_macs[path.next_hop],
            )
        )
    return out


def seen_pairs(
    indexes: Iterable[checker.CaptureIndex], pods: Sequence[PodLike]
) -> list[tuple[PodLike, PodLike]]:
    """The ordered pod pairs whose packets some capture holds (probes, and service clients
    reaching their backends): what the leak check may accept, found in the traffic rather
    than by listing every pair."""
    by_ip = {p.ip: p for p in pods}
    found: dict[tuple[str, str], tuple[PodLike, PodLike]] = {}
    for index in indexes:
        for a, b in index.pairs:
            if a in by_ip and b in by_ip:
                found.setdefault((a, b), (by_ip[a], by_ip[b]))
    return list(found.values())


def oracle_wire_specs(mode: str) -> list[WireSpec]:
    """Every way the oracle lets `mode` carry pod traffic, as the checker takes them."""
    return [WireSpec(c.encap, c.port, c.vni) for c in oracle.mode_wire(mode).carriers]


def wire_checks(
    flows: list[Flow],
    indexes: dict[str, checker.CaptureIndex],
    pcaps: dict[str, Path],
    pod_cidr: IPv4Network,
    all_flows: list[Flow] | None = None,
) -> list[CheckResult]:
    """Each flow against the source node's capture, plus a leak check per capture (against
    `all_flows`: pairs whose replies a policy blocks still cross the wire one way)."""
    out: list[CheckResult] = []
    by_node: dict[str, list[Flow]] = {}
    for f in flows:
        by_node.setdefault(f.src_node, []).append(f)
    for node, path in pcaps.items():
        index = indexes[node]
        per_peer: dict[str, list[tuple[Flow, CheckResult]]] = {}
        node_flows = by_node.get(node, [])
        for flow, result in zip(
            node_flows, checker.check_flows(index, node_flows, pcap=str(path)), strict=True
        ):
            per_peer.setdefault(flow.dst_node, []).append((flow, result))
        for peer, pairs in per_peer.items():
            out.append(_merge(f"wire {node} -> {peer}", pairs, str(path)))
        # All flows, not just this node's: a bridge may flood a frame before it learns MACs.
        leak = checker.check_no_leaks(index, all_flows or flows, str(pod_cidr), pcap=str(path))
        leak.name = f"nothing else on {node}'s wire ({leak.name})"
        out.append(leak)
    return out


def _merge(name: str, pairs: list[tuple[Flow, CheckResult]], pcap: str) -> CheckResult:
    """One check per node pair: the pod pairs' verdicts folded into one readable line."""
    bad = [r for _, r in pairs if not r.passed]
    if not bad:
        # The checker's detail reads "<pods>: <how it crossed>: <counts>"; keep the how.
        how = pairs[0][1].detail.split(": ", 1)[-1]
        return CheckResult(name, True, f"{len(pairs)}/{len(pairs)} pod pairs; e.g. {how}", pcap)
    shown = " | ".join(r.detail for r in bad[:2])
    more = f" (+{len(bad) - 2} more)" if len(bad) > 2 else ""
    return CheckResult(
        name, False, f"{len(pairs) - len(bad)}/{len(pairs)} pod pairs ok; {shown}{more}", pcap
    )


def neighbour_check(before: int | None, after: int | None, failures: int) -> CheckResult | None:
    """Report when the host's shared ARP table overflowed during the probes."""
    if before is None or after is None or after == before:
        return None
    try:
        limit = Path("/proc/sys/net/ipv4/neigh/default/gc_thresh3").read_text().strip()
    except OSError:
        limit = "?"
    what = (
        f"the kernel's shared ARP table (host net.ipv4.neigh.default.gc_thresh3 = {limit}) "
        f"overflowed {after - before} times during the probes"
    )
    if not failures:
        return CheckResult("host neighbour table", True, f"{what}; probes were paced and retried")
    return CheckResult(
        "host neighbour table",
        False,
        f"{what}; {failures} probe failures may be this, not the dataplane. labctl never changes "
        "host sysctls: use fewer pods per node, or raise gc_thresh2/gc_thresh3 on the host",
    )


def verify(lab: str, with_mtu: bool = True, how: pair_choice.How = "auto") -> Report:
    """Run the whole verification of a lab that is up, from its recorded plan and objects.
    `how`: probe every pod pair, a covering sample (labctl.pairs), or decide by size."""
    started = time.monotonic()
    st = state.load(lab)
    topo = load_topology(st.topology)
    mode = get_mode(st.mode)
    plan = state.read_plan(lab)
    objects = store.load(lab)
    pods = list(objects.pods.values())
    pids = {name: rec.pid for name, rec in st.namespaces.items()}
    report = Report(lab=lab, mode=st.mode, notes=list(st.notes))
    report.notes += leftovers(plan, {n: r.pid for n, r in st.namespaces.items()}, st.mode)
    policies = objects.policies() if mode.enforces_policy else []
    # A pod answers only the protocols it declares ports for (topology pods: both on 80).
    chosen = {
        proto: pair_choice.select(
            [p for p in pods if any(x.protocol == proto.upper() for x in p.ports)],
            topo,
            policies,
            how,
        )
        for proto in ("tcp", "udp")
    }
    report.notes += [chosen[p].note(p.upper()) for p in ("tcp", "udp") if chosen[p].total]
    report.pairs = {p: (len(sel.pairs), sel.total) for p, sel in chosen.items()}
    expect = {
        proto: policy_checks.expected(objects, mode.enforces_policy, proto, None, sel.pairs)
        for proto, sel in chosen.items()
    }
    outdir = CAPTURE_ROOT / lab / st.mode
    cap = Capture(lab)
    nodes = [n.name for n in plan.node_ns()]
    cap.start({n: (pids[n], UNDERLAY_IF) for n in nodes}, outdir)
    fulls_before = arp_table_fulls()
    infos = objects.pod_infos()
    services = list(objects.services.values())
    allowed = policy_allows(objects, mode.enforces_policy)
    try:
        by_proto = {
            p: probe_pairs(chosen[p].pairs, pids, p, expect=expect[p]) for p in ("tcp", "udp")
        }
        # Pod clients only while capturing: their DNATed packets are pod-to-pod flows.
        svc_checks = service_checks(services, infos, pids, topo, allowed, externals=False)
    finally:
        pcaps = cap.stop()
    # From outside, an isolated endpoint sees the client or a node address (SNAT), which
    # only ipBlock peers can allow: those paths are the policy's business, not checked here.
    outside = [s for s in services if not isolated_endpoints(s, objects, mode.enforces_policy)]
    for s in services:
        if s not in outside:
            report.notes.append(
                f"service {s.key}: NetworkPolicy isolates its endpoints, so NodePort and "
                "externalIP paths from outside are not checked"
            )
    svc_checks += service_checks(outside, infos, pids, topo, allowed, pods_too=False)
    results = by_proto["tcp"] + by_proto["udp"]
    failures = sum(not r.ok for r in results)
    overflow = neighbour_check(fulls_before, arp_table_fulls(), failures)
    if overflow:
        report.add(overflow)
    pod_node = {p.key: p.node for p in pods}
    for proto, rs in by_proto.items():
        for c in connectivity_checks(rs, topo, st.warnings, pod_node, expect[proto]):
            if proto == "udp":
                c.name = c.name.replace("connectivity", "connectivity udp")
            report.add(c)
    # Pairs a policy blocks send nothing back: the wire is checked where every protocol that
    # probed the pair passes.
    probed: dict[tuple[str, str], tuple[PodRecord, PodRecord]] = {}
    for sel in chosen.values():
        probed.update({(s.key, d.key): (s, d) for s, d in sel.pairs})
    open_pairs = [
        pair for k, pair in probed.items() if all(e.get(k, True) for e in expect.values())
    ]
    node_macs = {n: link_info(pids[n], UNDERLAY_IF)[0] for n in nodes}
    indexes = {node: checker.index_pcap(path) for node, path in pcaps.items()}
    flows = oracle_flows(pods, st.mode, topo, node_macs, open_pairs)
    seen = oracle_flows(pods, st.mode, topo, node_macs, seen_pairs(indexes.values(), pods))
    for c in wire_checks(flows, indexes, pcaps, topo.cluster.podCIDR, all_flows=seen):
        report.add(c)
    for c in svc_checks:
        report.add(c)
    if services:
        backends = {
            ep.address for s in compute_slices(services, infos).values() for ep in s.endpoints
        }
        report.add(cluster_ip_wire_check(indexes, topo.cluster.serviceCIDR, backends))
    for c in checks.run(mode.checks, topo, plan, pids):
        report.add(c)
    for c in outgoing_nat_checks(topo, pods, pids):
        report.add(c)
    if mode.enforces_policy:
        for c in policy_checks.table_checks(policy_checks.compiled(objects, nodes), pids):
            report.add(c)
    if overflow is not None and not overflow.passed:
        # The kernel drops for want of ARP entries: an MTU verdict would only repeat that.
        report.notes.append("MTU checks skipped: the host's ARP table overflowed")
    elif with_mtu and len({p.node for p in pods}) > 1:
        mtu_pairs = chosen["tcp"].pairs
        icmp = policy_checks.expected(objects, mode.enforces_policy, "icmp", None, mtu_pairs)
        for c in mtu_checks(mtu_pairs, st.mode, topo, pids, icmp):
            report.add(c)
    report.seconds = round(time.monotonic() - started, 3)
    return report


def verify_pcap(path: Path, mode: str, pod_cidr: str) -> Report:
    """Check a capture taken anywhere (a real cluster) against what `mode` puts on the wire."""
    wire = oracle_wire_specs(mode)
    report = Report(lab="(pcap)", mode=mode)
    index = checker.index_pcap(path)
    for c in checker.check_capture_for_mode(index, wire, pod_cidr, pcap=str(path)):
        report.add(c)
    return report
