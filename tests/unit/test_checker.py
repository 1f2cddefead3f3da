"""Unit tests for labctl.checker: synthetic captures built with Scapy, no root needed."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment
from scapy.layers.inet6 import ICMPv6ND_RS, IPv6
from scapy.layers.l2 import ARP, CookedLinux, CookedLinuxV2, Dot1Q, Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Packet, Raw
from scapy.utils import wrpcap, wrpcapng

from labctl.checker import (
    CaptureError,
    check_capture_for_mode,
    check_flow,
    check_flows,
    check_no_leaks,
    index_packets,
    index_pcap,
    load_packets,
    summarize,
)
from labctl.topology import parse_topology
from labctl.verify import oracle_flows, verify_pcap
from labctl.wire import Flow, WireSpec

POD_CIDR = "10.244.0.0/16"
POD_A, POD_B, POD_C = "10.244.0.2", "10.244.1.2", "10.244.2.2"
NODE1, NODE2, NODE3 = "10.0.0.32", "10.0.0.33", "10.0.1.34"
MAC1, MAC2 = "02:00:00:00:00:01", "02:00:00:00:00:02"

FLANNEL_VXLAN = WireSpec("vxlan", 8472, 1)


def flow(encap: str = "vxlan", **overrides: object) -> Flow:
    """A node1 -> node2 flow between POD_A and POD_B with flannel defaults per encap."""
    defaults: dict[str, dict[str, object]] = {
        "vxlan": {"port": 8472, "vni": 1},
        "udp": {"port": 8285},
        "ipip": {},
        "bare": {},
    }
    base = Flow(
        src_pod="default/a",
        dst_pod="default/b",
        src_pod_ip=POD_A,
        dst_pod_ip=POD_B,
        src_node="node1",
        dst_node="node2",
        src_node_ip=NODE1,
        dst_node_ip=NODE2,
        encap=encap,  # type: ignore[arg-type]
        **defaults[encap],  # type: ignore[arg-type]
    )
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


def inner(src: str, dst: str) -> Packet:
    return IP(src=src, dst=dst) / ICMP(type=8) / Raw(b"x" * 32)


def swap(pair: tuple[str, str], reverse: bool) -> tuple[str, str]:
    return (pair[1], pair[0]) if reverse else pair


def vxlan(
    src: str = POD_A,
    dst: str = POD_B,
    outer: tuple[str, str] = (NODE1, NODE2),
    port: int = 8472,
    vni: int = 1,
    reverse: bool = False,
) -> Packet:
    """A flannel VXLAN frame; reverse=True makes the reply (pods and nodes swapped)."""
    (src, dst), outer = swap((src, dst), reverse), swap(outer, reverse)
    # flags=0x08 is what Linux sends; Scapy's default adds the GPE next-protocol bit.
    return (
        Ether(src=MAC1, dst=MAC2)
        / IP(src=outer[0], dst=outer[1])
        / UDP(sport=40000, dport=port)
        / VXLAN(flags=0x08, vni=vni)
        / Ether(src="0a:00:00:00:00:01", dst="0a:00:00:00:00:02")
        / inner(src, dst)
    )


def udp_encap(
    src: str = POD_A,
    dst: str = POD_B,
    outer: tuple[str, str] = (NODE1, NODE2),
    port: int = 8285,
    header: bytes = b"",
    reverse: bool = False,
) -> Packet:
    """A flannel-udp datagram; ``header`` is put in front of the inner packet."""
    (src, dst), outer = swap((src, dst), reverse), swap(outer, reverse)
    return (
        Ether(src=MAC1, dst=MAC2)
        / IP(src=outer[0], dst=outer[1])
        / UDP(sport=8285, dport=port)
        / Raw(header + bytes(inner(src, dst)))
    )


def ipip(
    src: str = POD_A,
    dst: str = POD_B,
    outer: tuple[str, str] = (NODE1, NODE2),
    reverse: bool = False,
) -> Packet:
    (src, dst), outer = swap((src, dst), reverse), swap(outer, reverse)
    return Ether(src=MAC1, dst=MAC2) / IP(src=outer[0], dst=outer[1], proto=4) / inner(src, dst)


def bare(src: str = POD_A, dst: str = POD_B, eth_dst: str = MAC2, reverse: bool = False) -> Packet:
    """An unencapsulated frame; the reply goes back to node1's MAC."""
    if reverse:
        src, dst, eth_dst = dst, src, MAC1
    return Ether(src=MAC1, dst=eth_dst) / IP(src=src, dst=dst) / TCP(sport=33000, dport=80)


