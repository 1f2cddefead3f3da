"""The packet walk of `labctl trace`: from SRC's namespace to DST, one decision per hop, each
read from kernel state (routes, neighbours, FDB entries, devices, netfilter tables).

Pure: every piece of kernel state comes through a :class:`StateReader` (live.py reads real
namespaces; unit tests replay recorded JSON). The lab's recorded plan and object store only
say what is behind a device: which pod a veth or bridge port leads to, which namespace on a
segment owns an address, which userspace datapath reads a TUN device, and which routes the
CNI agent meant to program (so a missing one can be named).

In each namespace the walk asks the kernel what `ip route get DST from SRC iif DEV` answers
(the matched route and its protocol), then follows the output device: a bridge (neighbour,
then FDB entry, then the port's veth), a veth (its peer namespace), a VXLAN device (neighbour:
overlay next hop -> VTEP MAC, FDB: MAC -> outer destination node), an IPIP device or TUN
(outer node IPs), or the underlay (the segment, then whoever owns the next hop there). On
the way it applies kube-proxy's DNAT (one branch per endpoint: the real packet says which
was taken), names Felix-style policy chains with the truth table's verdict, and masquerading.
"""

from __future__ import annotations

import ipaddress
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

from labctl.modes import get_mode
from labctl.plan import Plan
from labctl.policy.compile import endpoint_chain
from labctl.policy.evaluate import Direction, allowed
from labctl.probe import default_port
from labctl.store import PodRecord, Store

Json = dict[str, Any]
MAX_HOPS = 32
PROTOCOLS = ("tcp", "udp", "icmp")
#: Bytes each encapsulation adds in front of the inner IP packet.
OVERHEAD = {
    "vxlan": (50, "outer IP 20 + UDP 8 + VXLAN 8 + inner Ethernet 14"),
    "ipip": (20, "outer IP 20"),
    "udp": (28, "outer IP 20 + UDP 8"),
}
_PROTO_NOTE = {
    "kernel": "connected",
    "boot": "written by the CNI agent",
    "static": "FRR staticd",
    "bgp": "learned by BGP",
    "80": "Felix",
}
_DROP_TYPES = ("blackhole", "unreachable", "prohibit", "throw")


class NoRoute(Exception):
    """A route lookup failed; the message is the kernel's answer (Network is unreachable)."""


class TraceInputError(ValueError):
    """SRC or DST names nothing in the lab."""


class StateReader(Protocol):
    """Kernel state of the lab's namespaces, as iproute2 and nft print it with -j."""

    def links(self, ns: str) -> list[Json]:
        """`ip -j -d addr show`: devices with kind, master, MAC, MTU and addresses."""

    def neighbours(self, ns: str) -> list[Json]:
        """`ip -j neigh show`."""

    def fdb(self, ns: str) -> list[Json]:
        """`bridge -j fdb show`."""

    def routes(self, ns: str) -> list[Json]:
        """`ip -j -d route show table main`."""

    def route_get(self, ns: str, dst: str, src: str | None, iif: str | None) -> Json:
        """`ip -j -d route get fibmatch DST [from SRC] [iif DEV]`'s entry (with its protocol),
        plus the chosen `prefsrc` when there is no iif; NoRoute if the kernel has none."""

    def nft_table(self, ns: str, table: str) -> list[Json] | None:
        """`nft -j list table ip TABLE`'s objects; None when there is no such table."""

    def iptables_nat(self, ns: str) -> str:
        """`iptables-save -t nat`."""

    def sysctl(self, ns: str, key: str) -> str | None:
        """A sysctl of the namespace (dotted key); None if it has no such key."""


@dataclass(frozen=True)
class Endpoint:
    """SRC or DST of a trace."""

    name: str
    kind: Literal["pod", "node", "router", "external", "service", "ip"]
    ip: str
    ns: str | None = None  # the lab namespace it lives in (None: a Service, a bare address)
    port: int | None = None  # a Service's first port
    protocol: str | None = None  # that port's protocol


@dataclass
class Hop:
    """One decision in one namespace, and what a capture on `capture` should show."""

    ns: str
    in_dev: str | None
    out_dev: str | None
    action: str  # route, switch, encapsulate, decapsulate, deliver, drop
    detail: str
    capture: str | None = None  # the interface of `ns` that proves this hop
    predicted: Json = field(default_factory=dict)
    seen: Json | None = None
    ok: bool | None = None  # None until compared with a capture

    def to_json(self) -> Json:
        """The hop as `trace -o json` prints it."""
        return {
            "ns": self.ns,
            "in_dev": self.in_dev,
            "out_dev": self.out_dev,
            "action": self.action,
            "detail": self.detail,
            "capture": self.capture,
            "predicted": self.predicted,
            "seen": self.seen,
            "ok": self.ok,
        }


@dataclass
class Walk:
    """The hops from SRC on; at a kube-proxy DNAT, one continuation per endpoint."""

    hops: list[Hop]
    reached: bool
    reason: str  # where it was delivered, or why it stops
    branches: dict[str, Walk] = field(default_factory=dict)  # "ip:port" -> the rest

    def paths(self) -> list[tuple[str | None, Walk]]:
        """Every complete path, flattened, with the endpoint its DNAT picked (None: no DNAT)."""
        if not self.branches:
            return [(None, self)]
        return [
            (key, Walk([*self.hops, *leaf.hops], leaf.reached, leaf.reason))
            for key, branch in self.branches.items()
            for _, leaf in branch.paths()
        ]


@dataclass(frozen=True)
class _Packet:
    src: str | None  # None until the kernel picks a source (a node or router sending)
    dst: str
    port: int | None
    mark: str = ""  # kube-proxy's masquerade mark: the rule that set it


@dataclass(frozen=True)
class _Outer:
    encap: str  # vxlan | ipip | udp
    src: str
    dst: str
    port: int | None = None
    vni: int | None = None


