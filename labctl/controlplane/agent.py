"""The node agent of flannel modes: `python -m labctl.controlplane.agent CONFIG`, one per
node, run by the supervisor inside the node's network namespace.

What flanneld does with an etcd subnet manager, on a lab's time scale: read the network
config, acquire (or re-take) this node's subnet lease with a TTL, write subnet.env, renew the
lease (flannel's updateSubnet: a fresh etcd lease and the value put again), watch
`/coreos.com/network/subnets/` and program each peer's neighbour, FDB entry and route with the
mode's own per-peer planner code as leases appear, change or expire. Every 10 s it re-programs
everything (flanneld's routeCheck). Its progress goes to a status file the supervisor reads.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import sys
import threading
import time
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute

from labctl import engine, state
from labctl.controlplane import lease as leases
from labctl.controlplane.etcd import Client, EtcdError, Event, KeyValue, socket_path
from labctl.modes.flannel import BACKENDS, VXLAN_VNI, backend_named, peer_objects
from labctl.plan import NamespacePlan, Peer
from labctl.render import render

RESYNC = 10.0  # flanneld's routeCheck period
RETRY = 0.5
UDP_PROXY = "udpproxy"  # the flannel-udp proxy's daemon kind


def argv(config_path: str) -> list[str]:
    """How the supervisor starts an agent."""
    return [sys.executable, "-m", "labctl.controlplane.agent", config_path]


def status_path(lab_dir: Path, node: str) -> Path:
    """Where node `node`'s agent reports its lease and programmed peers."""
    return lab_dir / "agents" / f"{node}.json"


def read_status(lab_dir: Path) -> dict[str, dict[str, Any]]:
    """Every agent's last report, by node."""
    out = {}
    for p in sorted((lab_dir / "agents").glob("*.json")):
        try:
            out[p.stem] = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
    return out


@dataclass
class Config:
    lab: str
    node: str
    subnet: IPv4Network
    network: IPv4Network
    public_ip: IPv4Address
    underlay: IPv4Network
    underlay_mtu: int
    vtep_mac: str
    ttl: int

    @classmethod
    def load(cls, path: str, lab: str) -> Config:
        raw = json.loads(Path(path).read_text())
        return cls(
            lab=lab,
            node=raw["node"],
            subnet=IPv4Network(raw["subnet"]),
            network=IPv4Network(raw["network"]),
            public_ip=IPv4Address(raw["public_ip"]),
            underlay=IPv4Network(raw["underlay"]),
            underlay_mtu=int(raw["underlay_mtu"]),
            vtep_mac=raw["vtep_mac"],
            ttl=int(raw["ttl"]),
        )


class NodeAgent:
    """What the node agents share (flanneld here, calico-node in felix.py): the log line, etcd
    retries, a thread that lists then watches `prefix` into `events`, and the status report
    the supervisor reads."""

    def __init__(self, lab: str, node: str, prefix: str) -> None:
        self.node = node
        self.prefix = prefix
        self.dir = state.lab_dir(lab)
        self.etcd = Client(str(socket_path(self.dir)))
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.warnings: dict[str, list[str]] = {}
        self.ip = IPRoute()

    def log(self, text: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {self.node}: {text}", flush=True)

    def _retry(self, what: str, fn: Any) -> Any:
        while True:
            try:
                return fn()
            except EtcdError as e:
                self.log(f"{what}: {e}; retrying")
                time.sleep(RETRY)

    def _watch(self) -> None:
        """Thread: list, then watch from the next revision; on any break list again."""
        while True:
            try:
                rev, kvs = self.etcd.get_prefix(self.prefix)
                self.events.put(("reset", kvs))
                for ev in self.etcd.watch(self.prefix, rev + 1):
                    self.events.put(("event", ev))
            except EtcdError as e:
                self.events.put(("lost", str(e)))
                time.sleep(RETRY)

    def write_report(self, doc: dict[str, Any]) -> None:
        """Replace this node's status file with `doc` (plus node and pid) in one rename."""
        path = status_path(self.dir, self.node)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"node": self.node, "pid": os.getpid(), **doc}))
        os.replace(tmp, path)


