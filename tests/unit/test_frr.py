"""Rendering of FRR configs, and FRR's own dry-run of them (no root needed)."""

from __future__ import annotations

import os
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from pydantic import ValidationError

from labctl import bgp, frr

needs_frr = pytest.mark.skipif(frr.frr_available() is not None, reason=str(frr.frr_available()))

NODES = [
    bgp.CalicoNode("master", "10.0.0.31", ["10.65.0.0/26"]),
    bgp.CalicoNode("node1", "10.0.0.32", ["10.65.1.0/26"]),
    bgp.CalicoNode("node2", "10.0.1.9", ["10.65.2.0/26"]),
    bgp.CalicoNode("node3", "10.0.1.10", ["10.65.3.0/26"]),
]


def _lines(speaker: bgp.BgpSpeaker) -> list[str]:
    return [ln.strip() for ln in bgp.render(speaker).splitlines()]


def _mesh() -> dict[str, bgp.BgpSpeaker]:
    return bgp.calico_speakers(NODES)


def _rr() -> dict[str, bgp.BgpSpeaker]:
    nodes = [NODES[0]._replace(rr_cluster_id="1.0.0.1"), *NODES[1:]]
    return bgp.calico_speakers(nodes)


def _router() -> bgp.BgpSpeaker:
    return bgp.router_speaker("r1", "10.0.0.1", 65001, ["10.0.0.31", "10.0.0.32"])


def _static_router() -> bgp.BgpSpeaker:
    # model_validate: the shape a planner builds from topology YAML, strings and tuples.
    return bgp.BgpSpeaker.model_validate(
        {
            "name": "r2",
            "router_id": "10.0.1.1",
            "static_routes": [("10.65.0.0/26", "10.0.0.31"), ("10.66.0.0/16", "blackhole")],
        }
    )


def test_full_mesh_has_every_other_node() -> None:
    speakers = _mesh()
    for me in NODES:
        speaker = speakers[me.name]
        assert speaker.asn == bgp.DEFAULT_ASN
        assert str(speaker.router_id) == me.ip
        assert sorted(str(n.ip) for n in speaker.neighbors) == sorted(
            str(n.ip) for n in NODES if n is not me
        )
        lines = _lines(speaker)
        assert f"bgp router-id {me.ip}" in lines
        for peer in speaker.neighbors:
            assert f"neighbor {peer.ip} remote-as 64512" in lines
            assert f"neighbor {peer.ip} update-source {me.ip}" in lines
            assert f"neighbor {peer.ip} activate" in lines
            assert f"neighbor {peer.ip} description Mesh_{str(peer.ip).replace('.', '_')}" in lines


def test_mesh_passive_side_is_the_lower_address_as_a_string() -> None:
    speakers = _mesh()
    # Calico compares strings: "10.0.1.10" < "10.0.1.9", so node3 waits for node2 to dial.
    by_ip = {str(n.ip): n for n in speakers["node3"].neighbors}
    assert by_ip["10.0.1.9"].passive
    assert not {str(n.ip): n for n in speakers["node2"].neighbors}["10.0.1.10"].passive
    # Exactly one side of every pair is passive.
    for a in NODES:
        for b in NODES:
            if a is b:
                continue
            a_side = next(n for n in speakers[a.name].neighbors if str(n.ip) == b.ip)
            b_side = next(n for n in speakers[b.name].neighbors if str(n.ip) == a.ip)
            assert a_side.passive != b_side.passive
    assert "neighbor 10.0.1.9 passive" in _lines(speakers["node3"])


def test_block_announced_as_blackhole_plus_network() -> None:
    lines = _lines(_mesh()["node1"])
    assert "ip route 10.65.1.0/26 blackhole" in lines
    assert "network 10.65.1.0/26" in lines


def test_calico_like_globals() -> None:
    lines = _lines(_mesh()["master"])
    for expected in (
        "frr defaults datacenter",
        "no bgp default ipv4-unicast",
        "no bgp ebgp-requires-policy",
        "bgp bestpath as-path multipath-relax",
        "maximum-paths ibgp 64",
        "timers bgp 3 9",
        "ip nht resolve-via-default",
    ):
        assert expected in lines
    assert "bgp no-rib" not in lines
    assert not any(ln.startswith("bgp graceful-restart") for ln in lines)


def test_timers_are_configurable() -> None:
    speaker = _mesh()["master"].model_copy(
        update={"timers": bgp.BgpTimers(keepalive=1, hold=3, connect_retry=1)}
    )
    lines = _lines(speaker)
    assert "timers bgp 1 3" in lines
    assert "neighbor 10.0.0.32 timers connect 1" in lines
    with pytest.raises(ValidationError):
        bgp.BgpTimers(keepalive=10, hold=5)


def test_route_reflector_and_clients() -> None:
    speakers = _rr()
    rr = speakers["master"]
    lines = _lines(rr)
    assert "bgp cluster-id 1.0.0.1" in lines
    assert len(rr.neighbors) == len(NODES) - 1
    for n in rr.neighbors:
        assert f"neighbor {n.ip} route-reflector-client" in lines
        assert f"neighbor {n.ip} description Global_{str(n.ip).replace('.', '_')}" in lines
    for client in ("node1", "node2", "node3"):
        assert [str(n.ip) for n in speakers[client].neighbors] == ["10.0.0.31"]
        assert not any("route-reflector-client" in ln for ln in _lines(speakers[client]))
        assert not any(ln.startswith("bgp cluster-id") for ln in _lines(speakers[client]))