def both_ways(make: Callable[..., Packet], n: int = 3, **kw: object) -> list[Packet]:
    """n packets POD_A -> POD_B and n replies."""
    return [make(**kw) for _ in range(n)] + [make(reverse=True, **kw) for _ in range(n)]


def noise() -> list[Packet]:
    """Traffic every capture has and the checker must ignore."""
    return [
        Ether(dst="ff:ff:ff:ff:ff:ff") / ARP(psrc=POD_A, pdst=POD_B),
        Ether() / IPv6(src="fe80::1", dst="ff02::2") / ICMPv6ND_RS(),
        Ether() / IP(src=NODE1, dst=NODE2) / TCP(sport=179, dport=50000) / Raw(b"\xff" * 19),
    ]


def roundtrip(tmp_path: Path, packets: list[Packet], linktype: int | None = None) -> list[Packet]:
    path = tmp_path / "cap.pcap"
    if linktype is None:
        wrpcap(str(path), packets)
    else:
        wrpcap(str(path), packets, linktype=linktype)
    return load_packets(path)


# ---------------------------------------------------------------- positive, per encap


def test_vxlan_flow_passes_through_pcap_roundtrip(tmp_path: Path) -> None:
    packets = roundtrip(tmp_path, both_ways(vxlan, n=12) + noise())
    result = check_flow(packets, flow(), pcap="cap.pcap")
    assert result.passed, result.detail
    assert "12 packets src->dst, 12 dst->src" in result.detail
    assert result.pcap == "cap.pcap"


def test_calico_vxlan_port_4789_passes() -> None:
    # Scapy decodes 4789 as VXLAN itself; the checker must agree with its own decoding.
    packets = both_ways(vxlan, port=4789, vni=4096)
    assert check_flow(packets, flow(port=4789, vni=4096)).passed


def test_one_direction_is_enough() -> None:
    result = check_flow([vxlan()], flow())
    assert result.passed
    assert "1 packets src->dst, 0 dst->src" in result.detail


def test_udp_flow_passes() -> None:
    assert check_flow(both_ways(udp_encap), flow("udp")).passed


def test_ipip_flow_passes() -> None:
    assert check_flow(both_ways(ipip), flow("ipip")).passed


def test_bare_flow_with_next_hop_mac_passes_case_insensitively() -> None:
    result = check_flow(both_ways(bare), flow("bare", next_hop_mac=MAC2.upper()))
    assert result.passed, result.detail


# ---------------------------------------------------------------- negative flows


def test_wrong_udp_port_is_detected_not_missed() -> None:
    result = check_flow(both_ways(vxlan, port=4789), flow())
    assert not result.passed
    assert "expected VXLAN VNI 1 on UDP 8472" in result.detail
    assert "saw VXLAN VNI 1 on UDP 4789" in result.detail


def test_vxlan_on_unusual_port_is_decoded() -> None:
    # Neither 4789 nor 8472: only the checker's own decoding can tell this is VXLAN.
    result = check_flow([vxlan(port=9999)], flow())
    assert not result.passed
    assert "VXLAN VNI 1 on UDP 9999" in result.detail


def test_wrong_vni() -> None:
    result = check_flow(both_ways(vxlan, vni=2), flow())
    assert not result.passed
    assert "expected VXLAN VNI 1 on UDP 8472" in result.detail
    assert "saw VXLAN VNI 2 on UDP 8472" in result.detail


def test_wrong_outer_ips_swapped_nodes() -> None:
    packets = [vxlan(outer=(NODE2, NODE1))]
    result = check_flow(packets, flow())
    assert not result.passed
    assert f"outer {NODE2} -> {NODE1} (expected {NODE1} -> {NODE2})" in result.detail


