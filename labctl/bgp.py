"""BGP speaker configuration as data: Calico's design (mesh, route reflectors, AS per rack)
and lab routers, rendered into FRR's integrated ``frr.conf``. Pure: no processes; running
FRR is ``labctl.frr``'s business.

Calico runs BIRD; the lab runs FRR 8.4 instead and mirrors BIRD's design where FRR can
(reference section 14): router id = node IP, iBGP full mesh in AS 64512, the peer with the
higher address (string order) opens each mesh session, route reflectors with a cluster id,
each node originates its blocks as a blackhole plus an announcement, ECMP.

Deliberate differences from calico-node:

* No graceful restart (BIRD has it on): a stopped speaker's routes must go at once, not
  linger for the 120 s restart time.
* Timers 3/9 s (FRR "datacenter" profile) instead of 60/180 s, and connect retry 2 s, so a
  lab converges and withdraws within seconds.
* The blackhole for a node's block is a static route (``proto static`` in the kernel)
  instead of BIRD's ``proto bird``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from ipaddress import IPv4Address, IPv4Network
from typing import Literal, NamedTuple

import jinja2
from pydantic import BaseModel, ConfigDict, Field, model_validator

from labctl.render import TEMPLATE_DIR

#: Calico's default global AS number.
DEFAULT_ASN = 64512

# Start order: staticd and bgpd are zebra's clients.
DAEMON_ORDER = ("zebra", "staticd", "bgpd")


class BgpTimers(BaseModel):
    """Session timers in seconds.

    3/9 is FRR's datacenter profile: a dead peer is noticed within 9 s instead of BGP's
    default 180 s. ``connect_retry`` is how long the active side waits before redialling a
    peer whose bgpd was not up yet (Calico: 5 s); 2 s keeps lab start-up short.
    """

    model_config = ConfigDict(frozen=True)

    keepalive: int = Field(default=3, ge=1, le=65535)
    hold: int = Field(default=9, ge=3, le=65535)
    connect_retry: int = Field(default=2, ge=1, le=65535)

    @model_validator(mode="after")
    def _hold_covers_keepalives(self) -> BgpTimers:
        if self.hold < self.keepalive:
            raise ValueError("hold time must not be shorter than the keepalive interval")
        return self


class BgpNeighbor(BaseModel):
    """One BGP session as seen from the speaker that configures it."""

    model_config = ConfigDict(frozen=True)

    ip: IPv4Address
    remote_asn: int = Field(ge=1, le=4294967295)
    #: This speaker is a route reflector and the neighbor is one of its clients.
    rr_client: bool = False
    #: Wait for the neighbor to connect (Calico: the side with the lower address waits).
    passive: bool = False
    description: str = ""
    #: Replace the neighbor's AS in paths sent to it. Routers set this towards Calico nodes:
    #: all nodes share one AS, so without it a node would drop, as an AS loop, every block
    #: that another node's announcement brought back through the router.
    as_override: bool = False


class StaticRoute(NamedTuple):
    """A static route: ``prefix`` via a next-hop address, or ``"blackhole"``."""

    prefix: IPv4Network
    via: IPv4Address | Literal["blackhole"]


class BgpSpeaker(BaseModel):
    """Routing configuration of one node or router. ``asn=None``: static routes only."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    router_id: IPv4Address
    asn: int | None = Field(default=None, ge=1, le=4294967295)
    neighbors: list[BgpNeighbor] = []
    #: Prefixes to originate (a node's IPAM blocks): blackhole route + ``network``.
    networks: list[IPv4Network] = []
    #: Announce directly connected segments (routers).
    redistribute_connected: bool = False
    #: Set on route reflectors (IPv4-formatted, as Calico's routeReflectorClusterID).
    rr_cluster_id: IPv4Address | None = None
    #: False: learn and re-advertise routes, but install none in zebra or the kernel
    #: (FRR ``bgp no-rib``), for modes where the lab programs tunnel routes like Felix.
    install_routes: bool = True
    static_routes: list[StaticRoute] = []
    timers: BgpTimers = BgpTimers()
    #: Source address of every session; on a node its IP, so announced next hops are the
    #: node IP. Routers leave it unset: the kernel picks the address on the peer's segment.
    update_source: IPv4Address | None = None
    maximum_paths: int = Field(default=64, ge=1, le=64)
    #: How long an update group collects changes before its first UPDATE (FRR: 1000 ms).
    coalesce_ms: int = Field(default=100, ge=0)
    #: FRR defaults profile, passed to the daemons as -F and written into the config.
    profile: Literal["datacenter", "traditional"] = "datacenter"

    @model_validator(mode="after")
    def _consistent(self) -> BgpSpeaker:
        if self.asn is None and (
            self.neighbors or self.rr_cluster_id or self.redistribute_connected
        ):
            raise ValueError(f"{self.name}: BGP settings given but no asn")
        ips = [n.ip for n in self.neighbors]
        if len(set(ips)) != len(ips):
            raise ValueError(f"{self.name}: duplicate neighbor")
        for n in self.neighbors:
            if n.rr_client and n.remote_asn != self.asn:
                raise ValueError(f"{self.name}: route-reflector client {n.ip} is not iBGP")
        return self

    def daemons(self) -> list[str]:
        """FRR daemons this speaker needs, in start order."""
        wanted = {"zebra"}
        if self.networks or self.static_routes:
            wanted.add("staticd")
        if self.asn is not None:
            wanted.add("bgpd")
        return [d for d in DAEMON_ORDER if d in wanted]


