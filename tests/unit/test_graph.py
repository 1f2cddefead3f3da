"""`labctl graph`: the picture of a lab (labctl.graph) holds every segment, router, node,
external host and pod with its addresses; the tunnels overlay labels each node pair as the plan
carries it; the BGP overlay has exactly the plan's sessions, coloured by live state; the verb
writes svg/png/dot/mermaid and fails in one line. No root, no lab."""

from __future__ import annotations

import html
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from labctl import frr, graph, state, store
from labctl.cli import main
from labctl.cli.graph import NO_ANSWER, live_bgp_states
from labctl.modes import MODES, get_mode
from labctl.plan import Plan
from labctl.topology import TOPOLOGY_DIR, Topology, parse_topology

from .plan_helpers import plan, topo

TOPOLOGIES = ("default", "cross-subnet", "leaf-spine", "route-reflector", "services")
TEXT = {"dot": graph.to_dot, "mermaid": graph.to_mermaid}
VXLAN_FLANNEL = "VXLAN VNI 1 :8472"
GREEN, RED = "#2e7d32", "#c62828"
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz dot not installed")


def _build(
    t: Topology,
    p: Plan,
    overlay: graph.Overlay = "tunnels",
    pods: list[graph.PodView] | None = None,
    states: dict[str, dict[str, str]] | None = None,
) -> graph.Graph:
    return graph.build(t, p, graph.topology_pods(t) if pods is None else pods, overlay, states)


def _label(fmt: str, lines: tuple[str, ...] | list[str]) -> str:
    """How a vertex label appears in each text form."""
    return ("\\n" if fmt == "dot" else "<br/>").join(lines)


def _edge(fmt: str, a: str, b: str, label: str = "") -> str:
    """How an edge appears in each text form (up to its attributes)."""
    if fmt == "dot":
        return f'"{a}" -- "{b}" [' + (f'label="{label}"' if label else "")
    return f'{a} ---|"{label}"| {b}' if label else f"{a} --- {b}\n"


def _vid(g: graph.Graph, kind: str, name: str) -> str:
    (found,) = [v.id for v in g.vertices if v.kind == kind and v.lines[0] == name]
    return found


def _expected(t: Topology, pods: list[graph.PodView]) -> list[tuple[str, str, tuple[str, ...]]]:
    """(kind, name, label lines) of everything the picture must show, from the topology."""
    out: list[tuple[str, str, tuple[str, ...]]] = [
        ("segment", s, (s, str(seg.cidr))) for s, seg in t.segments.items()
    ]
    for r, router in t.routers.items():
        asn = [f"AS {router.asn}"] if router.asn else []
        ifaces = [f"{s} {ip}" for s, ip in router.interfaces.items()]
        out.append(("router", r, (r, *asn, *ifaces)))
    for n, node in t.nodes.items():
        out.append(("node", n, (n, str(node.ip), f"pods {t.node_pod_cidrs[n]}")))
    out += [("external", x, (x, str(e.ip), "external")) for x, e in t.externals.items()]
    out += [("pod", p.key, (p.key, p.ip)) for p in pods]
    return out


def _modified(name: str, change: Any) -> Topology:
    """A shipped topology with `change(data)` applied to its YAML data."""
    data = yaml.safe_load((TOPOLOGY_DIR / f"{name}.yaml").read_text())
    change(data)
    return parse_topology(data, name)


# ---------------------------------------------------------------- what the picture shows


@pytest.mark.parametrize("fmt", TEXT)
@pytest.mark.parametrize("name", TOPOLOGIES)
def test_every_vertex_with_its_addresses(name: str, fmt: str) -> None:
    t = topo(name)
    g = _build(t, plan("flannel-vxlan", name))
    text = TEXT[fmt](g)
    pods = graph.topology_pods(t)
    for kind, what, lines in _expected(t, pods):
        assert _label(fmt, lines) in text, (kind, what)
    # Ports on segments, pods in their node.
    for n, node in t.nodes.items():
        assert _edge(fmt, _vid(g, "node", n), _vid(g, "segment", node.segment)) in text
    for r, router in t.routers.items():
        for s in router.interfaces:
            assert _edge(fmt, _vid(g, "router", r), _vid(g, "segment", s)) in text
    for x, ext in t.externals.items():
        assert _edge(fmt, _vid(g, "external", x), _vid(g, "segment", ext.segment)) in text
    for p in pods:
        assert _edge(fmt, _vid(g, "pod", p.key), _vid(g, "node", p.node)) in text
        (vertex,) = [v for v in g.vertices if v.kind == "pod" and v.lines[0] == p.key]
        assert vertex.group == _vid(g, "node", p.node)
    kinds = [v.kind for v in g.vertices]
    assert len(kinds) == len(t.segments) + len(t.routers) + len(t.nodes) + len(t.externals) + len(
        pods
    )