@dataclass(frozen=True)
class _At:
    """Where the packet is: namespace, arrival device, the packet, its outer header."""

    ns: str
    in_dev: str | None
    pkt: _Packet
    outer: _Outer | None = None
    # Arrived on a bridge port addressed to another port's MAC: switched, not routed.
    switch_to: str | None = None
    # in_dev is a bridge: the port the frame came in by. Captures watch ports, not the
    # bridge: tcpdump makes a bridge promiscuous, and a promiscuous bridge also passes
    # frames it forwards up to the host, which routes them again.
    port: str | None = None
    dnated: bool = False  # kube-proxy rewrote the destination in this namespace


@dataclass
class _Step:
    hop: Hop
    nxt: _At | None = None
    reached: bool = False
    reason: str = ""


def resolve_endpoint(name: str, plan: Plan, store: Store, *, dst: bool) -> Endpoint:
    """SRC or DST as `labctl exec` names it (NS/POD or POD, node, router, external host), or
    (DST only) `svc/NS/NAME` or an IPv4 address."""
    if name.startswith("svc/"):
        if not dst:
            raise TraceInputError(f"SRC {name!r}: a Service cannot send; trace from a pod")
        key = name.removeprefix("svc/")
        svc = store.services.get(key)
        if svc is None:
            known = ", ".join(f"svc/{k}" for k in sorted(store.services)) or "none"
            raise TraceInputError(f"DST {name!r}: no such Service (known: {known})")
        if not svc.spec.clusterIP or svc.spec.clusterIP == "None":
            raise TraceInputError(f"DST {name!r} has no ClusterIP (headless): trace a pod")
        first = svc.spec.ports[0]
        ip = svc.spec.clusterIP
        return Endpoint(name, "service", ip, None, first.port, first.protocol.lower())
    pod = store.pods.get(name)
    if pod is None:
        matches = [p for p in store.pods.values() if p.name == name]
        pod = matches[0] if len(matches) == 1 else None
    if pod is not None:
        return Endpoint(pod.key, "pod", pod.ip, pod.key)
    nsp = plan.namespaces.get(name)
    if nsp is not None and nsp.role != "pod" and nsp.addresses:
        ip = nsp.addresses[0].cidr.split("/")[0]
        return Endpoint(name, nsp.role, ip, name)
    if dst:
        try:
            return Endpoint(name, "ip", str(ipaddress.IPv4Address(name)))
        except ValueError:
            pass
    hosts = [n for n, p in plan.namespaces.items() if p.role != "pod"]
    what = "DST" if dst else "SRC"
    raise TraceInputError(
        f"{what} {name!r} is not a pod (NS/POD), node, router or external host of this lab "
        f"({', '.join(hosts)}{', svc/NS/NAME or an IP' if dst else ''})"
    )


def walk(
    plan: Plan,
    store: Store,
    reader: StateReader,
    src: Endpoint,
    dst: Endpoint,
    protocol: str,
    port: int | None,
) -> Walk:
    """Walk a `protocol` packet (to `port`) from `src` to `dst` through the live state."""
    if src.ns is None:
        raise TraceInputError(f"SRC {src.name!r} is not in a namespace of the lab")
    walker = _Walker(plan, store, reader, protocol, dst)
    first = _At(src.ns, None, _Packet(src.ip if src.kind == "pod" else None, dst.ip, port))
    return walker.run(first, [])


def _net(text: str) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network("0.0.0.0/0" if text == "default" else text, strict=False)


def _in(ip: str | None, cidr: str) -> bool:
    return ip is not None and ipaddress.IPv4Address(ip) in _net(cidr)


def route_text(r: Json) -> str:
    """An `ip route` line for a route entry of `ip -j -d route ...`, with what its protocol
    means (connected, Felix, BGP, ...)."""
    parts = [] if r.get("type", "unicast") in ("unicast", "local") else [r["type"]]
    parts.append(r.get("dst", "?"))
    if r.get("gateway"):
        parts += ["via", r["gateway"]]
    if r.get("dev"):
        parts += ["dev", r["dev"]]
    parts += [f for f in r.get("flags", []) if f == "onlink"]
    proto = r.get("protocol")
    if proto:
        note = _PROTO_NOTE.get(str(proto))
        parts += ["proto", f"{proto} ({note})" if note else str(proto)]
    return " ".join(parts)


def _lpm(routes: Iterable[Json], dst: str) -> Json | None:
    """The longest-prefix match for `dst` among `routes` (IPv4 entries only)."""
    best: tuple[int, Json] | None = None
    for r in routes:
        try:
            net = _net(r.get("dst", ""))
        except ValueError:
            continue
        if ipaddress.IPv4Address(dst) in net and (best is None or net.prefixlen > best[0]):
            best = (net.prefixlen, r)
    return best[1] if best else None


def _fdb_dev(entry: Json) -> str:
    # iproute2 6.1 prints the device as "ifname"; others print "dev".
    return str(entry.get("ifname") or entry.get("dev") or "")


def _kind(link: Json | None) -> str:
    if link is None:
        return "missing"
    return str(link.get("linkinfo", {}).get("info_kind", link.get("link_type", "?")))


def _ipv4s(link: Json) -> list[str]:
    return [a["local"] for a in link.get("addr_info", []) if a.get("family") == "inet"]