def test_wrong_outer_ip_third_node() -> None:
    result = check_flow([ipip(outer=(NODE1, NODE3))], flow("ipip"))
    assert not result.passed
    assert NODE3 in result.detail


def test_bare_where_vxlan_expected() -> None:
    result = check_flow(both_ways(bare), flow())
    assert not result.passed
    assert "saw bare packets" in result.detail
    assert "3 packets src->dst" in result.detail


def test_vxlan_where_bare_expected() -> None:
    result = check_flow(both_ways(vxlan), flow("bare"))
    assert not result.passed
    assert "expected bare packets" in result.detail
    assert "saw VXLAN VNI 1 on UDP 8472" in result.detail


def test_udp_payload_with_extra_header_fails() -> None:
    result = check_flow([udp_encap(header=b"\x00\x00\x00\x01")], flow("udp"))
    assert not result.passed
    assert "expected UDP 8285 carrying the bare IP packet" in result.detail
    assert "4-byte header before the inner IP packet" in result.detail


def test_udp_expected_but_vxlan_seen() -> None:
    result = check_flow([vxlan()], flow("udp"))
    assert not result.passed
    assert "expected UDP 8285" in result.detail
    assert "saw VXLAN VNI 1 on UDP 8472" in result.detail


def test_udp_wrong_port() -> None:
    result = check_flow([udp_encap(port=8286)], flow("udp"))
    assert not result.passed
    assert "saw UDP 8286 carrying the bare IP packet" in result.detail


def test_ipip_with_wrong_inner_ips() -> None:
    result = check_flow([ipip(POD_A, POD_C)], flow("ipip"))
    assert not result.passed
    assert "no packets between the pods at all" in result.detail


def test_host_gw_wrong_next_hop_mac() -> None:
    packets = [bare(eth_dst="02:00:00:00:00:99")]
    result = check_flow(packets, flow("bare", next_hop_mac=MAC2))
    assert not result.passed
    assert "Ethernet dst 02:00:00:00:00:99" in result.detail


def test_reply_frames_are_not_held_to_the_forward_next_hop() -> None:
    # Replies go to the source node's MAC, which the flow does not name.
    packets = [bare(POD_B, POD_A, eth_dst=MAC1), bare()]
    assert check_flow(packets, flow("bare", next_hop_mac=MAC2)).passed


def test_mixed_correct_and_wrong_packets_fail() -> None:
    packets = [*both_ways(vxlan, n=5), bare()]
    result = check_flow(packets, flow())
    assert not result.passed
    assert "saw bare packets (1 packets src->dst)" in result.detail
    assert "mixed: also 10 correct packets" in result.detail


def test_empty_capture(tmp_path: Path) -> None:
    packets = roundtrip(tmp_path, [])
    result = check_flow(packets, flow())
    assert not result.passed
    assert "no packets between the pods at all" in result.detail


def test_check_flows_one_result_per_flow_from_one_index() -> None:
    other = flow(src_pod="default/c", src_pod_ip=POD_C, src_node="node3", src_node_ip=NODE3)
    index = index_packets(both_ways(vxlan))
    results = check_flows(index, [flow(), other], pcap="x.pcap")
    assert [r.passed for r in results] == [True, False]
    assert all(r.pcap == "x.pcap" for r in results)


# ---------------------------------------------------------------- against the oracle
# Flows built by verify from labctl.oracle (not from the planner), on a fabric matching the
# addresses above: node1 and node2 share lan1, node3 sits behind router r1 on lan2.

ORACLE_TOPOLOGY = parse_topology(
    {
        "name": "oracle",
        "segments": {"lan1": {"cidr": "10.0.0.0/24"}, "lan2": {"cidr": "10.0.1.0/24"}},
        "routers": {"r1": {"interfaces": {"lan1": "10.0.0.1", "lan2": "10.0.1.1"}}},
        "nodes": {
            "node1": {"segment": "lan1", "ip": NODE1},
            "node2": {"segment": "lan1", "ip": NODE2},
            "node3": {"segment": "lan2", "ip": NODE3},
        },
    }
)


