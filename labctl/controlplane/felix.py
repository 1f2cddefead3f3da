"""The node agent of Calico modes: `python -m labctl.controlplane.felix CONFIG`, one per
node, run by the supervisor inside the node's network namespace.

First what calico-node's start-up does against an etcd datastore: create the default IP pool
unless one exists (from CALICO_IPV4POOL_*), write this node's Node resource (its address as
autodetected, its tunnel address and VTEP MAC), and claim its IPAM block (affinity pending,
the block created with affinity ``host:<node>`` and the tunnel address allocated in it,
affinity confirmed). Then what Felix does with the result: watch ``/calico/`` and, for every
other node, program its VTEP (VXLAN: neighbour + FDB, from its Node record) and a route to
each block affine to it (from the block record, via the Node's address), with the mode's
own per-peer planner code (modes/calico.py). Which code follows from the pool's ipipMode /
vxlanMode, as in Felix. Calico has no TTL on any of this: a node that stops keeps its
records, and the others keep its routes, until its records are deleted.

Every 10 s it re-programs everything (Felix's periodic route refresh). Its progress goes to a
status file the supervisor reads (controlplane/agent.py's format).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import rt_type

from labctl import engine, state
from labctl.controlplane import calicostore as cs
from labctl.controlplane.agent import NodeAgent
from labctl.controlplane.etcd import KeyValue
from labctl.modes.calico import (
    ENCAPS,
    FELIX_PROTO,
    IPIP_DEV,
    VXLAN_DEV,
    CalicoPeer,
    Encap,
    route_objects,
    vtep_objects,
)
from labctl.plan import NamespacePlan

RESYNC = 10.0  # Felix's RouteRefreshInterval is 90 s; lab-sized like flannel's routeCheck


def argv(config_path: str) -> list[str]:
    """How the supervisor starts an agent."""
    return [sys.executable, "-m", "labctl.controlplane.felix", config_path]


@dataclass
class Config:
    lab: str
    node: str
    mode: str
    address: IPv4Interface
    block: IPv4Network
    pool: IPv4Network
    tunnel: str  # "ipip", "vxlan" or ""
    vtep_mac: str
    rr_cluster_id: str

    @classmethod
    def load(cls, path: str, lab: str) -> Config:
        raw = json.loads(Path(path).read_text())
        return cls(
            lab=lab,
            node=raw["node"],
            mode=raw["mode"],
            address=IPv4Interface(raw["ipv4_address"]),
            block=IPv4Network(raw["block"]),
            pool=IPv4Network(raw["pool"]),
            tunnel=raw["tunnel"],
            vtep_mac=raw["vtep_mac"],
            rr_cluster_id=raw["rr_cluster_id"],
        )

    def node_record(self) -> cs.NodeRecord:
        """The Node resource calico-node writes for this node."""
        tunnel_ip = self.block.network_address + 1
        return cs.NodeRecord(
            name=self.node,
            address=self.address,
            ipip_tunnel_addr=tunnel_ip if self.tunnel == "ipip" else None,
            vxlan_tunnel_addr=tunnel_ip if self.tunnel == "vxlan" else None,
            vxlan_mac=self.vtep_mac,
            rr_cluster_id=self.rr_cluster_id,
        )


def _meta() -> dict[str, Any]:
    """ObjectMeta of a resource created now (the etcd backend keeps uid and timestamp)."""
    return {"uid": str(uuid.uuid4()), "creationTimestamp": _now()}


class Datastore:
    """What Felix has learnt from etcd: Node records and blocks, by name and CIDR."""

    def __init__(self) -> None:
        self.nodes: dict[str, cs.NodeRecord] = {}
        self.blocks: dict[IPv4Network, str | None] = {}  # CIDR -> affine host

    def apply(self, key: str, value: str | None) -> str | None:
        """Take one key's new value (None: deleted); returns a complaint for a record Felix
        would reject (the record is then treated as absent), else None."""
        try:
            if key.startswith(cs.NODES):
                name = key[len(cs.NODES) :]
                self.nodes.pop(name, None)
                if value is not None:
                    self.nodes[name] = cs.NodeRecord.from_json(value)
            elif key.startswith(cs.BLOCKS):
                cidr = cs.parse_block_key(key)
                self.blocks.pop(cidr, None)
                if value is not None:
                    self.blocks[cidr] = cs.BlockRecord.from_json(value).host
        except cs.RecordError as e:
            return f"ignoring {key}: {e}"
        return None


def desired(encap: Encap, me: str, subnet: IPv4Network, ds: Datastore) -> dict[str, NamespacePlan]:
    """Remote node -> what Felix on `me` programs for it: its VTEP (if its Node record has
    one) and a route per block affine to it. A block whose host has no Node record gets no
    route (Felix's route resolver needs the node's address)."""
    out: dict[str, NamespacePlan] = {}
    for name, rec in sorted(ds.nodes.items()):
        if name == me:
            continue
        ip = rec.address.ip
        tunnel = rec.vxlan_tunnel_addr or rec.ipip_tunnel_addr or IPv4Address(0)
        # CrossSubnet: Felix compares the peer's address with its own ipv4Address subnet.
        base = CalicoPeer(name, ip, IPv4Network(ip), tunnel, rec.vxlan_mac, ip in subnet)
        part = NamespacePlan(name=me, role="node")
        if rec.vxlan_tunnel_addr is not None and rec.vxlan_mac:
            part = vtep_objects(encap, me, base)
        for cidr, host in sorted(ds.blocks.items()):
            if host == name:
                routes = route_objects(encap, me, replace(base, block=cidr))
                part.routes += routes.routes
        out[name] = part
    return out


def _minus(a: NamespacePlan, b: NamespacePlan) -> NamespacePlan:
    """The objects of `a` that `b` does not have."""
    return NamespacePlan(
        name=a.name,
        role=a.role,
        neighbours=[n for n in a.neighbours if n not in b.neighbours],
        fdb=[f for f in a.fdb if f not in b.fdb],
        routes=[r for r in a.routes if r not in b.routes],
    )


class Felix(NodeAgent):
    """One node's calico-node: start-up, then Felix's route and VTEP programming."""

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg.lab, cfg.node, cs.PREFIX)
        self.cfg = cfg
        self.ds = Datastore()
        self.programmed: dict[str, NamespacePlan] = {}
        self.started = False

    # ---- calico-node start-up ----

    def ensure_pool(self) -> None:
        """Create the default pool unless there is one; then take the encapsulation from
        the pool in the datastore (it wins over this node's own settings, as in Calico)."""
        key = cs.pool_key()
        mine = cs.pool_for_mode(self.cfg.mode, self.cfg.pool).to_json(_meta())
        if self._retry("create IP pool", lambda: self.etcd.create(key, mine)):
            self.log(f"created IP pool {cs.DEFAULT_POOL} {self.cfg.pool}")
        kv = self._retry("get IP pool", lambda: self.etcd.get(key))
        pool = cs.PoolRecord.from_json(kv.value if kv else mine)
        self.mode = pool.mode()
        self.encap = ENCAPS[self.mode]

    def write_node(self) -> None:
        """Put this node's Node resource, keeping the metadata of one already there."""
        key = cs.node_key(self.cfg.node)
        kv = self._retry("get Node", lambda: self.etcd.get(key))
        meta = _meta()
        if kv is not None:
            old = json.loads(kv.value).get("metadata") or {}
            meta = {k: old[k] for k in ("uid", "creationTimestamp") if k in old} or meta
        value = self.cfg.node_record().to_json(meta)
        self._retry("put Node", lambda: self.etcd.put(key, value))

    def claim_block(self) -> None:
        """Claim this node's block as Calico IPAM does: affinity pending, the block created
        (or found) with our affinity and our tunnel address allocated, affinity confirmed."""
        cidr, node = self.cfg.block, self.cfg.node
        aff = cs.affinity_key(node, cidr)
        bkey = cs.block_key(cidr)
        self._retry("claim affinity", lambda: self.etcd.create(aff, cs.affinity_value("pending")))
        while True:
            kv: KeyValue | None = self._retry("get block", lambda: self.etcd.get(bkey))
            if kv is None:
                block = cs.BlockRecord(cidr, node, sequence=time.time_ns(), claim_time=_now())
                value = self._with_tunnel(block).to_json()
                if self._retry("create block", lambda: self.etcd.create(bkey, value)):  # noqa: B023
                    break
                continue
            block = cs.BlockRecord.from_json(kv.value)
            if block.host != node:
                raise SystemExit(f"block {cidr} is affine to {block.host}; not claiming it")
            new = self._with_tunnel(block)
            if new == block:
                break
            rev = kv.mod_revision
            if self._retry("update block", lambda: self.etcd.update(bkey, new.to_json(), rev)):  # noqa: B023
                break
        self._retry("confirm affinity", lambda: self.etcd.put(aff, cs.affinity_value()))
        self.log(f"claimed block {cidr}; Node record written")

    def _with_tunnel(self, block: cs.BlockRecord) -> cs.BlockRecord:
        if not self.cfg.tunnel:
            return block
        ip = self.cfg.block.network_address + 1
        allocs = {**block.allocations, ip: cs.tunnel_allocation(self.cfg.node, self.cfg.tunnel)}
        return cs.BlockRecord(block.cidr, block.host, allocs, block.sequence, block.claim_time)

    # ---- Felix ----

    def resync(self, force: bool = False) -> None:
        """Program the difference between what the datastore asks for and what is in the
        kernel from us (`force`: re-program everything, Felix's periodic refresh, and remove
        Felix-protocol routes nobody asks for, e.g. left by an agent that was killed)."""
        want = desired(self.encap, self.cfg.node, self.cfg.address.network, self.ds)
        if force:
            self._sweep({r.dst for p in want.values() for r in p.routes})
        empty = NamespacePlan(name=self.cfg.node, role="node")
        for name in sorted(set(self.programmed) | set(want)):
            old, new = self.programmed.get(name, empty), want.get(name, empty)
            if old == new and not force:
                continue
            engine.unprogram_peer(self.ip, _minus(old, new))
            added = new if force else _minus(new, old)
            self.warnings[name] = engine.program_peer(self.ip, self.cfg.node, added)
            for w in self.warnings[name]:
                self.log(w)
            if [r.dst for r in old.routes] != [r.dst for r in new.routes]:
                self.log(f"{name}: routes now {[r.dst for r in new.routes] or 'none'}")
            if name in want:
                self.programmed[name] = new
            else:
                self.programmed.pop(name, None)
                self.warnings.pop(name, None)

    def _sweep(self, wanted: set[str]) -> None:
        # Felix owns the routes of its protocol and every route on its tunnel devices:
        # unicast ones it does not want go (the blackhole of its own block is not a peer's).
        tunnels = {i for dev in (VXLAN_DEV, IPIP_DEV) for i in self.ip.link_lookup(ifname=dev)}
        for route in self.ip.get_routes(family=socket.AF_INET, table=254):
            ours = route["proto"] == FELIX_PROTO or route.get_attr("RTA_OIF") in tunnels
            if not ours or route["type"] != rt_type["unicast"] or not route["dst_len"]:
                continue
            dst = f"{route.get_attr('RTA_DST')}/{route['dst_len']}"
            if dst not in wanted:
                with contextlib.suppress(NetlinkError):
                    self.ip.route("del", dst=dst, table=254)
                self.log(f"{dst}: removed a route no record asks for")

    def peers(self) -> list[str]:
        """Remote blocks this node has a way to: a programmed route (encapsulating modes) or,
        in calico-bgp where FRR installs them, a block and Node record to announce it."""
        if self.encap.per_peer is not None:
            return sorted(r.dst for p in self.programmed.values() for r in p.routes)
        return sorted(
            str(c) for c, h in self.ds.blocks.items() if h != self.cfg.node and h in self.ds.nodes
        )

    def report(self) -> None:
        self.write_report(
            {
                "block": str(self.cfg.block),
                "mode": self.mode,
                "peers": self.peers(),
                "warnings": [w for ws in self.warnings.values() for w in ws],
            }
        )

    def run(self) -> None:
        """Start-up, announce `ready`, then watch and resync forever."""
        self.ensure_pool()
        self.write_node()
        self.claim_block()
        self.log(f"pool says {self.mode}")
        print("ready", flush=True)
        threading.Thread(target=self._watch, daemon=True).start()
        refresh = time.monotonic() + RESYNC
        while True:
            try:
                batch = [self.events.get(timeout=max(0.0, refresh - time.monotonic()))]
            except queue.Empty:
                self.resync(force=True)
                refresh = time.monotonic() + RESYNC
                self.report()
                continue
            # Take every event already queued before programming: as n nodes start, each
            # agent sees ~4n events, and one resync per event made start-up quadratic.
            while True:
                try:
                    batch.append(self.events.get_nowait())
                except queue.Empty:
                    break
            changed = False
            for kind, arg in batch:
                if kind == "reset":
                    self.ds = Datastore()
                    for kv in arg:
                        self._complain(self.ds.apply(kv.key, kv.value))
                elif kind == "event":
                    value = None if arg.type == "DELETE" else arg.value
                    self._complain(self.ds.apply(arg.key, value))
                else:
                    self.log(f"watch lost ({arg}); the dataplane stays as it is")
                    continue
                changed = True
            if changed:
                # The first sync after start is a full one (Felix's start-of-day resync): a
                # killed predecessor may have left routes that no record asks for any more.
                self.resync(force=not self.started)
                self.started = True
                self.report()

    def _complain(self, text: str | None) -> None:
        if text:
            self.log(text)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def main() -> int:
    cfg = Config.load(sys.argv[1], os.environ[state.LAB_ENV])
    Felix(cfg).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