@pytest.mark.parametrize("fmt", TEXT)
def test_a_pod_removed_from_the_input_is_gone(fmt: str) -> None:
    t = topo("default")
    pods = graph.topology_pods(t)
    gone, kept = pods[2], pods[:2] + pods[3:]
    text = TEXT[fmt](_build(t, plan("flannel-vxlan", "default"), pods=kept))
    assert gone.key not in text and gone.ip not in text
    assert all(p.key in text and p.ip in text for p in kept)
    # A pod applied after up is drawn with the address it got.
    extra = graph.PodView("test/late", "node2", "10.244.2.9")
    text = TEXT[fmt](_build(t, plan("flannel-vxlan", "default"), pods=[*kept, extra]))
    assert _label(fmt, ["test/late", "10.244.2.9"]) in text


@pytest.mark.parametrize("fmt", TEXT)
def test_an_external_or_router_removed_from_the_topology_is_gone(fmt: str) -> None:
    def no_laptop(data: dict[str, Any]) -> None:
        del data["externals"]["laptop"]

    t = _modified("services", no_laptop)
    text = TEXT[fmt](_build(t, get_mode("flannel-vxlan").plan(t)))
    assert "laptop" not in text and "10.0.0.100" not in text
    assert _label(fmt, ["internet", "192.168.100.10", "external"]) in text

    def no_router(data: dict[str, Any]) -> None:
        del data["routers"]

    t = _modified("services", no_router)
    text = TEXT[fmt](_build(t, get_mode("flannel-vxlan").plan(t)))
    assert "rtr_r1" not in text and "lan1 10.0.0.1" not in text


def test_calico_nodes_show_their_block_and_as() -> None:
    g = _build(topo("default"), plan("calico-bgp", "default"), "bgp")
    (master,) = [v for v in g.vertices if v.lines[0] == "master"]
    assert master.lines == (
        "master",
        "10.0.0.31",
        "pods 10.244.0.0/24",
        "block 10.244.0.0/26",
        "AS 64512",
    )
    # Flannel runs no speaker and hands out the whole pod CIDR.
    g = _build(topo("default"), plan("flannel-vxlan", "default"))
    (master,) = [v for v in g.vertices if v.lines[0] == "master"]
    assert master.lines == ("master", "10.0.0.31", "pods 10.244.0.0/24")


def test_segment_mtu_shown_only_when_not_1500() -> None:
    def jumbo(data: dict[str, Any]) -> None:
        data["segments"]["lan1"]["mtu"] = 9000

    t = _modified("default", jumbo)
    g = _build(t, get_mode("flannel-vxlan").plan(t))
    assert [v.lines for v in g.vertices if v.kind == "segment"] == [
        ("lan1", "10.0.0.0/24", "MTU 9000")
    ]
    g = _build(topo("default"), plan("flannel-vxlan", "default"))
    assert [v.lines for v in g.vertices if v.kind == "segment"] == [("lan1", "10.0.0.0/24")]


# ---------------------------------------------------------------- tunnels overlay


def _tunnels(g: graph.Graph) -> dict[frozenset[str], tuple[str, str]]:
    """Node-pair edges as {node names}: (look, label)."""
    names = {v.id: v.lines[0] for v in g.vertices}
    return {
        frozenset((names[e.a], names[e.b])): (e.look, e.label)
        for e in g.edges
        if e.look in ("tunnel", "bare")
    }


@pytest.mark.parametrize("name", TOPOLOGIES)
def test_flannel_vxlan_tunnel_between_every_node_pair(name: str) -> None:
    t = topo(name)
    g = _build(t, plan("flannel-vxlan", name))
    nodes = list(t.nodes)
    pairs = {frozenset((a, b)) for i, a in enumerate(nodes) for b in nodes[i + 1 :]}
    assert _tunnels(g) == dict.fromkeys(pairs, ("tunnel", VXLAN_FLANNEL))
    for fmt, text in ((f, TEXT[f](g)) for f in TEXT):
        for i, a in enumerate(nodes):
            for b in nodes[i + 1 :]:
                assert _edge(fmt, f"node_{a}", f"node_{b}", VXLAN_FLANNEL) in text, (fmt, a, b)