@dataclasses.dataclass
class _Pod:
    key: str
    ip: str
    node: str


def oracle_flow(mode: str, dst: str = "node2") -> Flow:
    """The oracle's flow POD_A (node1) -> the pod on `dst` (POD_B on node2, POD_C on node3)."""
    pods = [_Pod("default/a", POD_A, "node1")]
    pods += [_Pod("default/b", POD_B, "node2")] if dst == "node2" else []
    pods += [_Pod("default/c", POD_C, "node3")] if dst == "node3" else []
    macs = {"node1": MAC1, "node2": MAC2, "node3": "02:00:00:00:00:03"}
    return oracle_flows(pods, mode, ORACLE_TOPOLOGY, macs)[0]


@pytest.mark.parametrize(
    ("mode", "packets"),
    [
        ("calico-vxlan", lambda: both_ways(vxlan, port=4789, vni=4096)),
        ("canal", lambda: both_ways(vxlan)),
        ("flannel-udp", lambda: both_ways(udp_encap)),
        ("flannel-ipip", lambda: both_ways(ipip)),
        ("calico-ipip", lambda: both_ways(ipip)),
        ("calico-vxlan-crosssubnet", lambda: both_ways(bare)),
        ("flannel-host-gw", lambda: both_ways(bare)),
    ],
)
def test_the_oracles_flow_passes_the_right_wire(
    mode: str, packets: Callable[[], list[Packet]]
) -> None:
    # The positive twin of every negative below: the same flows do pass on the right wire.
    result = check_flow(packets(), oracle_flow(mode))
    assert result.passed, result.detail


def test_calico_vni_1_instead_of_4096() -> None:
    result = check_flow(both_ways(vxlan, port=4789, vni=1), oracle_flow("calico-vxlan"))
    assert not result.passed
    assert "expected VXLAN VNI 4096 on UDP 4789 between 10.0.0.32 and 10.0.0.33" in result.detail
    assert "saw VXLAN VNI 1 on UDP 4789 (3 packets src->dst, 3 packets dst->src)" in result.detail


def test_calico_with_flannels_port_and_vni() -> None:
    result = check_flow(both_ways(vxlan), oracle_flow("calico-vxlan"))
    assert not result.passed and "saw VXLAN VNI 1 on UDP 8472" in result.detail


def test_udp_with_a_wrong_outer_ip() -> None:
    # Right port, right payload, but sent to node3's address instead of node2's.
    result = check_flow([udp_encap(outer=(NODE1, NODE3))], oracle_flow("flannel-udp"))
    assert not result.passed
    assert (
        f"UDP 8285 carrying the bare IP packet with outer {NODE1} -> {NODE3} "
        f"(expected {NODE1} -> {NODE2})"
    ) in result.detail


def test_udp_where_bare_is_seen() -> None:
    result = check_flow(both_ways(bare), oracle_flow("flannel-udp"))
    assert not result.passed
    assert "expected UDP 8285 carrying the bare IP packet between" in result.detail
    assert "saw bare packets (3 packets src->dst, 3 packets dst->src)" in result.detail


@pytest.mark.parametrize("mode", ["flannel-ipip", "calico-ipip"])
@pytest.mark.parametrize(
    ("seen", "wording"),
    [
        (lambda: both_ways(bare), "saw bare packets"),
        (lambda: both_ways(vxlan, port=4789, vni=4096), "saw VXLAN VNI 4096 on UDP 4789"),
    ],
)
def test_ipip_where_bare_or_vxlan_is_seen(
    mode: str, seen: Callable[[], list[Packet]], wording: str
) -> None:
    result = check_flow(seen(), oracle_flow(mode))
    assert not result.passed
    assert "expected IPIP (IP protocol 4) between 10.0.0.32 and 10.0.0.33" in result.detail
    assert wording in result.detail


