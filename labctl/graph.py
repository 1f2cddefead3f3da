"""Pictures of a lab for `labctl graph`: topology, plan and pods in, a graph description
(vertices and edges) out, then Graphviz DOT or Mermaid text.

Pure: no processes, no files. Reading live BGP session states and running `dot` are the
verb's business (`labctl.cli.graph`); the states come in here as a plain dict.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from labctl.modes import get_mode
from labctl.plan import Plan
from labctl.render import render
from labctl.topology import Topology
from labctl.wire import PodLike

Overlay = Literal["tunnels", "bgp", "none"]
OVERLAYS: tuple[Overlay, ...] = ("tunnels", "bgp", "none")

Kind = Literal["segment", "router", "node", "pod", "external"]
# How an edge is drawn: attach (a port on a segment), pod (a pod in its node), tunnel
# (encapsulated node pair), bare (unencapsulated node pair), bgp (a session as planned),
# established / down (a session with its live state).
Look = Literal["attach", "pod", "tunnel", "bare", "bgp", "established", "down"]

ESTABLISHED = "Established"


@dataclass(frozen=True)
class Vertex:
    """One box of the picture: its id (letters, digits, '_'), kind and label lines."""

    id: str
    kind: Kind
    lines: tuple[str, ...]
    #: Vertex id of the node a pod runs on: pods are drawn inside their node's frame.
    group: str | None = None
    #: A BGP route reflector (drawn with a heavier border).
    reflector: bool = False


@dataclass(frozen=True)
class Edge:
    """One undirected line between two vertices."""

    a: str
    b: str
    look: Look
    label: str = ""


@dataclass
class Graph:
    """A lab as vertices and edges, ready for `to_dot` or `to_mermaid`."""

    title: str
    vertices: list[Vertex] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)


@dataclass
class PodView:
    """A pod as the picture needs it (store.PodRecord has the same fields)."""

    key: str
    node: str
    ip: str


@dataclass(frozen=True)
class Session:
    """One BGP session between two speakers (node or router names), with each end's view:
    (speaker, the neighbor address it configures for the other end)."""

    a: str
    b: str
    label: str
    ends: tuple[tuple[str, str], ...]


def topology_pods(topo: Topology) -> list[PodView]:
    """The topology's pods with the addresses IPAM gives them (for a lab not up yet)."""
    return [PodView(p.key, p.node, str(topo.pod_ips[p.key])) for p in topo.pods]


def default_overlay(plan: Plan) -> Overlay:
    """`bgp` where BGP routes bare pod traffic (calico-bgp), else `tunnels`."""
    bare_only = all(w.encap == "bare" for w in plan.wire)
    speakers = any(ns.bgp is not None and ns.bgp.neighbors for ns in plan.node_ns())
    return "bgp" if bare_only and speakers else "tunnels"


def tunnel_label(path: Mapping[str, Any]) -> str:
    """How one node pair's pod packets cross the wire, for people ("VXLAN VNI 1 :8472")."""
    encap = path["encap"]
    if encap == "vxlan":
        return f"VXLAN VNI {path['vni']} :{path['port']}"
    if encap == "udp":
        return f"UDP {path['port']}"
    if encap == "ipip":
        return "IPIP"
    # A bare pair with a next-hop MAC is routed straight to the peer node (host-gw style);
    # without one it crosses the routers between the segments.
    return "bare (host-gw)" if path.get("next_hop_mac") else "bare (routed)"


