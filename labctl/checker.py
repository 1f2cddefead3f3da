"""Capture checker: prove from underlay packet captures how pod traffic crossed the wire.

Every packet is classified once, in one pass, by *how* it carries an IPv4 packet:

* ``vxlan``: UDP whose payload is a VXLAN header, inner Ethernet, inner IPv4;
* ``udp``: UDP whose payload is exactly one bare IPv4 packet (flannel's udp backend);
* ``ipip``: IP protocol 4 around an inner IPv4 packet;
* ``bare``: no encapsulation; the addresses on the wire are the endpoints';
* ``udp-other`` / ``ip-proto``: some other header in front of an inner IPv4 packet (an
  unknown or broken encapsulation). These never match a mode; they exist so that such a
  capture is reported for what it is instead of being missed.

The result is a :class:`CaptureIndex` keyed by the innermost (src, dst) IPv4 pair. The
checks (:func:`check_flow`, :func:`check_flows`, :func:`check_no_leaks`,
:func:`check_capture_for_mode`, :func:`summarize`) evaluate that index, so each accepts
either packets or an index built once with :func:`index_packets` or, much faster for large
captures, :func:`index_pcap` (reads the file without dissecting every packet in Scapy).

Packets are decoded from their outermost IPv4 header, so Ethernet, 802.1Q, raw IP and
Linux cooked captures (SLL/SLL2, ``tcpdump -i any``) are all handled. Everything inside
that header is parsed from bytes here rather than by Scapy's port-based dissectors: Scapy
only decodes VXLAN on 4789, and a capture with the wrong port must be *detected*, not missed.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import struct
from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from scapy.config import conf
from scapy.error import Scapy_Exception
from scapy.layers.inet import IP
from scapy.layers.l2 import Ether
from scapy.packet import Packet
from scapy.utils import RawPcapReader, rdpcap

from labctl.errors import LabctlError
from labctl.wire import CheckResult, Flow, WireSpec

_PROTO_IPIP = 4
_PROTO_TCP = 6
_PROTO_UDP = 17
_PROTO_ICMP = 1
_ETH_P_IP = b"\x08\x00"
_ETH_P_VLAN = (b"\x81\x00", b"\x88\xa8")  # 802.1Q, 802.1ad
_LINKTYPE_ETHERNET = 1
_LINKTYPE_LINUX_SLL = 113
_LINKTYPE_LINUX_SLL2 = 276
_LINKTYPES_RAW_IP = (12, 14, 101, 228)  # DLT_RAW (both BSD numbers), LINKTYPE_RAW, IPV4
_SLL_HDR = 16
_SLL2_HDR = 20
_VXLAN_FLAG_I = 0x08  # "VNI is valid"; Linux sends exactly this flag
_VXLAN_HDR = 8
_ETH_HDR = 14
# How far into a payload to look for an inner IPv4 header behind an unknown header. Covers
# VXLAN/Geneve (with options) + Ethernet + a VLAN tag and GRE variants.
_SCAN_LIMIT = 128
# A first byte that can start an IPv4 header: version 4, IHL 5..15.
_IPV4_START = re.compile(rb"[\x45-\x4f]")
# Summaries quoted in a failure detail; more would not fit on one readable line.
_MAX_EXAMPLES = 3
_FRAGMENT_WHY = "a packet was bigger than a link on the way: the pod MTU is too large"


class CaptureError(LabctlError):
    """A capture file could not be read."""


class Carrier(NamedTuple):
    """How one packet carried its innermost IPv4 packet across the wire."""

    encap: str  # an Encap value, or "udp-other" / "ip-proto" for unknown encapsulations
    port: int | None = None  # UDP destination port of the outer header
    vni: int | None = None
    proto: int | None = None  # outer IP protocol, for "ip-proto"
    hdr_len: int | None = None  # bytes between outer header and inner IPv4 (unknown encaps)


class _Obs(NamedTuple):
    """What is recorded per packet; packets that agree on all of it are counted together."""

    carrier: Carrier
    outer_src: str
    outer_dst: str
    eth_dst: str | None  # None when the capture has no Ethernet header (cooked capture)
    # The outer packet is an IP fragment (offset or more-fragments set): something on the
    # way had a smaller MTU than the packet, which a correct pod MTU never lets happen.
    fragment: bool = False


@dataclass
class CaptureIndex:
    """Packets of a capture, classified, counted per innermost IPv4 (src, dst) pair."""

    packets: int = 0  # every packet in the capture, IPv4 or not
    pairs: dict[tuple[str, str], Counter[_Obs]] = field(default_factory=dict)


# What the checks accept: packets, or an index already built from them.
Capture = Iterable[Packet] | CaptureIndex


class _IPv4(NamedTuple):
    src: str
    dst: str
    proto: int
    ihl: int
    total_len: int
    first_fragment: bool
    more_fragments: bool


def load_packets(path: str | Path) -> list[Packet]:
    """Read a pcap/pcapng file; raise :class:`CaptureError` naming the file if unreadable."""
    try:
        return list(rdpcap(str(path)))
    except (OSError, Scapy_Exception, EOFError, struct.error) as exc:
        raise CaptureError(f"cannot read capture {path}: {exc}") from exc


def _parse_ipv4(data: bytes, off: int, *, verify: bool) -> _IPv4 | None:
    """Parse an IPv4 header at ``data[off:]``.

    ``verify`` checks the header checksum. That is what makes spotting an inner packet
    inside an arbitrary payload safe: the kernel always fills the IPv4 header checksum
    (unlike L4 checksums, it is never offloaded), while random bytes almost never pass.
    """
    if len(data) - off < 20 or data[off] >> 4 != 4:
        return None
    ihl = (data[off] & 0x0F) * 4
    if ihl < 20 or len(data) - off < ihl:
        return None
    total_len = int.from_bytes(data[off + 2 : off + 4], "big")
    if total_len < ihl:
        return None
    if verify:
        words = struct.unpack(f"!{ihl // 2}H", data[off : off + ihl])
        csum = sum(words)
        csum = (csum & 0xFFFF) + (csum >> 16)
        csum = (csum & 0xFFFF) + (csum >> 16)
        if csum != 0xFFFF:
            return None
    flags_offset = int.from_bytes(data[off + 6 : off + 8], "big")
    frag_offset = flags_offset & 0x1FFF
    return _IPv4(
        src=socket.inet_ntoa(data[off + 12 : off + 16]),
        dst=socket.inet_ntoa(data[off + 16 : off + 20]),
        proto=data[off + 9],
        ihl=ihl,
        total_len=total_len,
        first_fragment=frag_offset == 0,
        more_fragments=bool(flags_offset & 0x2000),
    )


def _scan_inner(payload: bytes) -> tuple[int, _IPv4] | None:
    """Find the first valid IPv4 header within the first bytes of a payload."""
    for match in _IPV4_START.finditer(payload, 0, _SCAN_LIMIT):
        inner = _parse_ipv4(payload, match.start(), verify=True)
        if inner is not None:
            return match.start(), inner
    return None


def _classify_udp(payload: bytes, dport: int) -> tuple[Carrier, _IPv4] | None:
    """Recognise VXLAN, bare-IP-in-UDP or another header around an inner IPv4 packet."""
    if len(payload) >= _VXLAN_HDR and payload[0] & _VXLAN_FLAG_I:
        eth_type = payload[_VXLAN_HDR + 12 : _VXLAN_HDR + _ETH_HDR]
        inner = _parse_ipv4(payload, _VXLAN_HDR + _ETH_HDR, verify=True)
        if eth_type == _ETH_P_IP and inner is not None:
            vni = int.from_bytes(payload[4:7], "big")
            return Carrier("vxlan", port=dport, vni=vni), inner
    found = _scan_inner(payload)
    if found is None:
        return None
    offset, inner = found
    # flannel's udp backend sends the packet read from the TUN and nothing else.
    if offset == 0 and inner.total_len == len(payload):
        return Carrier("udp", port=dport), inner
    return Carrier("udp-other", port=dport, hdr_len=offset), inner


def _classify_ip(data: bytes, eth_dst: str | None) -> tuple[tuple[str, str], _Obs] | None:
    """Classify one packet from the bytes of its outermost IPv4 header onwards."""
    # The outer header is taken as captured: a wrong checksum must not hide a packet.
    outer = _parse_ipv4(data, 0, verify=False)
    if outer is None:
        return None
    payload = data[outer.ihl : outer.total_len]
    found: tuple[Carrier, _IPv4] | None = None
    # A non-first fragment has no transport header to decode; it counts under its outer
    # addresses like any unencapsulated packet.
    if outer.first_fragment:
        if outer.proto == _PROTO_IPIP:
            inner = _parse_ipv4(payload, 0, verify=True)
            if inner is not None:
                found = Carrier("ipip"), inner
        elif outer.proto == _PROTO_UDP and len(payload) >= 8:
            dport = int.from_bytes(payload[2:4], "big")
            udp_len = int.from_bytes(payload[4:6], "big")
            found = _classify_udp(payload[8:udp_len], dport)
        elif outer.proto not in (_PROTO_TCP, _PROTO_ICMP):
            # ICMP errors quote headers of other packets and TCP streams are application
            # data; any other protocol (GRE, ...) with an inner IPv4 header is a tunnel.
            scanned = _scan_inner(payload)
            if scanned is not None:
                offset, inner = scanned
                found = Carrier("ip-proto", proto=outer.proto, hdr_len=offset), inner
    fragment = outer.more_fragments or not outer.first_fragment
    if found is None:
        obs = _Obs(Carrier("bare"), outer.src, outer.dst, eth_dst, fragment)
        return (outer.src, outer.dst), obs
    carrier, inner = found
    return (inner.src, inner.dst), _Obs(carrier, outer.src, outer.dst, eth_dst, fragment)


def _classify(pkt: Packet) -> tuple[tuple[str, str], _Obs] | None:
    """Classify one dissected packet; None for packets without IPv4 (ARP, IPv6, ...)."""
    ip = pkt.getlayer(IP)
    if ip is None:
        return None
    eth_dst = str(pkt.dst).lower() if isinstance(pkt, Ether) else None
    return _classify_ip(bytes(ip), eth_dst)


def _locate_ipv4(frame: bytes, linktype: int) -> int | None:
    """Offset of the IPv4 header in a raw frame of a link type tcpdump writes on Linux.

    None when the frame does not carry IPv4. Raises KeyError for other link types.
    """
    if linktype == _LINKTYPE_ETHERNET:
        off = 12
        while frame[off : off + 2] in _ETH_P_VLAN:
            off += 4
        return off + 2 if frame[off : off + 2] == _ETH_P_IP else None
    if linktype == _LINKTYPE_LINUX_SLL:
        return _SLL_HDR if frame[14:16] == _ETH_P_IP else None
    if linktype == _LINKTYPE_LINUX_SLL2:
        return _SLL2_HDR if frame[0:2] == _ETH_P_IP else None
    if linktype in _LINKTYPES_RAW_IP:
        return 0 if frame[:1] and frame[0] >> 4 == 4 else None
    raise KeyError(linktype)


def _classify_frame(frame: bytes, linktype: int) -> tuple[tuple[str, str], _Obs] | None:
    try:
        off = _locate_ipv4(frame, linktype)
    except KeyError:
        layer = conf.l2types.get(linktype)
        # get() is typed for both directions of the mapping; an int key yields a class.
        return _classify(layer(frame)) if isinstance(layer, type) else None
    if off is None:
        return None
    eth_dst = frame[:6].hex(":") if linktype == _LINKTYPE_ETHERNET else None
    return _classify_ip(frame[off:], eth_dst)


def index_packets(packets: Iterable[Packet]) -> CaptureIndex:
    """Classify every packet once. Pass the result to the checks to avoid re-scanning."""
    index = CaptureIndex()
    for pkt in packets:
        index.packets += 1
        classified = _classify(pkt)
        if classified is None:
            continue
        pair, obs = classified
        index.pairs.setdefault(pair, Counter())[obs] += 1
    return index


def index_pcap(path: str | Path) -> CaptureIndex:
    """Classify a pcap/pcapng file straight from its bytes, without Scapy dissection.

    Same result as ``index_packets(load_packets(path))`` but tens of times faster: dissecting
    every packet is what makes ``rdpcap`` slow on large captures. Link types
    other than Ethernet, SLL, SLL2 and raw IP fall back to Scapy, packet by packet.
    """
    index = CaptureIndex()
    try:
        with RawPcapReader(str(path)) as reader:
            for frame, meta in reader:
                index.packets += 1
                # pcapng carries a link type per interface, pcap one per file.
                linktype = getattr(meta, "linktype", None) or reader.linktype
                classified = _classify_frame(frame, linktype)
                if classified is None:
                    continue
                pair, obs = classified
                index.pairs.setdefault(pair, Counter())[obs] += 1
    except (OSError, Scapy_Exception, EOFError, struct.error) as exc:
        raise CaptureError(f"cannot read capture {path}: {exc}") from exc
    return index


def _as_index(capture: Capture) -> CaptureIndex:
    return capture if isinstance(capture, CaptureIndex) else index_packets(capture)


def _describe(carrier: Carrier) -> str:
    """Human wording of a carrier; also used for expectations (None = any)."""
    port = "any port" if carrier.port is None else str(carrier.port)
    if carrier.encap == "vxlan":
        vni = "any" if carrier.vni is None else str(carrier.vni)
        return f"VXLAN VNI {vni} on UDP {port}"
    if carrier.encap == "udp":
        return f"UDP {port} carrying the bare IP packet"
    if carrier.encap == "ipip":
        return "IPIP (IP protocol 4)"
    if carrier.encap == "udp-other":
        return f"UDP {port} with a {carrier.hdr_len}-byte header before the inner IP packet"
    if carrier.encap == "ip-proto":
        return (
            f"IP protocol {carrier.proto} with a {carrier.hdr_len}-byte header "
            "before the inner IP packet"
        )
    return "bare packets"


def _expected_carrier(flow: Flow) -> Carrier:
    if flow.encap == "vxlan":
        return Carrier("vxlan", port=flow.port, vni=flow.vni)
    if flow.encap == "udp":
        return Carrier("udp", port=flow.port)
    return Carrier(flow.encap)


def _carrier_matches(want: Carrier, seen: Carrier) -> bool:
    return (
        want.encap == seen.encap
        and (want.port is None or want.port == seen.port)
        and (want.vni is None or want.vni == seen.vni)
    )


def _obs_problem(flow: Flow, obs: _Obs, forward: bool, *, check_l2: bool) -> str | None:
    """Why ``obs`` (a packet of ``flow``'s pair) is not carried as ``flow`` requires."""
    want = _expected_carrier(flow)
    if not _carrier_matches(want, obs.carrier):
        return _describe(obs.carrier) + (" in IP fragments" if obs.fragment else "")
    if obs.fragment:
        return f"{_describe(obs.carrier)} in IP fragments ({_FRAGMENT_WHY})"
    if flow.encap != "bare":
        node_ips = (
            (flow.src_node_ip, flow.dst_node_ip)
            if forward
            else (flow.dst_node_ip, flow.src_node_ip)
        )
        if (obs.outer_src, obs.outer_dst) != node_ips:
            return (
                f"{_describe(obs.carrier)} with outer {obs.outer_src} -> {obs.outer_dst} "
                f"(expected {node_ips[0]} -> {node_ips[1]})"
            )
    # Only frames the sending node emits have a known next hop; replies go to the sender,
    # whose MAC the flow does not name.
    if check_l2 and flow.encap == "bare" and flow.next_hop_mac is not None and forward:
        if obs.eth_dst is None:
            return (
                "frames without an Ethernet header (cooked capture), so the next-hop MAC "
                "cannot be checked; capture on the underlay interface"
            )
        if obs.eth_dst != flow.next_hop_mac.lower():
            return f"bare packets to Ethernet dst {obs.eth_dst}"
    return None


def _flow_name(flow: Flow) -> str:
    return f"wire {flow.src_pod} -> {flow.dst_pod}"


def _evaluate_flow(index: CaptureIndex, flow: Flow, pcap: str | None) -> CheckResult:
    want = _describe(_expected_carrier(flow))
    if flow.encap == "bare":
        if flow.next_hop_mac is not None:
            want += f" to next hop {flow.next_hop_mac.lower()}"
    else:
        want += f" between {flow.src_node_ip} and {flow.dst_node_ip}"
    where = (
        f"{flow.src_pod} ({flow.src_pod_ip}, {flow.src_node}) -> "
        f"{flow.dst_pod} ({flow.dst_pod_ip}, {flow.dst_node})"
    )
    good = {"src->dst": 0, "dst->src": 0}
    # problem -> packets per direction, so one problem seen both ways is reported once.
    bad: dict[str, Counter[str]] = {}
    for direction, pair, forward in (
        ("src->dst", (flow.src_pod_ip, flow.dst_pod_ip), True),
        ("dst->src", (flow.dst_pod_ip, flow.src_pod_ip), False),
    ):
        for obs, count in index.pairs.get(pair, Counter()).items():
            problem = _obs_problem(flow, obs, forward, check_l2=True)
            if problem is None:
                good[direction] += count
            else:
                bad.setdefault(problem, Counter())[direction] += count
    if bad:
        seen = "; ".join(
            f"{problem} ({', '.join(f'{n} packets {d}' for d, n in per_dir.items())})"
            for problem, per_dir in sorted(bad.items(), key=lambda kv: -kv[1].total())
        )
        mixed = f" (mixed: also {sum(good.values())} correct packets)" if any(good.values()) else ""
        detail = f"{where}: expected {want}, saw {seen}{mixed}"
        return CheckResult(_flow_name(flow), False, detail, pcap)
    if not any(good.values()):
        detail = f"{where}: expected {want}, saw no packets between the pods at all"
        return CheckResult(_flow_name(flow), False, detail, pcap)
    counts = f"{good['src->dst']} packets src->dst, {good['dst->src']} dst->src"
    return CheckResult(_flow_name(flow), True, f"{where}: {want}: {counts}", pcap)


def check_flow(packets: Capture, flow: Flow, pcap: str | None = None) -> CheckResult:
    """Check that ``flow`` crossed the wire, and only, as its ``encap`` requires.

    Passes iff the capture holds at least one packet of the pod pair (either direction)
    and every packet of the pair is carried correctly: encapsulation, UDP port, VNI, outer
    node IPs matching the direction and, for bare flows with ``next_hop_mac``, the Ethernet
    destination of frames from the source node. A single wrong packet fails the flow.
    """
    return _evaluate_flow(_as_index(packets), flow, pcap)


def check_flows(
    packets: Capture, flows: Sequence[Flow], pcap: str | None = None
) -> list[CheckResult]:
    """:func:`check_flow` for many flows, classifying the capture only once."""
    index = _as_index(packets)
    return [_evaluate_flow(index, flow, pcap) for flow in flows]


def _in_cidr(addr: str, net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    return ipaddress.ip_address(addr) in net


def _obs_summary(pair: tuple[str, str], obs: _Obs, count: int) -> str:
    text = f"{pair[0]} -> {pair[1]} as {_describe(obs.carrier)}"
    if obs.carrier.encap != "bare":
        text += f" (outer {obs.outer_src} -> {obs.outer_dst})"
    if obs.fragment:
        text += " in IP fragments"
    return f"{text} x{count}"


def check_no_leaks(
    packets: Capture, flows: Sequence[Flow], pod_cidr: str, pcap: str | None = None
) -> CheckResult:
    """Check that every packet with a pod-CIDR address (outer or inner) belongs to a flow.

    Belonging means: the packet's pod pair is one of ``flows`` (either direction) and it is
    carried with that flow's encapsulation and outer node IPs, unfragmented. ARP, IPv6 and
    packets without any pod-CIDR address (node-to-node traffic such as BGP) are ignored,
    except IP fragments: a fragment is never expected, whatever its addresses.
    """
    index = _as_index(packets)
    net = ipaddress.ip_network(pod_cidr, strict=False)
    by_pair: dict[tuple[str, str], list[tuple[Flow, bool]]] = {}
    for flow in flows:
        by_pair.setdefault((flow.src_pod_ip, flow.dst_pod_ip), []).append((flow, True))
        by_pair.setdefault((flow.dst_pod_ip, flow.src_pod_ip), []).append((flow, False))
    pod_packets = 0
    leaks: list[tuple[int, str]] = []
    for pair, observations in index.pairs.items():
        for obs, count in observations.items():
            addrs = (*pair, obs.outer_src, obs.outer_dst)
            # A later fragment of a tunnel packet shows only the node addresses: still pod
            # traffic that crossed wrongly.
            if not obs.fragment and not any(_in_cidr(a, net) for a in addrs):
                continue
            pod_packets += count
            candidates = by_pair.get(pair, [])
            # L2 next hops are check_flow's business; a leak is about how a packet is carried.
            if not any(_obs_problem(f, obs, fwd, check_l2=False) is None for f, fwd in candidates):
                leaks.append((count, _obs_summary(pair, obs, count)))
    if not leaks:
        detail = (
            f"all {pod_packets} packets with {pod_cidr} addresses belong to the expected "
            "flows, carried as expected"
        )
        return CheckResult("wire: no leaks", True, detail, pcap)
    leaks.sort(key=lambda leak: -leak[0])
    total = sum(count for count, _ in leaks)
    examples = "; ".join(summary for _, summary in leaks[:_MAX_EXAMPLES])
    more = f"; and {len(leaks) - _MAX_EXAMPLES} more kinds" if len(leaks) > _MAX_EXAMPLES else ""
    detail = (
        f"{total} of {pod_packets} packets with {pod_cidr} addresses are not an expected flow "
        f"carried as expected: {examples}{more}"
    )
    return CheckResult("wire: no leaks", False, detail, pcap)


def _spec_carrier(spec: WireSpec) -> Carrier:
    return Carrier(spec.encap, port=spec.port, vni=spec.vni)


def _pod_traffic(index: CaptureIndex, pod_cidr: str) -> Iterable[tuple[tuple[str, str], _Obs, int]]:
    """(pair, observation, packets) for every innermost pair with a pod-CIDR address."""
    net = ipaddress.ip_network(pod_cidr, strict=False)
    for pair, observations in index.pairs.items():
        if not (_in_cidr(pair[0], net) or _in_cidr(pair[1], net)):
            continue
        for obs, count in observations.items():
            yield pair, obs, count


def check_capture_for_mode(
    packets: Capture,
    allowed: Collection[WireSpec],
    pod_cidr: str,
    pcap: str | None = None,
) -> list[CheckResult]:
    """Check a capture with no known flows (e.g. from a real cluster) against a mode.

    Every packet whose innermost addresses fall in ``pod_cidr`` is classified by how it was
    carried. Returns one passing result per allowed spec that was seen, plus one failing
    result naming every unexpected carrier (counts and example pairs), or a single failing
    result when the capture holds no pod traffic at all. Outer addresses are not checked:
    node IPs are unknown here.
    """
    index = _as_index(packets)
    allowed_list = list(allowed)
    # Keyed by the allowed spec a packet matched, or by what was seen when none matched (a
    # fragment never matches: the first one still shows the pod pair inside).
    packets_by: Counter[WireSpec | str] = Counter()
    pairs_by: dict[WireSpec | str, set[tuple[str, str]]] = {}
    for pair, obs, count in _pod_traffic(index, pod_cidr):
        carrier = obs.carrier
        spec = next((s for s in allowed_list if _carrier_matches(_spec_carrier(s), carrier)), None)
        key: WireSpec | str = _describe(carrier) if spec is None else spec
        if obs.fragment:
            key = f"{_describe(carrier)} in IP fragments ({_FRAGMENT_WHY})"
        packets_by[key] += count
        pairs_by.setdefault(key, set()).add(pair)
    if not packets_by:
        detail = f"no packets with {pod_cidr} addresses in the capture ({index.packets} packets)"
        return [
            CheckResult("wire: pod traffic", False, f"no pod traffic in capture: {detail}", pcap)
        ]

    def examples(pairs: set[tuple[str, str]]) -> str:
        shown = ", ".join(f"{s} -> {d}" for s, d in sorted(pairs)[:_MAX_EXAMPLES])
        return shown + (", ..." if len(pairs) > _MAX_EXAMPLES else "")

    results = [
        CheckResult(
            f"wire: {_describe(_spec_carrier(key))}",
            True,
            f"{count} packets, {len(pairs_by[key])} directed pod pairs, "
            f"e.g. {examples(pairs_by[key])}",
            pcap,
        )
        for key, count in packets_by.items()
        if isinstance(key, WireSpec)
    ]
    unexpected = [(key, count) for key, count in packets_by.most_common() if isinstance(key, str)]
    if unexpected:
        allowed_text = ", ".join(_describe(_spec_carrier(s)) for s in allowed_list) or "nothing"
        found = "; ".join(
            f"{seen}: {count} packets, e.g. {examples(pairs_by[seen])}"
            for seen, count in unexpected
        )
        detail = f"mode allows {allowed_text}; saw unexpected {found}"
        results.append(CheckResult("wire: unexpected carriers", False, detail, pcap))
    return results


def summarize(packets: Capture, pod_cidr: str) -> dict[str, object]:
    """Counts for a CLI table: all packets, pod packets, and pod packets per carrier."""
    index = _as_index(packets)
    carriers: Counter[str] = Counter()
    for _pair, obs, count in _pod_traffic(index, pod_cidr):
        carriers[_describe(obs.carrier)] += count
    return {
        "packets": index.packets,
        "pod_packets": sum(carriers.values()),
        "carriers": dict(carriers.most_common()),
    }