def test_crosssubnet_ipip_to_a_same_subnet_peer() -> None:
    # CrossSubnet: node1 -> node2 share lan1, so IPIP there is wrong; node3 needs it.
    result = check_flow(both_ways(ipip), oracle_flow("calico-ipip-crosssubnet"))
    assert not result.passed
    assert f"expected bare packets to next hop {MAC2}, saw IPIP" in result.detail
    remote = oracle_flow("calico-ipip-crosssubnet", dst="node3")
    assert check_flow([ipip(POD_A, POD_C, outer=(NODE1, NODE3))], remote).passed
    assert not check_flow([bare(POD_A, POD_C, eth_dst=MAC2)], remote).passed


@pytest.mark.parametrize(
    ("mode", "make"),
    [
        ("calico-vxlan", lambda o: vxlan(outer=o, port=4789, vni=4096)),
        ("flannel-udp", lambda o: udp_encap(outer=o)),
        ("flannel-ipip", lambda o: ipip(outer=o)),
    ],
)
def test_right_carrier_between_the_wrong_nodes(
    mode: str, make: Callable[[tuple[str, str]], Packet]
) -> None:
    # Pod a (node1) -> pod b (node2), but the tunnel runs node3 -> node2: relayed or spoofed.
    result = check_flow([make((NODE3, NODE2))], oracle_flow(mode))
    assert not result.passed
    assert f"outer {NODE3} -> {NODE2} (expected {NODE1} -> {NODE2})" in result.detail
    leak = check_no_leaks([make((NODE3, NODE2))], [oracle_flow(mode)], POD_CIDR)
    assert not leak.passed and f"(outer {NODE3} -> {NODE2})" in leak.detail


def _fragments(packet: Packet, size: int = 600) -> list[Packet]:
    """`packet`'s outer IPv4 packet split into fragments, each in an Ethernet frame."""
    return [Ether(src=MAC1, dst=MAC2) / f for f in fragment(packet[IP], fragsize=size)]


def test_fragmented_tunnel_packets_fail() -> None:
    big = vxlan(port=4789, vni=4096)
    big[ICMP].remove_payload()
    big = big / Raw(b"x" * 1400)  # a 1450-byte pod packet: 1500 on the wire, over 600
    frags = _fragments(big)
    assert len(frags) == 3
    result = check_flow(frags, oracle_flow("calico-vxlan"))
    assert not result.passed
    assert "VXLAN VNI 4096 on UDP 4789 in IP fragments" in result.detail
    assert "the pod MTU is too large" in result.detail
    # The later fragments carry only the node addresses: the leak check still names them.
    leak = check_no_leaks(frags, [oracle_flow("calico-vxlan")], POD_CIDR)
    assert not leak.passed
    assert f"{NODE1} -> {NODE2} as bare packets in IP fragments x2" in leak.detail
    assert f"{POD_A} -> {POD_B} as VXLAN VNI 4096 on UDP 4789" in leak.detail


def test_fragmented_bare_packets_fail() -> None:
    big = bare() / Raw(b"x" * 1400)
    result = check_flow(_fragments(big), oracle_flow("flannel-host-gw"))
    assert not result.passed and "bare packets in IP fragments" in result.detail


# ---------------------------------------------------------------- cooked captures


def test_cooked_sll_capture(tmp_path: Path) -> None:
    packets = [CookedLinux(pkttype=4, proto=0x0800) / p[IP] for p in both_ways(vxlan)]
    loaded = roundtrip(tmp_path, packets, linktype=113)
    assert isinstance(loaded[0], CookedLinux)
    assert check_flow(loaded, flow()).passed
    assert not check_flow(loaded, flow(vni=2)).passed


def test_cooked_sll2_capture(tmp_path: Path) -> None:
    packets = [CookedLinuxV2(proto=0x0800) / p[IP] for p in both_ways(ipip)]
    loaded = roundtrip(tmp_path, packets, linktype=276)
    assert isinstance(loaded[0], CookedLinuxV2)
    assert check_flow(loaded, flow("ipip")).passed


def test_cooked_capture_cannot_prove_next_hop() -> None:
    packets = [CookedLinux(pkttype=4, proto=0x0800) / bare()[IP]]
    result = check_flow(packets, flow("bare", next_hop_mac=MAC2))
    assert not result.passed
    assert "cooked capture" in result.detail
    assert check_flow(packets, flow("bare")).passed