def test_reflectors_in_one_cluster_are_not_each_others_clients() -> None:
    nodes = [
        NODES[0]._replace(rr_cluster_id="1.0.0.1"),
        NODES[1]._replace(rr_cluster_id="1.0.0.1"),
        NODES[2]._replace(rr_cluster_id="1.0.0.2"),
        NODES[3],
    ]
    speakers = bgp.calico_speakers(nodes)
    clients = {str(n.ip): n.rr_client for n in speakers["master"].neighbors}
    assert clients == {"10.0.0.32": False, "10.0.1.9": True, "10.0.1.10": True}


def test_router_peers_ebgp_with_nodes() -> None:
    router = _router()
    lines = _lines(router)
    assert "router bgp 65001" in lines
    assert "redistribute connected" in lines
    for ip in ("10.0.0.31", "10.0.0.32"):
        assert f"neighbor {ip} remote-as 64512" in lines
        assert f"neighbor {ip} as-override" in lines
    # The kernel picks the source address on each segment.
    assert not any("update-source" in ln for ln in lines)

    peer = bgp.BgpNeighbor(ip=IPv4Address("10.0.0.1"), remote_asn=65001, description="r1")
    speakers = bgp.calico_speakers(NODES, external_peers={"master": [peer]})
    master = _lines(speakers["master"])
    assert "neighbor 10.0.0.1 remote-as 65001" in master
    assert "neighbor 10.0.0.1 passive" not in master
    assert len(speakers["master"].neighbors) == len(NODES)


def test_install_routes_false_keeps_bgp_out_of_the_rib() -> None:
    speaker = bgp.calico_speakers(NODES, install_routes=False)["master"]
    assert "bgp no-rib" in _lines(speaker)


def test_static_only_router() -> None:
    router = _static_router()
    lines = _lines(router)
    assert "ip route 10.65.0.0/26 10.0.0.31" in lines
    assert "ip route 10.66.0.0/16 blackhole" in lines
    assert not any(ln.startswith("router bgp") for ln in lines)
    assert router.daemons() == ["zebra", "staticd"]
    assert _mesh()["master"].daemons() == ["zebra", "staticd", "bgpd"]
    assert _router().daemons() == ["zebra", "bgpd"]


def test_inconsistent_speakers_are_rejected_before_frr() -> None:
    ebgp_client = {"ip": "10.0.0.2", "remote_asn": 65001, "rr_client": True}
    with pytest.raises(ValidationError, match="not iBGP"):
        bgp.BgpSpeaker.model_validate(
            {"name": "x", "router_id": "10.0.0.1", "asn": 64512, "neighbors": [ebgp_client]}
        )
    with pytest.raises(ValidationError, match="no asn"):
        bgp.BgpSpeaker.model_validate(
            {
                "name": "x",
                "router_id": "10.0.0.1",
                "neighbors": [{"ip": "10.0.0.2", "remote_asn": 1}],
            }
        )
    with pytest.raises(ValidationError):
        bgp.BgpSpeaker.model_validate({"name": "two words", "router_id": "10.0.0.1"})


def test_node_path_resolves_symlinks_inside_the_node() -> None:
    if not Path("/var/run").is_symlink() or os.readlink("/var/run") != "/run":
        pytest.skip("/var/run is not a symlink to /run here")
    pid = os.getpid()
    # /proc/PID/root/var/run would jump back to *our* /run; node_path must not.
    assert frr.node_path(pid, "/var/run/frr") == Path(f"/proc/{pid}/root/run/frr")
    assert frr.node_path(pid, "/etc/frr/frr.conf") == Path(f"/proc/{pid}/root/etc/frr/frr.conf")


ALL_CONFIGS = {
    **{f"mesh-{k}": v for k, v in _mesh().items()},
    **{f"rr-{k}": v for k, v in _rr().items()},
    "router-ebgp": _router(),
    "router-static": _static_router(),
    "no-install": bgp.calico_speakers(NODES, install_routes=False)["node1"],
}


@needs_frr
@pytest.mark.parametrize("name", sorted(ALL_CONFIGS))
def test_rendered_configs_pass_frr_dry_run(name: str) -> None:
    checks = frr.check(bgp.render(ALL_CONFIGS[name]))
    assert checks[:1] == ("vtysh",) and "bgpd" in checks
    if os.geteuid() == 0:
        assert checks == ("vtysh", "zebra", "staticd", "bgpd")


@needs_frr
def test_syntax_error_raises_with_frr_message() -> None:
    config = bgp.render(_mesh()["master"]).replace("remote-as 64512", "remote-az 64512", 1)
    with pytest.raises(frr.FrrConfigError) as err:
        frr.check(config)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("vtysh: line ")
    assert "% Unknown command" in message and "remote-az 64512" in message


@needs_frr
def test_semantic_error_raises_with_bgpd_message() -> None:
    # Valid grammar, but a reflector client must be an iBGP peer: only bgpd knows.
    config = bgp.render(_router()).replace(
        "  neighbor 10.0.0.31 as-override", "  neighbor 10.0.0.31 route-reflector-client"
    )
    with pytest.raises(frr.FrrConfigError) as err:
        frr.check(config)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("bgpd: % Invalid command. Not an internal neighbor")
    if os.geteuid() == 0:
        assert "route-reflector-client" in message


def test_router_id_is_an_address() -> None:
    assert _mesh()["master"].router_id == IPv4Address("10.0.0.31")
    with pytest.raises(ValidationError):
        bgp.BgpSpeaker.model_validate({"name": "x", "router_id": "not-an-ip"})