class _Walker:
    def __init__(
        self, plan: Plan, store: Store, reader: StateReader, protocol: str, dst: Endpoint
    ) -> None:
        self.plan = plan
        self.store = store
        self.reader = reader
        self.protocol = protocol
        self.dst = dst
        self.enforced = get_mode(plan.mode).enforces_policy
        self.attach = {(a.ns, a.ifname): a.segment for a in plan.attachments}
        # Planned routes the kernel lacks, named again in the final reason.
        self.missing: list[str] = []

    # ---- lookups ----

    def role(self, ns: str) -> str:
        nsp = self.plan.namespaces.get(ns)
        if nsp is not None:
            return nsp.role
        return "pod" if ns in self.store.pods else "?"

    def link(self, ns: str, dev: str | None) -> Json | None:
        return next((x for x in self.reader.links(ns) if x.get("ifname") == dev), None)

    def mac(self, ns: str, dev: str | None) -> str | None:
        link = self.link(ns, dev)
        # TUN and IPIP devices have no Ethernet header, hence no MAC worth predicting.
        if link is None or link.get("link_type") != "ether":
            return None
        return link.get("address")

    def neigh(self, ns: str, dev: str, ip: str) -> Json | None:
        return next(
            (
                n
                for n in self.reader.neighbours(ns)
                if n.get("dst") == ip and n.get("dev") == dev and n.get("lladdr")
            ),
            None,
        )

    def pod_on(self, node: str, iface: str | None) -> PodRecord | None:
        return next(
            (p for p in self.store.pods.values() if p.node == node and p.iface == iface), None
        )

    def pod_by_ip(self, ip: str | None) -> PodRecord | None:
        return next((p for p in self.store.pods.values() if p.ip == ip), None)

    def owner(self, ip: str) -> str:
        """Who has `ip`: a namespace of the plan or a pod; else the address itself."""
        for name, nsp in self.plan.namespaces.items():
            if any(a.cidr.split("/")[0] == ip for a in nsp.addresses if a.dev != "lo"):
                return name
        pod = self.pod_by_ip(ip)
        return pod.key if pod else ip

    def segment_owner(self, segment: str, ip: str) -> tuple[str, str] | None:
        for a in self.plan.attachments:
            if a.segment != segment:
                continue
            for addr in self.plan.namespaces[a.ns].addresses:
                if addr.dev == a.ifname and addr.cidr.split("/")[0] == ip:
                    return a.ns, a.ifname
        return None

    # ---- the walk ----

    def run(self, at: _At, notes: list[str]) -> Walk:
        hops: list[Hop] = []
        for _ in range(MAX_HOPS):
            if at.outer is None and at.switch_to is None and self.role(at.ns) == "node":
                dnat = self.dnat(at.ns, at.pkt)
                if dnat is not None:
                    text, endpoints = dnat
                    if not endpoints:
                        step = self.drop(at, [], f"{text}: no endpoint, so it is rejected")
                        hops.append(step.hop)
                        return Walk(hops, False, step.reason)
                    branches = {
                        f"{ip}:{port}": self.run(
                            replace(
                                at, pkt=replace(at.pkt, dst=ip, port=port, mark=mark), dnated=True
                            ),
                            [*notes, f"{text}; this branch: {ip}:{port}"],
                        )
                        for ip, port, mark in endpoints
                    }
                    return Walk(hops, False, f"kube-proxy on {at.ns}: {text}", branches)
                if self.dst.kind == "service" and at.pkt.dst == self.dst.ip:
                    reason = (
                        f"kube-proxy on {at.ns} has no rule for {self.dst.ip} "
                        f"{self.protocol}/{at.pkt.port} (see labctl get endpointslices)"
                        if self.protocol != "icmp"
                        else "a ClusterIP answers no ping: kube-proxy translates ports only"
                    )
                    step = self.drop(at, [], reason)
                    hops.append(step.hop)
                    return Walk(hops, False, step.reason)
            step = self.step(at)
            if notes:
                step.hop.detail = "; ".join([*notes, step.hop.detail])
                notes = []
            hops.append(step.hop)
            if step.nxt is None:
                return Walk(hops, step.reached, step.reason)
            at = step.nxt
        return Walk(hops, False, f"more than {MAX_HOPS} hops: a routing loop")

    def predict(self, at: _At, capture: str | None, eth_dst: str | None) -> Json:
        """What a capture on `capture` should show of this packet at this point."""
        if capture is None:
            return {}
        out: Json = {"iface": f"{at.ns}:{capture}", "src": at.pkt.src, "dst": at.pkt.dst}
        if at.outer is None:
            out["encap"] = "bare"
        else:
            out.update(encap=at.outer.encap, outer_src=at.outer.src, outer_dst=at.outer.dst)
            if at.outer.port is not None:
                out["port"] = at.outer.port
            if at.outer.vni is not None:
                out["vni"] = at.outer.vni
        if eth_dst:
            out["eth_dst"] = eth_dst
        return out

    def drop(self, at: _At, why: list[str], reason: str) -> _Step:
        """Stop here; the packet should still be seen arriving (on `at.in_dev`, or the
        bridge port it came in by)."""
        cap = at.port or at.in_dev
        hop = Hop(
            at.ns,
            at.in_dev,
            None,
            "drop",
            "; ".join([*why, reason]),
            cap,
            self.predict(at, cap, self.mac(at.ns, at.in_dev)),
        )
        full = "; ".join([f"{at.ns}: {reason}", *(m for m in self.missing if m not in reason)])
        return _Step(hop, None, False, full)

    def step(self, at: _At) -> _Step:
        if at.switch_to is not None:
            return self.switch(at, at.switch_to)
        pkt, outer = at.pkt, at.outer
        dst, src = (outer.dst, outer.src) if outer else (pkt.dst, pkt.src)
        try:
            r = self.reader.route_get(at.ns, dst, src, at.in_dev)
        except NoRoute as e:
            return self.no_route(at, dst, str(e))
        rtype = r.get("type", "unicast")
        if rtype == "local":
            return self.decapsulate(at) if outer else self.deliver(at, r)
        why = [route_text(r)]
        if rtype != "unicast":
            return self.drop(at, why, f"a {rtype} route: the kernel drops it")
        if pkt.src is None and r.get("prefsrc"):
            at = replace(at, pkt=replace(pkt, src=r["prefsrc"]))
        self.check_planned(at.ns, dst, r, why)
        dev = str(r.get("dev"))
        nh = str(r.get("gateway") or dst)
        link = self.link(at.ns, dev)
        kind = _kind(link)
        node = self.role(at.ns) == "node"
        if node and outer is None:
            denied = self.policy(at, dev, why)
            if denied:
                return self.drop(at, why, denied)
            at = self.masquerade(at, dev, why)
        if link is not None and outer is None:
            if kind == "vxlan":
                return self.vxlan(at, link, nh, why)
            if kind == "ipip":
                return self.ipip(at, link, nh, why)
            if kind == "tun":
                return self.tun(at, link, why)
        if link is not None and kind == "bridge":
            return self.bridge_out(at, link, nh, why)
        if self.role(at.ns) == "pod":
            return self.pod_out(at, dev, nh, why)
        pod = self.pod_on(at.ns, dev)
        if pod is not None:
            return self.to_pod(at, dev, pod, nh, why)
        if (at.ns, dev) in self.attach:
            return self.underlay(at, dev, nh, why)
        return self.drop(at, why, f"{dev} ({kind}) leads nowhere this lab knows")

    def no_route(self, at: _At, dst: str, answer: str) -> _Step:
        entry = _lpm(self.reader.routes(at.ns), dst)
        if entry is not None and entry.get("type") in _DROP_TYPES:
            reason = f"{route_text(entry)}: the kernel drops packets to {dst} ({answer})"
        else:
            reason = f"no route to {dst} ({answer})"
        why: list[str] = []
        self.check_planned(at.ns, dst, entry or {"dst": "default"}, why)
        return self.drop(at, why, reason)

    def check_planned(self, ns: str, dst: str, r: Json, why: list[str]) -> None:
        """Name a route the CNI agent meant to program here that would have matched better."""
        nsp = self.plan.namespaces.get(ns)
        if nsp is None:
            return
        matched = _net(r.get("dst", "default")).prefixlen
        for route in nsp.routes:
            if route.dst == "default" or route.type != "unicast" or not _in(dst, route.dst):
                continue
            if _net(route.dst).prefixlen > matched:
                text = f"{ns}: no route to {route.dst} (planned: {route.describe()})"
                if route.why:
                    text += f": {route.why}"
                why.append(text)
                if text not in self.missing:
                    self.missing.append(text)
                return

    # ---- arriving ----

    def deliver(self, at: _At, r: Json) -> _Step:
        cap = at.port or at.in_dev
        who = self.listener(at.ns, at.pkt.port)
        hop = Hop(
            at.ns,
            at.in_dev,
            None,
            "deliver",
            f"{route_text(r)}: {at.pkt.dst} is local; {who}",
            cap,
            self.predict(at, cap, self.mac(at.ns, at.in_dev)),
        )
        if self.dst.ns is not None and at.ns != self.dst.ns:
            return _Step(hop, None, False, f"delivered to {at.ns}, not to {self.dst.name}")
        return _Step(hop, None, True, f"delivered to {at.ns} ({at.pkt.dst})")

    def listener(self, ns: str, port: int | None) -> str:
        if self.protocol == "icmp":
            return "the kernel answers the echo request"
        pod = self.store.pods.get(ns)
        if pod is not None:
            ports = {p.containerPort for p in pod.ports if p.protocol == self.protocol.upper()}
            if port in ports or (not pod.ports and port == 80):
                served = "HTTP" if self.protocol == "tcp" else "an echo"
                return f"the pod's server answers {served} on {self.protocol}/{port}"
            return f"nothing serves {self.protocol}/{port} in this pod"
        if self.role(ns) == "external" and self.protocol == "tcp" and port == 80:
            return "its server answers HTTP on tcp/80 with the source it saw"
        return f"no lab server on {self.protocol}/{port} here (a refusal proves the path)"

    def decapsulate(self, at: _At) -> _Step:
        outer = at.outer
        assert outer is not None
        dev = None
        for link in self.reader.links(at.ns):
            kind, info = _kind(link), link.get("linkinfo", {}).get("info_data", {})
            daemon = self.daemon(at.ns, link.get("ifname"))
            if (
                (
                    outer.encap == "vxlan"
                    and kind == "vxlan"
                    and info.get("port") == outer.port
                    and info.get("id") == outer.vni
                )
                or (outer.encap == "ipip" and kind == "ipip")
                or (
                    kind == "tun"
                    and daemon is not None
                    and daemon[0] == ("ipip" if outer.encap == "ipip" else "udpproxy")
                    and daemon[1].get("port") == outer.port
                )
            ):
                dev = str(link["ifname"])
                break
        what = _carrier_text(outer)
        if dev is None:
            return self.drop(at, [], f"{outer.dst} is local, but no device here takes {what}")
        hop = Hop(
            at.ns,
            at.in_dev,
            dev,
            "decapsulate",
            f"outer {outer.src} -> {outer.dst} is local; {what} goes to {dev}, which "
            f"decapsulates the inner {at.pkt.src} -> {at.pkt.dst}",
            at.in_dev,
            self.predict(at, at.in_dev, self.mac(at.ns, at.in_dev)),
        )
        return _Step(hop, _At(at.ns, dev, at.pkt))

    # ---- leaving through a tunnel ----

    def vxlan(self, at: _At, link: Json, nh: str, why: list[str]) -> _Step:
        dev = str(link["ifname"])
        info = link.get("linkinfo", {}).get("info_data", {})
        neigh = self.neigh(at.ns, dev, nh)
        if neigh is None:
            return self.drop(
                at,
                why,
                f"{dev} has no neighbour entry for {nh}, the overlay next hop: with learning "
                "off nothing resolves its VTEP MAC, so the packet is dropped",
            )
        vmac = str(neigh["lladdr"])
        fdb = next(
            (
                e
                for e in self.reader.fdb(at.ns)
                if _fdb_dev(e) == dev and e.get("mac") == vmac and e.get("dst")
            ),
            None,
        )
        if fdb is None:
            return self.drop(
                at,
                [*why, f"neighbour {nh} -> {vmac} (VTEP MAC)"],
                f"{dev} has no FDB entry for {vmac}: the kernel does not know which node owns "
                "that VTEP, so the packet is dropped",
            )
        remote = str(fdb["dst"])
        local = str(info.get("local") or self.first_ip(at.ns, str(info.get("link", ""))))
        outer = _Outer("vxlan", local, remote, info.get("port"), info.get("id"))
        why.append(f"neighbour {nh} -> {vmac} (VTEP MAC)")
        why.append(f"FDB {vmac} -> {remote} ({self.owner(remote)})")
        why.append(self.overhead(at.ns, link, outer, str(info.get("link", ""))))
        hop = Hop(
            at.ns, at.in_dev, dev, "encapsulate", "; ".join(why), dev, self.predict(at, dev, vmac)
        )
        return _Step(hop, _At(at.ns, None, at.pkt, outer))

    def ipip(self, at: _At, link: Json, nh: str, why: list[str]) -> _Step:
        dev = str(link["ifname"])
        info = link.get("linkinfo", {}).get("info_data", {})
        remote = info.get("remote") if info.get("remote") not in (None, "any") else nh
        local = str(info.get("local") or self.first_ip(at.ns, "eth0"))
        outer = _Outer("ipip", local, str(remote))
        why.append(f"remote any: the gateway {nh} ({self.owner(str(remote))}) is the outer dst")
        why.append(self.overhead(at.ns, link, outer, "eth0"))
        hop = Hop(
            at.ns, at.in_dev, dev, "encapsulate", "; ".join(why), dev, self.predict(at, dev, None)
        )
        return _Step(hop, _At(at.ns, None, at.pkt, outer))

    def daemon(self, ns: str, dev: str | None) -> tuple[str, dict[str, Any]] | None:
        """The userspace datapath reading TUN `dev` (kind, config), from the plan."""
        nsp = self.plan.namespaces.get(ns)
        for d in nsp.daemons if nsp else []:
            if d.config.get("tun") == dev:
                return d.kind, d.config
        return None

    def tun(self, at: _At, link: Json, why: list[str]) -> _Step:
        dev = str(link["ifname"])
        daemon = self.daemon(at.ns, dev)
        if daemon is None:
            return self.drop(at, why, f"{dev} is a TUN device that no datapath process reads")
        kind, config = daemon
        table = [(r["subnet"], r["node_ip"]) for r in config.get("routes", [])]
        match = _lpm(({"dst": s, "node_ip": n} for s, n in table), at.pkt.dst)
        if match is None:
            return self.drop(
                at,
                why,
                f"the userspace {kind} datapath on {dev} has no route for {at.pkt.dst}: it "
                "answers ICMP net unreachable",
            )
        remote = str(match["node_ip"])
        encap = "udp" if kind == "udpproxy" else "ipip"
        outer = _Outer(encap, str(config["local_ip"]), remote, config.get("port"))
        reader = (
            "whose egress runs the TC-BPF program ipip_encap (labctl.datapath.bpf), taking the "
            "outer destination from the route's gateway"
            if kind == "ipip-bpf"
            else f"read by the userspace datapath labctl.datapath.{kind}"
        )
        why.append(
            f"{dev} is a TUN device {reader}; its "
            f"table: {match['dst']} -> {remote} ({self.owner(remote)})"
        )
        why.append(self.overhead(at.ns, link, outer, "eth0"))
        hop = Hop(
            at.ns, at.in_dev, dev, "encapsulate", "; ".join(why), dev, self.predict(at, dev, None)
        )
        return _Step(hop, _At(at.ns, None, at.pkt, outer))

    def first_ip(self, ns: str, dev: str) -> str:
        link = self.link(ns, dev)
        ips = _ipv4s(link) if link else []
        return ips[0] if ips else "?"

    def overhead(self, ns: str, link: Json, outer: _Outer, underlay: str) -> str:
        size, parts = OVERHEAD[outer.encap]
        under = self.link(ns, underlay)
        mtu = f"{link['ifname']} MTU {link.get('mtu')}"
        if under is not None:
            mtu += f" = {underlay} MTU {under.get('mtu')} - {size}"
        return (
            f"{_carrier_text(outer)}, outer {outer.src} -> {outer.dst}; +{size} bytes "
            f"({parts}): {mtu}"
        )

    # ---- leaving through a device ----

    def bridge_out(self, at: _At, link: Json, nh: str, why: list[str]) -> _Step:
        dev = str(link["ifname"])
        neigh = self.neigh(at.ns, dev, nh)
        target = self.pod_by_ip(nh)
        mac = str(neigh["lladdr"]) if neigh else None
        if mac is None:
            why.append(f"no neighbour entry for {nh} yet: ARP on {dev} resolves it")
            if target is not None:
                mac = self.mac(target.key, "eth0")
        else:
            why.append(f"neighbour {nh} -> {mac}")
        port = self.bridge_port(at.ns, dev, mac)
        pod = self.pod_on(at.ns, port) if port else None
        if pod is None and target is not None and target.node == at.ns:
            why.append(f"no FDB entry for {mac} on {dev}: the bridge floods it to every port")
            pod = target
        elif port:
            why.append(f"bridge FDB {mac} -> port {port}")
        if pod is None:
            return self.drop(at, why, f"nothing behind bridge {dev} has {nh}")
        why.append(f"veth {pod.iface} leads to {pod.key}")
        in_dev, out_dev, action = at.in_dev, dev, "route"
        if at.dnated and at.port is not None and dev == at.in_dev:
            # br_netfilter: a frame that came in by a port passed PREROUTING inside the
            # bridge; when DNAT points it back into the same bridge it is bridged, not
            # routed (br_nf_pre_routing_finish).
            nf = self.reader.sysctl(at.ns, "net.bridge.bridge-nf-call-iptables")
            if nf == "1":
                why.insert(
                    0,
                    f"bridge-nf-call-iptables=1: {dev} ran the frame from port {at.port} "
                    "through PREROUTING; after DNAT its destination is behind the same "
                    "bridge, so it is bridged back out, not routed",
                )
                in_dev, out_dev, action = at.port, pod.iface, "switch"
        hop = Hop(
            at.ns,
            in_dev,
            out_dev,
            action,
            "; ".join(why),
            pod.iface,
            self.predict(at, pod.iface, mac),
        )
        return _Step(hop, _At(pod.key, "eth0", at.pkt))

    def bridge_port(self, ns: str, bridge: str, mac: str | None) -> str | None:
        for e in self.reader.fdb(ns):
            if e.get("master") == bridge and e.get("mac") == mac and _fdb_dev(e) != bridge:
                return _fdb_dev(e)
        return None

    def switch(self, at: _At, mac: str) -> _Step:
        link = self.link(at.ns, at.in_dev)
        bridge = str(link.get("master")) if link else "?"
        port = self.bridge_port(at.ns, bridge, mac)
        pod = self.pod_on(at.ns, port) if port else None
        why = [f"frame to {mac}, not to {bridge}'s own MAC: switched at L2, not routed"]
        if pod is None:
            pod = self.pod_by_ip(at.pkt.dst)
            if pod is None or pod.node != at.ns:
                return self.drop(at, why, f"no port of {bridge} leads to {at.pkt.dst}")
            why.append(f"no FDB entry for {mac}: {bridge} floods it; {pod.key} takes it")
            port = pod.iface
        else:
            why.append(f"bridge FDB {mac} -> port {port}, veth to {pod.key}")
        hop = Hop(
            at.ns, at.in_dev, port, "switch", "; ".join(why), port, self.predict(at, port, mac)
        )
        return _Step(hop, _At(pod.key, "eth0", at.pkt))

    def pod_out(self, at: _At, dev: str, nh: str, why: list[str]) -> _Step:
        pod = self.store.pods.get(at.ns)
        if pod is None:
            return self.drop(at, why, f"{at.ns} is not a pod of the object store")
        node_link = self.link(pod.node, pod.iface)
        if node_link is None:
            return self.drop(at, why, f"the veth peer {pod.iface} is missing on {pod.node}")
        neigh = self.neigh(at.ns, dev, nh)
        mac = str(neigh["lladdr"]) if neigh else None
        master = node_link.get("master")
        if master is None:
            # Calico: proxy ARP on the cali* veth answers for the pods' 169.254.1.1 gateway.
            mac = mac or node_link.get("address")
            why.append(f"neighbour {nh} -> {mac} (proxy ARP by {pod.node}'s {pod.iface})")
            why.append(f"veth {dev} -> {pod.node}:{pod.iface}")
            nxt = _At(pod.node, pod.iface, at.pkt)
        else:
            bridge = self.link(pod.node, str(master))
            bmac = bridge.get("address") if bridge else None
            local = nh in (_ipv4s(bridge) if bridge else [])
            if mac is None:
                peer = self.pod_by_ip(nh)
                mac = bmac if local or peer is None else self.mac(peer.key, "eth0")
                why.append(f"no neighbour entry for {nh} yet: ARP resolves it to {mac}")
            else:
                why.append(f"neighbour {nh} -> {mac}")
            why.append(f"veth {dev} -> {pod.node}:{pod.iface}, a port of bridge {master}")
            if mac == bmac:
                nxt = _At(pod.node, str(master), at.pkt, port=pod.iface)
            else:
                nxt = _At(pod.node, pod.iface, at.pkt, switch_to=mac)
        hop = Hop(at.ns, at.in_dev, dev, "route", "; ".join(why), dev, self.predict(at, dev, mac))
        return _Step(hop, nxt)

    def to_pod(self, at: _At, dev: str, pod: PodRecord, nh: str, why: list[str]) -> _Step:
        neigh = self.neigh(at.ns, dev, nh)
        if neigh is not None:
            mac: str | None = str(neigh["lladdr"])
            state = ", ".join(neigh.get("state", [])).lower()
            why.append(f"neighbour {nh} -> {mac} ({state})")
        else:
            mac = self.mac(pod.key, "eth0")
            why.append(f"no neighbour entry for {nh} yet: ARP on {dev} resolves it")
        why.append(f"veth {dev} leads to {pod.key}")
        hop = Hop(at.ns, at.in_dev, dev, "route", "; ".join(why), dev, self.predict(at, dev, mac))
        return _Step(hop, _At(pod.key, "eth0", at.pkt, at.outer))

    def underlay(self, at: _At, dev: str, nh: str, why: list[str]) -> _Step:
        segment = self.attach[(at.ns, dev)]
        owner = self.segment_owner(segment, nh)
        if owner is None:
            return self.drop(at, why, f"{dev} is on segment {segment}, where nobody has {nh}")
        ns2, dev2 = owner
        neigh = self.neigh(at.ns, dev, nh)
        mac = str(neigh["lladdr"]) if neigh else self.mac(ns2, dev2)
        if neigh is None:
            why.append(f"no neighbour entry for {nh} yet: ARP on {dev} resolves it to {mac}")
        else:
            why.append(f"neighbour {nh} -> {mac}")
        why.append(f"{dev} is on segment {segment}, where {nh} is {ns2}'s {dev2}")
        hop = Hop(at.ns, at.in_dev, dev, "route", "; ".join(why), dev, self.predict(at, dev, mac))
        return _Step(hop, _At(ns2, dev2, at.pkt, at.outer))

    # ---- netfilter ----

    def dnat(self, ns: str, pkt: _Packet) -> tuple[str, list[ProxyEndpoint]] | None:
        """kube-proxy's decision for a new connection to pkt.dst:port: (what the rules say,
        the endpoint set); None when no Service matches."""
        if self.protocol not in ("tcp", "udp") or pkt.port is None:
            return None
        objects = self.reader.nft_table(ns, "kube-proxy")
        if objects is not None:
            return nft_dnat(objects, pkt.dst, self.protocol, pkt.port, pkt.src)
        saved = self.reader.iptables_nat(ns)
        return iptables_dnat(saved, pkt.dst, self.protocol, pkt.port, pkt.src)

    def policy(self, at: _At, dev: str, why: list[str]) -> str | None:
        """Name the Felix-style chains the packet passes here and the truth table's verdict;
        the drop reason when the policy of this side denies the pair."""
        if self.reader.nft_table(at.ns, "calico") is None:
            return None
        src = self.pod_by_ip(at.pkt.src)
        dst = self.pod_by_ip(at.pkt.dst)
        points: list[tuple[Direction, PodRecord]] = []
        if src is not None and src.node == at.ns and at.in_dev == src.iface:
            points.append(("Egress", src))
        if dst is not None and dst.node == at.ns and dev == dst.iface:
            points.append(("Ingress", dst))
        for direction, pod in points:
            chain = endpoint_chain(pod.iface, "egress" if direction == "Egress" else "ingress")
            text = f"policy chains on {pod.iface}: {chain} ({direction.lower()} of {pod.key})"
            if src is None or dst is None:
                why.append(f"{text}; the truth table covers pod pairs only")
                continue
            pair = f"{src.key} -> {dst.key} {self.protocol}/{at.pkt.port or '-'}"
            whole = self.allowed(src, dst, at.pkt.port, None)
            side = self.allowed(src, dst, at.pkt.port, direction)
            why.append(f"{text}: the truth table {'allows' if whole else 'denies'} {pair}")
            if not side:
                return f"dropped by {direction.lower()} NetworkPolicy of {pod.key} in {chain}"
        return None

    def allowed(
        self, src: PodRecord, dst: PodRecord, port: int | None, only: Direction | None
    ) -> bool:
        """The reference evaluator's answer for the pair; with `only`, that side alone (the
        policies with only that direction, so the other side is not isolated)."""
        if not self.enforced:
            return True
        policies = self.store.policies()
        if only is not None:
            policies = [
                p.model_copy(update={"spec": p.spec.model_copy(update={"policyTypes": [only]})})
                for p in policies
                if only in p.spec.effective_types()
            ]
        proto = self.protocol.upper()
        dport = 0 if proto == "ICMP" else (port or default_port(dst, self.protocol))
        return allowed(
            policies,
            self.store.namespace_labels(),
            src.info(),
            dst.info(),
            dport,
            proto,  # type: ignore[arg-type]
        )

    def masquerade(self, at: _At, dev: str, why: list[str]) -> _At:
        """Apply source NAT on the way out: kube-proxy's masquerade of marked packets, else
        the node's nat POSTROUTING rules (flannel's ipMasq, Calico's natOutgoing)."""
        if at.pkt.src is None:
            return at
        if at.pkt.mark:
            new = self.masq_address(at.ns, dev)
            why.append(
                f"kube-proxy masquerades it (mark 0x4000, set by {at.pkt.mark}): "
                f"source {at.pkt.src} -> {new}"
            )
            # The mark stays in this namespace: crossing a veth scrubs it.
            return replace(at, pkt=replace(at.pkt, src=new, mark=""))
        hit = postrouting_nat(self.reader.iptables_nat(at.ns), at.pkt.src, at.pkt.dst, dev)
        if hit is None:
            return at
        target, rule, to = hit
        new = to or self.masq_address(at.ns, dev)
        why.append(f"{target} ({rule}): source {at.pkt.src} -> {new}")
        return replace(at, pkt=replace(at.pkt, src=new))

    def masq_address(self, ns: str, dev: str) -> str:
        """The source MASQUERADE picks: the output device's address, else (a cali* veth has
        none) the namespace's first global one."""
        link = self.link(ns, dev)
        ips = _ipv4s(link) if link else []
        if ips:
            return ips[0]
        for other in self.reader.links(ns):
            ips = [ip for ip in _ipv4s(other) if not ip.startswith("127.")]
            if ips:
                return ips[0]
        return "?"