# ---------------------------------------------------------------- leaks


def test_no_leaks_passes_and_ignores_arp_ipv6_and_bgp() -> None:
    result = check_no_leaks(both_ways(vxlan) + noise(), [flow()], POD_CIDR)
    assert result.passed, result.detail
    assert "all 6 packets" in result.detail


def test_leak_bare_pod_ips_in_vxlan_capture() -> None:
    packets = [*both_ways(vxlan), bare(), bare(), bare(POD_C, POD_B)]
    result = check_no_leaks(packets, [flow()], POD_CIDR)
    assert not result.passed
    assert result.detail.startswith("3 of 9 packets")
    assert f"{POD_A} -> {POD_B} as bare packets x2" in result.detail
    assert f"{POD_C} -> {POD_B} as bare packets x1" in result.detail


def test_leak_encapsulated_in_bare_mode_and_example_limit() -> None:
    packets = [vxlan(), ipip(), udp_encap(), udp_encap(header=b"\x01\x02"), bare()]
    result = check_no_leaks(packets, [flow("bare")], POD_CIDR)
    assert not result.passed
    assert result.detail.startswith("4 of 5 packets")
    assert "and 1 more kinds" in result.detail


def test_leak_pod_address_only_in_outer_header() -> None:
    # Outer pod address around a non-pod inner packet still carries pod-CIDR addresses.
    packet = Ether() / IP(src=POD_A, dst=NODE2, proto=4) / inner("192.0.2.1", "192.0.2.2")
    assert not check_no_leaks([packet], [flow()], POD_CIDR).passed


# ---------------------------------------------------------------- external captures


def test_mode_check_accepts_the_right_carrier() -> None:
    packets = both_ways(vxlan) + noise()
    results = check_capture_for_mode(packets, [FLANNEL_VXLAN], POD_CIDR, pcap="ext.pcap")
    assert len(results) == 1
    assert results[0].passed
    assert "6 packets, 2 directed pod pairs" in results[0].detail


def test_mode_check_directrouting_allows_bare_and_vxlan() -> None:
    packets = [*both_ways(vxlan), bare(POD_A, POD_C)]
    results = check_capture_for_mode(packets, [WireSpec("bare"), FLANNEL_VXLAN], POD_CIDR)
    assert all(r.passed for r in results)
    assert len(results) == 2


def test_mode_check_rejects_other_carriers() -> None:
    packets = [*both_ways(vxlan), vxlan(vni=2), bare(), bare()]
    results = check_capture_for_mode(packets, [FLANNEL_VXLAN], POD_CIDR)
    failed = [r for r in results if not r.passed]
    assert len(failed) == 1
    assert "saw unexpected bare packets: 2 packets" in failed[0].detail
    assert "VXLAN VNI 2 on UDP 8472: 1 packets" in failed[0].detail
    assert f"{POD_A} -> {POD_B}" in failed[0].detail


def test_mode_check_rejects_fragmented_tunnel_packets() -> None:
    big = vxlan() / Raw(b"x" * 1400)
    results = check_capture_for_mode(_fragments(big), [FLANNEL_VXLAN], POD_CIDR)
    (failed,) = [r for r in results if not r.passed]
    assert "VXLAN VNI 1 on UDP 8472 in IP fragments" in failed.detail
    assert "the pod MTU is too large" in failed.detail


@pytest.mark.parametrize(
    ("mode", "good", "bad"),
    [
        ("calico-vxlan", lambda: both_ways(vxlan, port=4789, vni=4096), lambda: both_ways(vxlan)),
        ("flannel-udp", lambda: both_ways(udp_encap), lambda: both_ways(bare)),
        ("calico-ipip-crosssubnet", lambda: both_ways(bare), lambda: both_ways(udp_encap)),
    ],
)
def test_verify_pcap_takes_the_modes_wire_from_the_oracle(
    tmp_path: Path,
    mode: str,
    good: Callable[[], list[Packet]],
    bad: Callable[[], list[Packet]],
) -> None:
    path = tmp_path / "cap.pcap"
    wrpcap(str(path), good())
    assert verify_pcap(path, mode, POD_CIDR).passed
    wrpcap(str(path), bad())
    report = verify_pcap(path, mode, POD_CIDR)
    assert not report.passed
    assert "wire: unexpected carriers" in [c.name for c in report.checks]