def bgp_sessions(topo: Topology, plan: Plan) -> list[Session]:
    """Every session the plan's speakers configure, once per pair, in plan order; a route
    reflector's sessions to its clients name the reflector first."""
    owner = {str(n.ip): name for name, n in topo.nodes.items()}
    for rname, router in topo.routers.items():
        owner |= {str(ip): rname for ip in router.interfaces.values()}
    found: dict[frozenset[str], dict[str, Any]] = {}
    for ns in plan.namespaces.values():
        if ns.bgp is None:
            continue
        for n in ns.bgp.neighbors:
            peer = owner[str(n.ip)]
            ibgp = n.remote_asn == ns.bgp.asn
            s = found.setdefault(
                frozenset((ns.name, peer)),
                {"a": ns.name, "b": peer, "rr": False, "ibgp": ibgp, "ends": []},
            )
            s["ends"].append((ns.name, str(n.ip)))
            if n.rr_client:
                s["rr"], s["a"], s["b"] = True, ns.name, peer
    out = []
    for s in found.values():
        kind = "iBGP" if s["ibgp"] else "eBGP"
        label = f"{kind} (RR client)" if s["rr"] else kind
        out.append(Session(s["a"], s["b"], label, tuple(s["ends"])))
    return out


def session_state(session: Session, states: Mapping[str, Mapping[str, str]]) -> str | None:
    """The live state of a session: Established when every end that reported says so, else
    the first other state; None when neither end reported (no live data)."""
    seen = [states[sp].get(ip, "not configured") for sp, ip in session.ends if sp in states]
    if not seen:
        return None
    return next((s for s in seen if s != ESTABLISHED), ESTABLISHED)


class _Ids:
    """Vertex ids safe in DOT and Mermaid: kind prefix + name with other characters as '_',
    numbered when two names fold to the same id ("a/b-c" and "a-b/c")."""

    def __init__(self) -> None:
        self._taken: dict[tuple[str, str], str] = {}

    def __call__(self, prefix: str, name: str) -> str:
        if (prefix, name) in self._taken:
            return self._taken[(prefix, name)]
        base = f"{prefix}_{re.sub(r'[^A-Za-z0-9]', '_', name)}"
        vid, n = base, 1
        while vid in self._taken.values():
            n += 1
            vid = f"{base}_{n}"
        self._taken[(prefix, name)] = vid
        return vid


def build(
    topo: Topology,
    plan: Plan,
    pods: Sequence[PodLike],
    overlay: Overlay,
    states: Mapping[str, Mapping[str, str]] | None = None,
    name: str | None = None,
) -> Graph:
    """The picture of `topo` in `plan`'s mode with `pods` (the lab's live pods, or the
    topology's), plus the overlay; `states` (speaker -> neighbor address -> FRR state) colours
    the BGP sessions."""
    ids = _Ids()
    mode = get_mode(plan.mode)
    speakers = {ns.name: ns.bgp for ns in plan.namespaces.values() if ns.bgp is not None}
    g = Graph(f"{name or topo.name}: {plan.mode} on topology {topo.name}, overlay {overlay}")

    for sname, seg in topo.segments.items():
        lines = (sname, str(seg.cidr), *([f"MTU {seg.mtu}"] if seg.mtu != 1500 else []))
        g.vertices.append(Vertex(ids("seg", sname), "segment", lines))
    for rname, router in topo.routers.items():
        lines = (
            rname,
            *([f"AS {router.asn}"] if router.asn is not None else []),
            *(f"{s} {ip}" for s, ip in router.interfaces.items()),
        )
        g.vertices.append(Vertex(ids("rtr", rname), "router", lines))
        g.edges += [Edge(ids("rtr", rname), ids("seg", s), "attach") for s in router.interfaces]
    for nname, node in topo.nodes.items():
        cidr, pool = topo.node_pod_cidrs[nname], mode.pod_pool(topo, nname)
        speaker = speakers.get(nname)
        reflector = speaker is not None and speaker.rr_cluster_id is not None
        lines = (
            nname,
            str(node.ip),
            f"pods {cidr}",
            *([f"block {pool}"] if pool != cidr else []),
            *([f"AS {speaker.asn}"] if speaker is not None and speaker.asn is not None else []),
            *(["route reflector"] if reflector else []),
        )
        nid = ids("node", nname)
        g.vertices.append(Vertex(nid, "node", lines, reflector=reflector))
        g.edges.append(Edge(nid, ids("seg", node.segment), "attach"))
        for pod in (p for p in pods if p.node == nname):
            pid = ids("pod", pod.key)
            g.vertices.append(Vertex(pid, "pod", (pod.key, pod.ip), group=nid))
            g.edges.append(Edge(pid, nid, "pod"))
    for ename, ext in topo.externals.items():
        lines = (ename, str(ext.ip), "external")
        g.vertices.append(Vertex(ids("ext", ename), "external", lines))
        g.edges.append(Edge(ids("ext", ename), ids("seg", ext.segment), "attach"))

    if overlay == "tunnels":
        g.edges += _tunnel_edges(topo, plan, ids)
    elif overlay == "bgp":
        vid = {r: ids("rtr", r) for r in topo.routers} | {n: ids("node", n) for n in topo.nodes}
        for s in bgp_sessions(topo, plan):
            live = session_state(s, states or {})
            if live is None:
                g.edges.append(Edge(vid[s.a], vid[s.b], "bgp", s.label))
            elif live == ESTABLISHED:
                g.edges.append(Edge(vid[s.a], vid[s.b], "established", s.label))
            else:
                g.edges.append(Edge(vid[s.a], vid[s.b], "down", live))
    return g