def _carrier_text(outer: _Outer) -> str:
    if outer.encap == "vxlan":
        return f"VXLAN VNI {outer.vni} on UDP {outer.port}"
    if outer.encap == "udp":
        return f"UDP {outer.port} carrying the bare IP packet"
    return "IPIP (IP protocol 4)"


# ---- netfilter readers (pure: text and JSON in, decisions out) ----


def _targets(expr: list[Json]) -> list[str]:
    """Chains a rule's expressions jump or go to, in order (verdict maps included)."""
    out = []
    for e in expr:
        for verdict in ("goto", "jump"):
            if verdict in e:
                out.append(e[verdict]["target"])
        data = e.get("vmap", {}).get("data")
        if isinstance(data, dict):
            for _, v in data.get("set", []):
                for verdict in ("goto", "jump"):
                    if isinstance(v, dict) and verdict in v:
                        out.append(v[verdict]["target"])
    return out


#: A kube-proxy endpoint: address, port, and the rule that marks the packet for masquerade
#: ("" when none does).
ProxyEndpoint = tuple[str, int, str]


def _nft_addr_match(e: Json, src: str | None, dst: str) -> bool | None:
    """An `ip saddr`/`ip daddr` match of a rule on a packet; None for any other expression."""
    m = e.get("match")
    left = m.get("left", {}).get("payload", {}) if m else {}
    if not m or left.get("protocol") != "ip" or left.get("field") not in ("saddr", "daddr"):
        return None
    right = m.get("right")
    if isinstance(right, dict) and "prefix" in right:
        cidr = f"{right['prefix']['addr']}/{right['prefix']['len']}"
    elif isinstance(right, str) and not right.startswith("@"):
        cidr = right
    else:
        return False  # a set lookup (ClientIP affinity): a new client is in none
    hit = _in(src if left["field"] == "saddr" else dst, cidr)
    return hit if m.get("op", "==") == "==" else not hit