class CalicoNode(NamedTuple):
    """A Calico node as the BGP planner needs it."""

    name: str
    ip: IPv4Address | str
    blocks: Sequence[IPv4Network | str] = ()
    #: Set to make the node a route reflector (Node.spec.bgp.routeReflectorClusterID).
    rr_cluster_id: str | None = None


def mesh_name(ip: IPv4Address | str) -> str:
    """Calico's session name for a mesh peer: ``Mesh_10_0_0_2``."""
    return "Mesh_" + str(ip).replace(".", "_")


def global_name(ip: IPv4Address | str) -> str:
    """Calico's session name for a global BGPPeer (how reflectors are usually peered)."""
    return "Global_" + str(ip).replace(".", "_")


def calico_passive(own_ip: IPv4Address | str, peer_ip: IPv4Address | str) -> bool:
    """Calico's rule against connection races: wait when the peer's IP sorts higher.

    A plain string comparison, as in confd's template, so 10.0.0.9 > 10.0.0.10.
    """
    return str(peer_ip) > str(own_ip)


def calico_speakers(
    nodes: Sequence[CalicoNode],
    asn: int = DEFAULT_ASN,
    *,
    mesh: bool | None = None,
    external_peers: Mapping[str, Sequence[BgpNeighbor]] | None = None,
    install_routes: bool = True,
) -> dict[str, BgpSpeaker]:
    """Speakers for Calico nodes, keyed by node name.

    ``mesh`` defaults to on when no node is a route reflector (``nodeToNodeMeshEnabled``).
    Route reflectors leave the mesh; every other node peers with every reflector, and a
    reflector makes each iBGP peer whose cluster id is empty or different its client.
    ``external_peers`` adds sessions per node, e.g. eBGP to the routers on its segment.
    """
    if mesh is None:
        mesh = not any(n.rr_cluster_id for n in nodes)
    external = external_peers or {}
    ips = {n.name: str(n.ip) for n in nodes}
    by_name = {n.name: n for n in nodes}

    @cache
    def session(me_rr: str | None, name: str, passive: bool) -> BgpNeighbor:
        # One instance per distinct session shape, shared by every speaker that has it: a
        # full mesh is n(n-1) sessions but only 2n shapes, so planning stays linear in memory.
        peer_rr = by_name[name].rr_cluster_id
        both_clients = not me_rr and not peer_rr
        return BgpNeighbor(
            ip=IPv4Address(ips[name]),
            remote_asn=asn,
            rr_client=bool(me_rr) and peer_rr != me_rr,
            passive=passive,
            # Calico's BIRD protocol names: mesh sessions, else global BGPPeers.
            description=mesh_name(ips[name]) if both_clients else global_name(ips[name]),
        )

    speakers: dict[str, BgpSpeaker] = {}
    for me in nodes:
        own = ips[me.name]
        neighbors = [
            session(me.rr_cluster_id, peer.name, calico_passive(own, ips[peer.name]))
            for peer in nodes
            if peer.name != me.name and (mesh or me.rr_cluster_id or peer.rr_cluster_id)
        ]
        neighbors.extend(external.get(me.name, ()))
        speakers[me.name] = BgpSpeaker(
            name=me.name,
            router_id=IPv4Address(own),
            asn=asn,
            neighbors=neighbors,
            networks=[IPv4Network(str(b)) for b in me.blocks],
            rr_cluster_id=IPv4Address(me.rr_cluster_id) if me.rr_cluster_id else None,
            install_routes=install_routes,
            update_source=IPv4Address(own),
        )
    return speakers


def router_speaker(
    name: str,
    router_id: IPv4Address | str,
    asn: int,
    node_peers: Iterable[IPv4Address | str],
    node_asn: int = DEFAULT_ASN,
) -> BgpSpeaker:
    """A lab router with its own AS: eBGP to the nodes on its segments, announcing them.

    The nodes' side of each session is ``BgpNeighbor(ip=<router address on the node's
    segment>, remote_asn=asn)``, passed to ``calico_speakers`` as an external peer.
    """
    return BgpSpeaker(
        name=name,
        router_id=IPv4Address(str(router_id)),
        asn=asn,
        neighbors=[
            BgpNeighbor(
                ip=IPv4Address(str(ip)),
                remote_asn=node_asn,
                as_override=True,
                description="node_" + str(ip).replace(".", "_"),
            )
            for ip in node_peers
        ],
        redistribute_connected=True,
    )


_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    autoescape=False,  # FRR config, not HTML
)


def render(speaker: BgpSpeaker) -> str:
    """The integrated ``frr.conf`` for ``speaker``."""
    return _env.get_template("frr.conf.j2").render(s=speaker)