def _tunnel_edges(topo: Topology, plan: Plan, ids: _Ids) -> list[Edge]:
    """One edge per unordered node pair, labelled with how its pods' packets cross."""
    nodes = list(topo.nodes)
    out = []
    for i, a in enumerate(nodes):
        for b in nodes[i + 1 :]:
            # Whether a pair shares a segment decides how it is carried, so both ways match.
            there = plan.path(a, b)
            label = tunnel_label(there)
            bare = there["encap"] == "bare"
            out.append(Edge(ids("node", a), ids("node", b), "bare" if bare else "tunnel", label))
    return out


# ---------------------------------------------------------------- text forms

# Colour, line style, width per look; hex colours read the same in DOT and in Mermaid's CSS.
_EDGE: dict[Look, tuple[str, str, float]] = {
    "attach": ("#555555", "solid", 1.0),
    "pod": ("#9e9e9e", "dotted", 1.0),
    "tunnel": ("#1565c0", "dashed", 2.0),
    "bare": ("#00838f", "dashed", 1.5),
    "bgp": ("#6a1b9a", "solid", 1.5),
    "established": ("#2e7d32", "solid", 2.5),
    "down": ("#c62828", "dashed", 2.5),
}
# Fill and border per vertex kind.
_FILL: dict[Kind, tuple[str, str]] = {
    "segment": ("#e3f2fd", "#1565c0"),
    "router": ("#fff3e0", "#e65100"),
    "node": ("#e8f5e9", "#2e7d32"),
    "pod": ("#ffffff", "#616161"),
    "external": ("#f3e5f5", "#6a1b9a"),
}
_DOT_SHAPE: dict[Kind, tuple[str, str]] = {
    "segment": ("ellipse", "filled"),
    "router": ("hexagon", "filled"),
    "node": ("box", "rounded,filled"),
    "pod": ("box", "rounded,filled"),
    "external": ("parallelogram", "filled"),
}
_DASH = {"solid": None, "dashed": "6 4", "dotted": "2 3"}