def _nft_mark_text(expr: list[Json]) -> str:
    """A mark-for-masquerade rule as `nft list` prints it (its address matches only)."""
    parts = []
    for e in expr:
        m = e.get("match", {})
        field = m.get("left", {}).get("payload", {}).get("field")
        if field in ("saddr", "daddr"):
            right = m["right"]
            if isinstance(right, dict) and "prefix" in right:
                right = f"{right['prefix']['addr']}/{right['prefix']['len']}"
            op = "" if m.get("op", "==") == "==" else f"{m['op']} "
            parts.append(f"ip {field} {op}{right}")
    return " ".join([*parts, "jump mark-for-masquerade"])


def nft_dnat(
    objects: list[Json], dst: str, proto: str, port: int, src: str | None
) -> tuple[str, list[ProxyEndpoint]] | None:
    """kube-proxy nftables mode: the `service-ips` element for dst . proto . port, the chain
    it sends to, and the endpoints that chain picks from (`numgen random`), each with the
    rule that marks a packet from `src` for masquerade (off-cluster clients, hairpin)."""
    rules: dict[str, list[list[Json]]] = {}
    chain = None
    for obj in objects:
        if "rule" in obj:
            rules.setdefault(obj["rule"]["chain"], []).append(obj["rule"]["expr"])
        elif "map" in obj and obj["map"]["name"] == "service-ips":
            for key, verdict in obj["map"].get("elem", []):
                key = key.get("elem", {}).get("val", key)
                if [str(x) for x in key.get("concat", [])] == [dst, proto, str(port)]:
                    chain = _targets([verdict])[0]
    if chain is None:
        return None
    endpoints: dict[tuple[str, int], str] = {}
    how = ""

    def follow(name: str, mark: str, depth: int) -> None:
        for expr in rules.get(name, []):
            targets = _targets(expr)
            matches = [_nft_addr_match(e, src, dst) for e in expr]
            if "mark-for-masquerade" in targets and all(m is not False for m in matches):
                mark = mark or f"'{_nft_mark_text(expr)}' in {name}"
            for e in expr:
                if "dnat" in e:
                    ep = (str(e["dnat"]["addr"]), int(e["dnat"].get("port", port)))
                    endpoints.setdefault(ep, mark)
                ng = e.get("vmap", {}).get("key", {}).get("numgen")
                if ng:
                    nonlocal how
                    how = f"numgen {ng.get('mode')} mod {ng.get('mod')}"
            for target in targets:
                if target != "mark-for-masquerade" and depth < 8:
                    follow(target, mark, depth + 1)

    follow(chain, "", 0)
    eps = ", ".join(f"{ip}:{p}" for ip, p in endpoints)
    text = (
        f"kube-proxy (nftables): {dst} . {proto} . {port} in map service-ips -> {chain}"
        f"{f' ({how})' if how else ''}, endpoints {{{eps}}}"
    )
    return text, [(ip, p, mark) for (ip, p), mark in endpoints.items()]