@pytest.mark.parametrize("fmt", TEXT)
def test_no_tunnels_without_the_overlay_or_the_node(fmt: str) -> None:
    t = topo("default")
    text = TEXT[fmt](_build(t, plan("flannel-vxlan", "default"), "none"))
    assert "VXLAN" not in text
    assert not _tunnels(_build(t, plan("flannel-vxlan", "default"), "none"))

    def two_nodes(data: dict[str, Any]) -> None:
        del data["nodes"]["node2"]
        data["pods"] = [p for p in data["pods"] if p["node"] != "node2"]

    t = _modified("default", two_nodes)
    g = _build(t, get_mode("flannel-vxlan").plan(t))
    assert _tunnels(g) == {frozenset(("master", "node1")): ("tunnel", VXLAN_FLANNEL)}
    assert "node_node2" not in TEXT[fmt](g)


def test_directrouting_same_subnet_bare_across_the_router_vxlan() -> None:
    g = _build(topo("cross-subnet"), plan("flannel-vxlan-directrouting", "cross-subnet"))
    assert _tunnels(g) == {
        frozenset(("node1", "node2")): ("bare", "bare (host-gw)"),
        frozenset(("node1", "node3")): ("tunnel", VXLAN_FLANNEL),
        frozenset(("node2", "node3")): ("tunnel", VXLAN_FLANNEL),
    }
    assert _edge("dot", "node_node1", "node_node2", "bare (host-gw)") in graph.to_dot(g)
    # Plain vxlan encapsulates the same-subnet pair too.
    g = _build(topo("cross-subnet"), plan("flannel-vxlan", "cross-subnet"))
    assert {label for _, label in _tunnels(g).values()} == {VXLAN_FLANNEL}


@pytest.mark.parametrize(
    ("mode", "pair", "label"),
    [
        ("flannel-udp", ("node1", "node3"), "UDP 8285"),
        ("flannel-ipip", ("node1", "node3"), "IPIP"),
        ("flannel-host-gw", ("node1", "node2"), "bare (host-gw)"),
        ("canal", ("node1", "node3"), VXLAN_FLANNEL),
        ("calico-vxlan", ("node1", "node3"), "VXLAN VNI 4096 :4789"),
        ("calico-ipip", ("node1", "node2"), "IPIP"),
        ("calico-ipip-crosssubnet", ("node1", "node2"), "bare (host-gw)"),
        ("calico-ipip-crosssubnet", ("node1", "node3"), "IPIP"),
        ("calico-bgp", ("node1", "node3"), "bare (routed)"),
    ],
)
def test_tunnel_label_per_mode(mode: str, pair: tuple[str, str], label: str) -> None:
    g = _build(topo("cross-subnet"), plan(mode, "cross-subnet"))
    assert _tunnels(g)[frozenset(pair)][1] == label


@pytest.mark.parametrize("mode", MODES)
def test_default_overlay(mode: str) -> None:
    want = "bgp" if mode == "calico-bgp" else "tunnels"
    assert graph.default_overlay(plan(mode, "default")) == want


# ---------------------------------------------------------------- BGP overlay


def _sessions(g: graph.Graph) -> dict[tuple[str, str], tuple[str, str]]:
    """BGP edges as (name, name): (look, label)."""
    names = {v.id: v.lines[0] for v in g.vertices}
    return {
        (names[e.a], names[e.b]): (e.look, e.label)
        for e in g.edges
        if e.look in ("bgp", "established", "down")
    }


def _planned_pairs(t: Topology, p: Plan) -> set[frozenset[str]]:
    """Every (speaker, peer) the plan configures, peers found by address."""
    owner = {str(n.ip): name for name, n in t.nodes.items()}
    owner |= {str(ip): r for r, x in t.routers.items() for ip in x.interfaces.values()}
    return {
        frozenset((ns.name, owner[str(n.ip)]))
        for ns in p.namespaces.values()
        if ns.bgp is not None
        for n in ns.bgp.neighbors
    }