class Agent(NodeAgent):
    """One node's flanneld."""

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg.lab, cfg.node, leases.SUBNETS)
        self.cfg = cfg
        self.key = leases.subnet_key(cfg.subnet)
        # subnet -> (lease value, what was programmed for it)
        self.peers: dict[str, tuple[str, NamespacePlan]] = {}
        self.listed = False  # the first listing of the leases has been applied
        self.table: list[dict[str, str]] | None = None  # the proxy table last made sure of

    # ---- config and lease ----

    def read_config(self) -> None:
        kv = self._retry("get network config", lambda: self.etcd.get(leases.CONFIG_KEY))
        while kv is None:
            self.log(f"{leases.CONFIG_KEY} not found; waiting")
            time.sleep(RETRY)
            kv = self._retry("get network config", lambda: self.etcd.get(leases.CONFIG_KEY))
        self.mode = backend_named(json.loads(kv.value))
        self.backend = BACKENDS[self.mode]
        self.attrs = leases.attrs_for(
            self.backend.type, self.cfg.public_ip, VXLAN_VNI, self.cfg.vtep_mac
        )

    def acquire(self) -> None:
        """Take this node's subnet: re-take our own lease, refuse one held by another IP."""
        value = self.attrs.to_json()
        while True:
            cur = self._retry("get lease", lambda: self.etcd.get(self.key))
            if cur is not None:
                holder = leases.LeaseAttrs.from_json(cur.value).public_ip
                if holder != self.cfg.public_ip:
                    raise SystemExit(
                        f"subnet {self.cfg.subnet} is leased by {holder}; not taking it"
                    )
                self.renew()
                return
            lid = self._retry("grant", lambda: self.etcd.grant(self.cfg.ttl))
            if self._retry("create lease", lambda: self.etcd.create(self.key, value, lid)):  # noqa: B023
                self.log(f"acquired lease {self.cfg.subnet} (TTL {self.cfg.ttl}s)")
                self.renewed = time.monotonic()
                return

    def renew(self) -> None:
        """flannel's updateSubnet: a fresh etcd lease, the value put again under it."""
        lid = self.etcd.grant(self.cfg.ttl)
        self.etcd.put(self.key, self.attrs.to_json(), lid)
        self.renewed = time.monotonic()

    def write_subnet_env(self) -> None:
        """/run/flannel/subnet.env in the node's private /run/flannel (its mount namespace)."""
        pid = state.load(self.cfg.lab).namespaces[self.cfg.node].pid
        text = render(
            "subnet.env.j2",
            network=self.cfg.network,
            subnet_gateway=self.cfg.subnet.network_address + 1,
            subnet_prefixlen=self.cfg.subnet.prefixlen,
            mtu=self.cfg.underlay_mtu - self.backend.overhead,
            ipmasq=True,
        )
        target = Path(f"/proc/{pid}/root/run/flannel/subnet.env")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)

    # ---- peers ----

    def _peer(self, subnet: IPv4Network, attrs: leases.LeaseAttrs) -> Peer:
        return Peer(
            name=str(attrs.public_ip),
            ip=attrs.public_ip,
            pod_cidr=subnet,
            vtep_mac=attrs.vtep_mac,
            same_subnet=attrs.public_ip in self.cfg.underlay,
        )

    def add(self, key: str, value: str, force: bool = False) -> None:
        try:
            subnet = leases.parse_subnet_key(key)
            attrs = leases.LeaseAttrs.from_json(value)
        except leases.LeaseFormatError as e:
            self.log(f"ignoring {key}: {e}")
            return
        old = self.peers.get(str(subnet))
        if old is not None and old[0] == value and not force:
            return  # a renewal: same record, nothing to do
        if old is not None and old[0] != value:
            engine.unprogram_peer(self.ip, old[1])
        part = peer_objects(self.backend, self.cfg.node, self._peer(subnet, attrs))
        self.warnings[str(subnet)] = engine.program_peer(self.ip, self.cfg.node, part)
        for w in self.warnings[str(subnet)]:
            self.log(w)
        if old is None:
            self.log(f"lease added: {subnet} at {attrs.public_ip}")
        self.peers[str(subnet)] = (value, part)

    def remove(self, key: str) -> None:
        try:
            subnet = str(leases.parse_subnet_key(key))
        except leases.LeaseFormatError:
            return
        old = self.peers.pop(subnet, None)
        self.warnings.pop(subnet, None)
        if old is not None:
            engine.unprogram_peer(self.ip, old[1])
            self.log(f"lease removed: {subnet}")

    def reset(self, kvs: list[KeyValue]) -> None:
        """flannel's LeaseWatcher.Reset: diff a full listing against what is programmed."""
        now = {kv.key: kv.value for kv in kvs if kv.key != self.key}
        for subnet in list(self.peers):
            key = leases.subnet_key(IPv4Network(subnet))
            if key not in now:
                self.remove(key)
        for key, value in now.items():
            self.add(key, value)
        self.listed = True

    def on_event(self, ev: Event) -> None:
        if ev.key == self.key:
            return  # flanneld filters out its own subnet
        if ev.type == "DELETE":
            self.remove(ev.key)
        else:
            self.add(ev.key, ev.value)

    def sync_proxy_table(self) -> None:
        """flannel-udp: the node's proxy routes to the peers of the live leases, as flanneld's
        udp backend sets and deletes its proxy's routes from the lease events (a lease that
        expires takes its node out). The table is the proxy's config file; SIGHUP makes it
        re-read it. Nothing to do when the table already says so."""
        if self.backend.type != "udp" or not self.listed:
            return  # before the first listing the agent knows no peers, not "no peers"
        routes = [
            {"subnet": subnet, "node_ip": str(leases.LeaseAttrs.from_json(value).public_ip)}
            for subnet, (value, _) in sorted(self.peers.items())
        ]
        if routes == self.table:
            return
        from labctl import daemons  # (daemons imports the agents' module: not at the top)

        st = state.load(self.cfg.lab)
        path = daemons.config_path(st, self.cfg.node, UDP_PROXY)
        try:
            config = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            self.log(f"proxy table {path}: {e}")
            return
        self.table = routes
        if sorted(config.get("routes", []), key=lambda r: r["subnet"]) == routes:
            return
        config["routes"] = routes
        daemons.write_config(st, self.cfg.node, UDP_PROXY, config)
        pid = st.processes.get(f"{self.cfg.node}:{UDP_PROXY}")
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGHUP)
        self.log(f"proxy table: {len(routes)} peer(s)")

    # ---- loop ----

    def report(self) -> None:
        self.write_report(
            {
                "lease": str(self.cfg.subnet),
                "backend": self.mode,
                "peers": sorted(self.peers),
                "warnings": [w for ws in self.warnings.values() for w in ws],
                "renewed": time.time() - (time.monotonic() - self.renewed),
            }
        )

    def run(self) -> None:
        """Acquire, announce `ready`, then watch, renew and resync forever."""
        self.read_config()
        self.acquire()
        self.write_subnet_env()
        self.log(f"backend {self.backend.type}; subnet.env written")
        print("ready", flush=True)
        threading.Thread(target=self._watch, daemon=True).start()
        resync = time.monotonic() + RESYNC
        renew_every = self.cfg.ttl / 2
        while True:
            now = time.monotonic()
            wait = max(0.0, min(self.renewed + renew_every, resync) - now)
            try:
                kind, arg = self.events.get(timeout=wait)
                if kind == "reset":
                    self.reset(arg)
                elif kind == "event":
                    self.on_event(arg)
                elif kind == "lost":
                    self.log(f"watch lost ({arg}); the dataplane stays as it is")
            except queue.Empty:
                pass
            now = time.monotonic()
            if now >= self.renewed + renew_every:
                try:
                    self.renew()
                except EtcdError as e:
                    self.log(f"renewing lease: {e}; retrying")
                    self.renewed += RETRY  # try again soon, not every loop turn
            if now >= resync:
                for subnet, (value, _) in list(self.peers.items()):
                    self.add(leases.subnet_key(IPv4Network(subnet)), value, force=True)
                resync = now + RESYNC
            self.sync_proxy_table()
            self.report()


def main() -> int:
    cfg = Config.load(sys.argv[1], os.environ[state.LAB_ENV])
    Agent(cfg).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