def _chains(saved: str) -> dict[str, list[list[str]]]:
    chains: dict[str, list[list[str]]] = {}
    for line in saved.splitlines():
        if line.startswith(":"):
            chains.setdefault(line[1:].split()[0], [])
        elif line.startswith("-A "):
            args = shlex.split(line)
            chains.setdefault(args[1], []).append(args[2:])
    return chains


def _option(args: list[str], *names: str) -> str | None:
    for i, a in enumerate(args[:-1]):
        if a in names:
            return args[i + 1]
    return None


def iptables_dnat(
    saved: str, dst: str, proto: str, port: int, src: str | None
) -> tuple[str, list[ProxyEndpoint]] | None:
    """kube-proxy iptables mode: the KUBE-SERVICES rule for dst:port/proto, its KUBE-SVC
    chain and the KUBE-SEP endpoints it picks from (`statistic random`), each with the
    KUBE-MARK-MASQ rule that marks a packet from `src` (off-cluster clients, hairpin)."""
    chains = _chains(saved)
    chain = None
    for args in chains.get("KUBE-SERVICES", []):
        d = _option(args, "-d", "--destination")
        if (
            d is not None
            and _in(dst, d)
            and _option(args, "-p", "--protocol") == proto
            and _option(args, "--dport") == str(port)
        ):
            chain = _option(args, "-j")
            break
    if chain is None:
        return None
    endpoints: dict[tuple[str, int], str] = {}

    def follow(name: str, mark: str, depth: int) -> None:
        for args in chains.get(name, []):
            target = _option(args, "-j")
            if target == "KUBE-MARK-MASQ" and _rule_matches(args, src, dst, ""):
                mark = mark or " ".join(["-A", name, *args])
            to = _option(args, "--to-destination")
            if to:
                ip, _, p = to.partition(":")
                endpoints.setdefault((ip, int(p or port)), mark)
            if target and target.startswith(("KUBE-SEP-", "KUBE-SVC-", "KUBE-SVL-")) and depth < 8:
                follow(target, mark, depth + 1)

    follow(chain, "", 0)
    eps = ", ".join(f"{ip}:{p}" for ip, p in endpoints)
    text = (
        f"kube-proxy (iptables): KUBE-SERVICES {dst}:{port}/{proto} -> {chain} "
        f"(statistic random), endpoints {{{eps}}}"
    )
    return text, [(ip, p, mark) for (ip, p), mark in endpoints.items()]