@pytest.mark.parametrize("name", TOPOLOGIES)
def test_bgp_overlay_has_every_planned_session_once(name: str) -> None:
    t, p = topo(name), plan("calico-bgp", name)
    g = _build(t, p, "bgp")
    drawn = list(_sessions(g))
    assert len(drawn) == len(set(map(frozenset, drawn)))
    assert set(map(frozenset, drawn)) == _planned_pairs(t, p)
    assert all(look == "bgp" for look, _ in _sessions(g).values())


def test_route_reflector_clients_peer_with_the_reflector_only() -> None:
    g = _build(topo("route-reflector"), plan("calico-bgp", "route-reflector"), "bgp")
    rr = ("bgp", "iBGP (RR client)")
    assert _sessions(g) == {("node1", "node2"): rr, ("node1", "node3"): rr, ("node1", "node4"): rr}
    assert [v.lines[0] for v in g.vertices if v.reflector] == ["node1"]
    dot = graph.to_dot(g)
    (node1,) = [ln for ln in dot.splitlines() if ln.strip().startswith('"node_node1" [')]
    assert "peripheries=2" in node1 and "route reflector" in node1
    assert dot.count("peripheries=2") == 1
    assert "  class node_node1 reflectorBox\n" in graph.to_mermaid(g)

    # Without a reflector: the full mesh, no one marked.
    def no_rr(data: dict[str, Any]) -> None:
        del data["bgp"]["routeReflectors"]

    t = _modified("route-reflector", no_rr)
    g = _build(t, get_mode("calico-bgp").plan(t), "bgp")
    assert len(_sessions(g)) == 6
    assert {label for _, label in _sessions(g).values()} == {"iBGP"}
    assert not any(v.reflector for v in g.vertices)
    assert "peripheries" not in graph.to_dot(g)
    assert not [ln for ln in graph.to_mermaid(g).splitlines() if ln.endswith(" reflectorBox")]


def test_leaf_spine_sessions_are_ebgp_to_the_leaves_and_spine() -> None:
    g = _build(topo("leaf-spine"), plan("calico-bgp", "leaf-spine"), "bgp")
    assert {frozenset(k): v for k, v in _sessions(g).items()} == {
        frozenset(pair): ("bgp", "eBGP")
        for pair in (
            ("node1", "leaf1"),
            ("node2", "leaf1"),
            ("node3", "leaf2"),
            ("node4", "leaf2"),
            ("leaf1", "spine"),
            ("leaf2", "spine"),
        )
    }


def test_no_sessions_in_a_mode_without_bgp() -> None:
    assert not _sessions(_build(topo("default"), plan("flannel-vxlan", "default"), "bgp"))


RR_STATES = {
    "node1": {"10.0.0.12": "Established", "10.0.0.13": "Active", "10.0.0.14": "Established"},
    "node2": {"10.0.0.11": "Established"},
    "node3": {"10.0.0.11": "Connect"},
    "node4": {"10.0.0.11": "Established"},
}


def _style_of(fmt: str, text: str, g: graph.Graph, a: str, b: str) -> str:
    """The attribute text of edge a--b: DOT's attribute list, Mermaid's linkStyle line."""
    if fmt == "dot":
        (line,) = [ln for ln in text.splitlines() if ln.strip().startswith(f'"{a}" -- "{b}" [')]
        return line
    (i,) = [i for i, e in enumerate(g.edges) if (e.a, e.b) == (a, b)]
    (line,) = [ln for ln in text.splitlines() if ln.startswith(f"  linkStyle {i} ")]
    return line


@pytest.mark.parametrize("fmt", TEXT)
def test_live_states_colour_the_sessions(fmt: str) -> None:
    t, p = topo("route-reflector"), plan("calico-bgp", "route-reflector")
    g = _build(t, p, "bgp", states=RR_STATES)
    assert _sessions(g) == {
        ("node1", "node2"): ("established", "iBGP (RR client)"),
        ("node1", "node3"): ("down", "Active"),
        ("node1", "node4"): ("established", "iBGP (RR client)"),
    }
    text = TEXT[fmt](g)
    up = _style_of(fmt, text, g, "node_node1", "node_node2")
    down = _style_of(fmt, text, g, "node_node1", "node_node3")
    assert GREEN in up and "dash" not in up and RED not in up
    assert RED in down and "dash" in down and GREEN not in down
    assert _edge(fmt, "node_node1", "node_node3", "Active") in text
    # Without live states no session is green or red.
    g = _build(t, p, "bgp")
    text = TEXT[fmt](g)
    for peer in ("node2", "node3", "node4"):
        planned = _style_of(fmt, text, g, "node_node1", f"node_{peer}")
        assert GREEN not in planned and RED not in planned
    assert RED not in text and "Active" not in text