def test_mode_check_without_pod_traffic_fails() -> None:
    results = check_capture_for_mode(noise(), [FLANNEL_VXLAN], POD_CIDR)
    assert len(results) == 1
    assert not results[0].passed
    assert "no pod traffic in capture" in results[0].detail


def test_mode_check_reports_unknown_ip_protocol_tunnel() -> None:
    # GRE-like: 4 bytes of header, then the pod packet.
    packet = (
        Ether()
        / IP(src=NODE1, dst=NODE2, proto=47)
        / Raw(b"\x00\x00\x08\x00")
        / inner(POD_A, POD_B)
    )
    results = check_capture_for_mode([packet], [FLANNEL_VXLAN], POD_CIDR)
    assert not results[0].passed
    assert "IP protocol 47 with a 4-byte header" in results[0].detail


# ---------------------------------------------------------------- misc


def test_summarize_counts_per_carrier() -> None:
    packets = [*both_ways(vxlan), bare(), *noise()]
    summary = summarize(index_packets(packets), POD_CIDR)
    assert summary == {
        "packets": 10,
        "pod_packets": 7,
        "carriers": {"VXLAN VNI 1 on UDP 8472": 6, "bare packets": 1},
    }


def test_random_udp_payload_is_not_taken_for_a_tunnel() -> None:
    packet = Ether() / IP(src=NODE1, dst=NODE2) / UDP(dport=53) / Raw(bytes(range(256)))
    index = index_packets([packet])
    assert list(index.pairs) == [(NODE1, NODE2)]


def mixed_capture() -> list[Packet]:
    return [
        *both_ways(vxlan),
        *both_ways(udp_encap),
        udp_encap(header=b"\x00\x01"),
        ipip(),
        bare(eth_dst="02:00:00:00:00:99"),
        *noise(),
    ]


@pytest.mark.parametrize(
    ("linktype", "frame"),
    [
        (None, lambda p: p),
        (None, lambda p: Ether(src=p.src, dst=p.dst) / Dot1Q(vlan=7) / p.payload),
        (113, lambda p: CookedLinux(pkttype=4, proto=0x0800) / p[IP]),
        (276, lambda p: CookedLinuxV2(proto=0x0800) / p[IP]),
        (101, lambda p: p[IP]),
    ],
    ids=["ether", "vlan", "sll", "sll2", "raw"],
)
def test_index_pcap_matches_scapy_dissection(
    tmp_path: Path, linktype: int | None, frame: Callable[[Packet], Packet]
) -> None:
    # ARP/IPv6 noise is kept where the link type can frame it (Ethernet).
    packets = [frame(p) for p in mixed_capture() if IP in p or linktype is None]
    loaded = roundtrip(tmp_path, packets, linktype=linktype)
    index = index_pcap(tmp_path / "cap.pcap")
    assert index == index_packets(loaded)
    assert index.packets == len(packets)
    assert not check_flow(index, flow("bare", next_hop_mac=MAC2)).passed


def test_index_pcap_reads_pcapng(tmp_path: Path) -> None:
    path = tmp_path / "cap.pcapng"
    wrpcapng(str(path), both_ways(vxlan))
    assert check_flow(index_pcap(path), flow()).passed


def test_index_pcap_unreadable(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pcap"
    garbage.write_bytes(b"not a pcap file at all")
    with pytest.raises(CaptureError, match="cannot read capture"):
        index_pcap(garbage)
    with pytest.raises(CaptureError, match="cannot read capture"):
        index_pcap(tmp_path / "missing.pcap")


def test_load_packets_unreadable(tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match="cannot read capture"):
        load_packets(tmp_path / "missing.pcap")
    garbage = tmp_path / "garbage.pcap"
    garbage.write_bytes(b"not a pcap file at all")
    with pytest.raises(CaptureError, match=str(garbage)):
        load_packets(garbage)