def _dq(text: str) -> str:
    """A DOT double-quoted string."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _attrs(**attrs: str | float) -> str:
    return ", ".join(
        f"{k}={_dq(v) if isinstance(v, str) else v}" for k, v in attrs.items() if v != ""
    )


def _dot_vertex(v: Vertex) -> dict[str, str]:
    fill, border = _FILL[v.kind]
    shape, style = _DOT_SHAPE[v.kind]
    # DOT's "\n" escape centres each line; the lines themselves are quoted by _dq.
    label = "\\n".join(line.replace("\\", "\\\\").replace('"', '\\"') for line in v.lines)
    attrs = _attrs(shape=shape, style=style, fillcolor=fill, color=border)
    if v.reflector:
        attrs += ", peripheries=2, penwidth=2"
    if v.kind == "pod":
        attrs += ", fontsize=9"
    return {"id": _dq(v.id), "attrs": f'label="{label}", {attrs}'}


def _dot_edge(e: Edge) -> dict[str, str]:
    color, style, width = _EDGE[e.look]
    attrs = _attrs(label=e.label, color=color, fontcolor=color, style=style, penwidth=width)
    if e.look not in ("attach", "pod"):
        # Overlay edges must not pull the underlay layout apart.
        attrs += ", constraint=false"
    return {"a": _dq(e.a), "b": _dq(e.b), "attrs": attrs}


def to_dot(graph: Graph) -> str:
    """Graphviz DOT text (undirected; pods framed with their node) for `dot -Tsvg`."""
    loose = [_dot_vertex(v) for v in graph.vertices if v.kind != "pod" and not _framed(graph, v)]
    frames = [
        {
            "id": _dq(f"cluster_{v.id}"),
            "members": [_dot_vertex(v)]
            + [_dot_vertex(p) for p in graph.vertices if p.group == v.id],
        }
        for v in graph.vertices
        if _framed(graph, v)
    ]
    return render(
        "graph.dot.j2",
        title=_dq(graph.title),
        loose=loose,
        frames=frames,
        edges=[_dot_edge(e) for e in graph.edges],
    )


def _framed(graph: Graph, v: Vertex) -> bool:
    """A node with pods is drawn as a frame holding the node and its pods."""
    return v.kind == "node" and any(p.group == v.id for p in graph.vertices)


def _mq(lines: Sequence[str]) -> str:
    """A Mermaid quoted label ('"' has to be an entity there)."""
    return '"' + "<br/>".join(line.replace('"', "#quot;") for line in lines) + '"'


_MERMAID_SHAPE: dict[Kind, tuple[str, str]] = {
    "segment": ("([", "])"),
    "router": ("{{", "}}"),
    "node": ("[", "]"),
    "pod": ("(", ")"),
    "external": ("[/", "/]"),
}


def _mermaid_vertex(v: Vertex) -> str:
    left, right = _MERMAID_SHAPE[v.kind]
    return f"{v.id}{left}{_mq(v.lines)}{right}"


def to_mermaid(graph: Graph) -> str:
    """Mermaid flowchart text (`graph LR`) with the same vertices and edges as `to_dot`."""
    out = [f"%% {graph.title}", "graph LR"]
    for v in graph.vertices:
        if v.kind == "pod":
            continue
        if _framed(graph, v):
            out.append(f'  subgraph frame_{v.id}[" "]')
            out.append(f"    {_mermaid_vertex(v)}")
            out += [f"    {_mermaid_vertex(p)}" for p in graph.vertices if p.group == v.id]
            out.append("  end")
        else:
            out.append(f"  {_mermaid_vertex(v)}")
    for e in graph.edges:
        out.append(f"  {e.a} ---|{_mq([e.label])}| {e.b}" if e.label else f"  {e.a} --- {e.b}")
    # Class names end in "Box": Mermaid's own CSS already uses "node" and "cluster".
    for kind, (fill, border) in _FILL.items():
        out.append(f"  classDef {kind}Box fill:{fill},stroke:{border}")
    out.append("  classDef reflectorBox stroke-width:4px")
    for kind in _FILL:
        members = [v.id for v in graph.vertices if v.kind == kind]
        if members:
            out.append(f"  class {','.join(members)} {kind}Box")
    reflectors = [v.id for v in graph.vertices if v.reflector]
    if reflectors:
        out.append(f"  class {','.join(reflectors)} reflectorBox")
    for i, e in enumerate(graph.edges):
        color, style, width = _EDGE[e.look]
        dash = _DASH[style]
        out.append(
            f"  linkStyle {i} stroke:{color},stroke-width:{width}px"
            + (f",stroke-dasharray:{dash}" if dash else "")
        )
    return "\n".join(out) + "\n"