def test_session_state_from_both_ends() -> None:
    t, p = topo("route-reflector"), plan("calico-bgp", "route-reflector")
    # Only node2 answered: its view decides its session; the others have no live data.
    g = _build(t, p, "bgp", states={"node2": {"10.0.0.11": "Established"}})
    assert _sessions(g)[("node1", "node2")][0] == "established"
    assert _sessions(g)[("node1", "node3")] == ("bgp", "iBGP (RR client)")
    # One end Established, the other has no such neighbor: not a working session.
    g = _build(t, p, "bgp", states={"node1": {}, "node2": {"10.0.0.11": "Established"}})
    assert _sessions(g)[("node1", "node2")] == ("down", "not configured")
    # Both Established one way, the other end still connecting.
    g = _build(t, p, "bgp", states=RR_STATES)
    assert _sessions(g)[("node1", "node3")] == ("down", "Active")


# ---------------------------------------------------------------- live states from FRR

# `show bgp summary json` as FRR 8.4 prints it on the route reflector node1: two clients up,
# node3 not connected yet.
SUMMARY_NODE1 = """{
"ipv4Unicast":{
  "routerId":"10.0.0.11",
  "as":64512,
  "vrfId":0,
  "vrfName":"default",
  "tableVersion":6,
  "ribCount":7,
  "ribMemory":1288,
  "peerCount":3,
  "peerMemory":2172480,
  "peerGroupCount":0,
  "peerGroupMemory":0,
  "peers":{
    "10.0.0.12":{
      "hostname":"node2",
      "remoteAs":64512,
      "localAs":64512,
      "version":4,
      "msgRcvd":41,
      "msgSent":44,
      "tableVersion":0,
      "outq":0,
      "inq":0,
      "peerUptime":"00:01:57",
      "peerUptimeMsec":117000,
      "peerUptimeEstablishedEpoch":1732390000,
      "pfxRcd":1,
      "pfxSnt":4,
      "state":"Established",
      "peerState":"OK",
      "connectionsEstablished":1,
      "connectionsDropped":0,
      "desc":"Global_10_0_0_12",
      "idType":"ipv4"
    },
    "10.0.0.13":{
      "remoteAs":64512,
      "localAs":64512,
      "version":4,
      "msgRcvd":0,
      "msgSent":0,
      "tableVersion":0,
      "outq":0,
      "inq":0,
      "peerUptime":"never",
      "peerUptimeMsec":0,
      "pfxRcd":0,
      "pfxSnt":0,
      "state":"Active",
      "peerState":"OK",
      "connectionsEstablished":0,
      "connectionsDropped":0,
      "desc":"Global_10_0_0_13",
      "idType":"ipv4"
    },
    "10.0.0.14":{
      "hostname":"node4",
      "remoteAs":64512,
      "localAs":64512,
      "version":4,
      "msgRcvd":40,
      "msgSent":43,
      "tableVersion":0,
      "outq":0,
      "inq":0,
      "peerUptime":"00:01:55",
      "peerUptimeMsec":115000,
      "peerUptimeEstablishedEpoch":1732390002,
      "pfxRcd":1,
      "pfxSnt":4,
      "state":"Established",
      "peerState":"OK",
      "connectionsEstablished":1,
      "connectionsDropped":0,
      "desc":"Global_10_0_0_14",
      "idType":"ipv4"
    }
  },
  "failedPeers":1,
  "displayedPeers":3,
  "totalPeers":3,
  "dynamicPeers":0,
  "bestPath":{
    "multiPathRelax":"false"
  }
}
}
"""


def _client_summary(state_: str) -> str:
    """A client's summary: one peer, the reflector (edited from SUMMARY_NODE1's shape)."""
    doc = json.loads(SUMMARY_NODE1)
    peer = doc["ipv4Unicast"]["peers"]["10.0.0.12"] | {"state": state_}
    doc["ipv4Unicast"]["peers"] = {"10.0.0.11": peer}
    return json.dumps(doc, indent=2)