def _rule_matches(args: list[str], src: str | None, dst: str, out_dev: str) -> bool:
    """Whether an iptables rule's matches hold for a new, unmarked packet (the matches
    POSTROUTING rules of flannel, Calico and kube-proxy use: addresses, -o, mark)."""
    negate = False
    i = 0
    while i < len(args):
        a = args[i]
        if a == "!":
            negate = True
            i += 1
            continue
        value = args[i + 1] if i + 1 < len(args) else ""
        if a in ("-s", "--source", "-d", "--destination"):
            hit = _in(src if a in ("-s", "--source") else dst, value)
        elif a in ("-o", "--out-interface"):
            hit = out_dev == value or (value.endswith("+") and out_dev.startswith(value[:-1]))
        elif a == "--mark":
            want, _, mask = value.partition("/")
            hit = (0 & int(mask or "0xffffffff", 0)) == int(want, 0)
        else:
            negate = False
            i += 1
            continue
        if hit == negate:
            return False
        negate = False
        i += 2
    return True


def postrouting_nat(
    saved: str, src: str, dst: str, out_dev: str
) -> tuple[str, str, str | None] | None:
    """The nat POSTROUTING verdict for a new connection src -> dst out of `out_dev`:
    (MASQUERADE or SNAT, the rule, SNAT's --to-source) or None when the source is kept."""
    chains = _chains(saved)

    def run(chain: str, depth: int) -> tuple[str, str, str | None] | str | None:
        # A NAT verdict, "ACCEPT" (source kept), "RETURN", or None (fell off the end).
        for args in chains.get(chain, []):
            target = _option(args, "-j")
            if target is None or not _rule_matches(args, src, dst, out_dev):
                continue
            if target in ("RETURN", "ACCEPT"):
                return target
            if target in ("MASQUERADE", "SNAT"):
                rule = " ".join(
                    f'"{a}"' if " " in a else a
                    for a in ["-A", chain, *args]
                    if a != "--random-fully"
                )
                return target, rule, _option(args, "--to-source")
            if target in chains and depth < 8:
                got = run(target, depth + 1)
                if got not in (None, "RETURN"):
                    return got
        return None

    got = run("POSTROUTING", 0)
    return got if isinstance(got, tuple) else None