RR_PIDS = {"node1": 101, "node2": 102, "node3": 103, "node4": 104}


def _fake_vtysh(monkeypatch: pytest.MonkeyPatch, answers: dict[int, str]) -> list[str]:
    asked: list[str] = []

    def vtysh(pid: int, command: str, *, timeout: float = 10.0) -> str:
        asked.append(command)
        if pid not in answers:
            raise frr.FrrError(f"vtysh in node {pid} failed (1): bgpd is not running")
        return answers[pid]

    monkeypatch.setattr(frr, "vtysh", vtysh)
    return asked


def test_live_bgp_states_from_recorded_summaries(monkeypatch: pytest.MonkeyPatch) -> None:
    asked = _fake_vtysh(
        monkeypatch,
        {
            101: SUMMARY_NODE1,
            102: _client_summary("Established"),
            103: _client_summary("Connect"),
        },
    )
    states = live_bgp_states(plan("calico-bgp", "route-reflector"), RR_PIDS)
    assert states == {
        "node1": {"10.0.0.12": "Established", "10.0.0.13": "Active", "10.0.0.14": "Established"},
        "node2": {"10.0.0.11": "Established"},
        "node3": {"10.0.0.11": "Connect"},
        # node4's bgpd is gone: every one of its sessions is shown as not answering.
        "node4": {"10.0.0.11": NO_ANSWER},
    }
    assert set(asked) == {"show bgp summary json"}
    g = _build(topo("route-reflector"), plan("calico-bgp", "route-reflector"), "bgp", states=states)
    assert _sessions(g) == {
        ("node1", "node2"): ("established", "iBGP (RR client)"),
        ("node1", "node3"): ("down", "Active"),
        ("node1", "node4"): ("down", NO_ANSWER),
    }


def test_live_bgp_states_skip_namespaces_without_sessions(monkeypatch: pytest.MonkeyPatch) -> None:
    # calico-vxlan runs no BGP on nodes: nothing is asked.
    asked = _fake_vtysh(monkeypatch, {})
    assert live_bgp_states(plan("calico-vxlan", "default"), {}) == {}
    assert asked == []


# ---------------------------------------------------------------- Graphviz accepts it


@needs_dot
@pytest.mark.parametrize(
    ("name", "mode", "overlay"),
    [(n, "flannel-vxlan", "tunnels") for n in TOPOLOGIES]
    + [(n, "calico-bgp", "bgp") for n in TOPOLOGIES]
    + [("cross-subnet", "flannel-vxlan-directrouting", "tunnels"), ("services", "canal", "none")],
)
def test_dot_renders_svg(name: str, mode: str, overlay: graph.Overlay) -> None:
    states = RR_STATES if name == "route-reflector" else None
    g = _build(topo(name), plan(mode, name), overlay, states=states)
    proc = subprocess.run(
        ["dot", "-Tsvg"], input=graph.to_dot(g), capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "" and "<svg" in proc.stdout
    # Graphviz writes '-' as &#45; in SVG text.
    svg = html.unescape(proc.stdout)
    assert all(p.key in svg and p.ip in svg for p in graph.topology_pods(topo(name)))


# ---------------------------------------------------------------- the verb


def test_cli_mermaid_and_dot_to_stdout_or_file(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(main, ["graph", "-t", "default", "-m", "flannel-vxlan", "-o", "mermaid"])
    assert res.exit_code == 0, res.output
    assert res.output.startswith("%% default: flannel-vxlan on topology default")
    assert "\ngraph LR\n" in res.output and VXLAN_FLANNEL in res.output
    target = tmp_path / "lab.dot"
    res = runner.invoke(main, ["graph", "-o", "dot", "-f", str(target)])
    assert res.exit_code == 0, res.output
    assert "wrote" in res.output and target.read_text().startswith("graph lab {")


@needs_dot
def test_cli_svg_default_file_in_cwd(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    res = runner.invoke(main, ["graph", "-t", "cross-subnet", "-m", "calico-bgp"])
    assert res.exit_code == 0, res.output
    svg = (tmp_path / "cross-subnet.svg").read_text()
    assert "<svg" in svg and "eBGP" in svg
    res = runner.invoke(main, ["graph", "-o", "png"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "default.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["-m", "flannel-nope", "-o", "dot"], 2, "unknown mode 'flannel-nope'"),
        (["-t", "no-such", "-o", "dot"], 2, "no-such: no such topology file"),
        (["-n", "demo", "-t", "default", "-o", "dot"], 2, "drop -t/-m"),
        (["-n", "Bad_Name", "-o", "dot"], 2, "--name 'Bad_Name'"),
        (["-o", "dot", "-f", "/nonexistent-dir/x.dot"], 2, "cannot write it"),
    ],
)
def test_cli_one_line_errors(args: list[str], code: int, message: str) -> None:
    res = CliRunner().invoke(main, ["graph", *args])
    assert res.exit_code == code, res.output
    assert message in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1


@pytest.mark.parametrize("fmt", ["svg", "png"])
def test_cli_image_without_dot_exits_3(monkeypatch: pytest.MonkeyPatch, fmt: str) -> None:
    real = shutil.which
    monkeypatch.setattr(shutil, "which", lambda cmd: None if cmd == "dot" else real(cmd))
    res = CliRunner().invoke(main, ["graph", "-o", fmt])
    assert res.exit_code == 3, res.output
    assert "apt-get install graphviz" in res.output
    # Text forms need no Graphviz.
    assert CliRunner().invoke(main, ["graph", "-o", "mermaid"]).exit_code == 0


def _record_lab(lab: str, mode: str, name: str, status: str = "ready") -> store.Store:
    """What `up` leaves in the state directory, without building anything."""
    t, m = topo(name), get_mode(mode)
    p = m.plan(t)
    st = state.LabState(
        lab=lab,
        mode=mode,
        topology=str(TOPOLOGY_DIR / f"{name}.yaml"),
        topology_name=name,
        status=status,
        namespaces={
            n: state.NsRecord(pid=RR_PIDS.get(n, 200), role=ns.role)
            for n, ns in p.namespaces.items()
        },
    )
    st.save()
    state.write_plan(lab, p)
    objects = store.from_topology(t, m.network)
    store.save(lab, objects)
    return objects


def test_cli_lab_uses_the_store_pods(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(state, "STATE_ROOT", tmp_path)
    objects = _record_lab("demo", "flannel-vxlan", "default")
    # After up: test/db-2 deleted, test/late applied.
    del objects.pods["test/db-2"]
    late = objects.pods["test/db-3"].model_copy(update={"name": "late", "ip": "10.244.2.9"})
    objects.pods[late.key] = late
    store.save("demo", objects)
    res = CliRunner().invoke(main, ["graph", "-n", "demo", "-o", "mermaid"])
    assert res.exit_code == 0, res.output
    assert res.output.startswith("%% demo: flannel-vxlan on topology default, overlay tunnels")
    assert '"test/late<br/>10.244.2.9"' in res.output
    assert "test/db-2" not in res.output and "10.244.1.3" not in res.output
    res = CliRunner().invoke(main, ["graph", "-n", "gone", "-o", "mermaid"])
    assert res.exit_code == 2 and "no lab named 'gone' is up" in res.output


def test_cli_lab_bgp_live_and_planned(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(state, "STATE_ROOT", tmp_path)
    monkeypatch.setattr("labctl.cli.graph.os.geteuid", lambda: 0)
    _record_lab("rr", "calico-bgp", "route-reflector")
    asked = _fake_vtysh(
        monkeypatch,
        {
            101: SUMMARY_NODE1,
            102: _client_summary("Established"),
            104: _client_summary("Established"),
        },
    )
    res = CliRunner().invoke(main, ["graph", "-n", "rr", "-o", "dot"])
    assert res.exit_code == 0, res.output
    assert len(asked) == 4
    assert '"node_node1" -- "node_node3" [label="Active"' in res.output
    assert f'"node_node1" -- "node_node2" [label="iBGP (RR client)", color="{GREEN}"' in res.output
    # A lab still starting: the sessions as planned, and FRR is not asked.
    _record_lab("rr2", "calico-bgp", "route-reflector", status="starting")
    asked.clear()
    res = CliRunner().invoke(main, ["graph", "-n", "rr2", "-o", "dot"])
    assert res.exit_code == 0 and asked == []
    assert "sessions as planned" in res.output and RED not in res.output
