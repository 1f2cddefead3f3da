"""kube-proxy's compiled rules in a real kernel (root), in both proxy modes.

A hand-built topology in scratch namespaces named ``lctest-kp-<random>-<role>`` (deleted in
the fixture's ``finally``, with the processes it started; nothing touches the host's own
namespace)::

    client 10.0.0.2 ---- 10.0.0.1 [node] 10.244.1.1 ---- 10.244.1.2 b1 (pod web-1, on "node")
    (outside the    10.0.1.2 -- 10.0.1.1 10.244.2.1 ---- 10.244.2.2 b2 (pod web-2, on "node2")
    cluster; also the node's default gateway)

Each backend runs a TCP server on 8080 that answers ``<name> <peer address>``, so a reply
tells who answered and whether the source was masqueraded. ``apply.sync`` programs the node
(through the pid of a process in its namespace), then real connections show: the ClusterIP
spreads over both backends and masquerades the off-cluster client; a pod reaching its own
service through the ClusterIP works (hairpin masquerade) while pod-to-other-pod keeps its
source; a NodePort works; externalTrafficPolicy Local keeps the client's address and only uses
the node's own endpoint; a Service without endpoints is rejected. ``iptables-save`` /
``nft list table ip kube-proxy`` show the chains, a second sync changes nothing, and a sync
that one node refuses loads nothing anywhere.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Network
from typing import Any

import pytest

from labctl.policy.model import NamedPort, PodInfo
from labctl.services import proxy_iptables, proxy_nftables
from labctl.services.apply import ProxyApplyError, sync
from labctl.services.endpoints import compute_slices, port_plans
from labctl.services.model import Service, allocate

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(
        shutil.which("nft") is None or shutil.which("iptables-restore") is None,
        reason="nft and iptables-restore are needed",
    ),
]

PREFIX = "lctest-kp-"
CLUSTER_CIDR = IPv4Network("10.244.0.0/16")
SERVICE_CIDR = IPv4Network("10.96.0.0/12")
NODE_IP = "10.0.0.1"

SERVER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080))
s.listen(128)
while True:
    c, peer = s.accept()
    c.sendall(f"{sys.argv[1]} {peer[0]}\\n".encode())
    c.close()
"""

CLIENT = """
import json, socket, sys
out = []
for _ in range(int(sys.argv[3])):
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect((sys.argv[1], int(sys.argv[2])))
        out.append(s.recv(100).decode().strip())
    except OSError as e:
        out.append(type(e).__name__)
    finally:
        s.close()
print(json.dumps(out))
"""


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc


def in_ns(ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run("ip", "netns", "exec", ns, *argv, check=check)


@dataclass
class Lab:
    """The scratch topology: namespace names by role, and the processes started in them."""

    ns: dict[str, str] = field(default_factory=dict)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, role: str, *argv: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns[role], *argv],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.procs.append(proc)
        return proc

    def connect(self, role: str, ip: str, port: int, count: int = 1) -> list[str]:
        """`count` TCP connections from `role`: each reply, or the error's class name."""
        out = in_ns(self.ns[role], sys.executable, "-c", CLIENT, ip, str(port), str(count))
        replies: list[str] = json.loads(out.stdout)
        return replies


def _veth(lab: Lab, a: str, a_if: str, a_addr: str, b: str, b_if: str, b_addr: str) -> None:
    run("ip", "link", "add", a_if, "netns", lab.ns[a], "type", "veth", "peer", b_if, "netns",
        lab.ns[b])  # fmt: skip
    for role, iface, addr in ((a, a_if, a_addr), (b, b_if, b_addr)):
        in_ns(lab.ns[role], "ip", "addr", "add", addr, "dev", iface)
        in_ns(lab.ns[role], "ip", "link", "set", iface, "up")


@pytest.fixture
def lab() -> Iterator[Lab]:
    tag = secrets.token_hex(3)
    lab = Lab()
    try:
        for role in ("node", "client", "b1", "b2"):
            lab.ns[role] = f"{PREFIX}{tag}-{role}"
            run("ip", "netns", "add", lab.ns[role])
            in_ns(lab.ns[role], "ip", "link", "set", "lo", "up")
        _veth(lab, "node", "eth0", f"{NODE_IP}/24", "client", "eth0", "10.0.0.2/24")
        _veth(lab, "node", "veth-b1", "10.244.1.1/24", "b1", "eth0", "10.244.1.2/24")
        _veth(lab, "node", "veth-b2", "10.244.2.1/24", "b2", "eth0", "10.244.2.2/24")
        # The client doubles as the node's upstream router, on a link of its own: ClusterIPs
        # route somewhere, as on a real node, so packets kube-proxy does not DNAT reach the
        # FORWARD hook. (Sent back out the link they came in on, they would make the node send
        # an ICMP redirect, which uses up the per-peer ICMP budget REJECT's error needs.)
        _veth(lab, "node", "uplink", "10.0.1.1/24", "client", "uplink", "10.0.1.2/24")
        in_ns(lab.ns["node"], "sysctl", "-qw", "net.ipv4.ip_forward=1")
        in_ns(lab.ns["node"], "ip", "route", "add", "default", "via", "10.0.1.2")
        in_ns(lab.ns["client"], "ip", "route", "add", "default", "via", NODE_IP)
        for role, gw in (("b1", "10.244.1.1"), ("b2", "10.244.2.1")):
            in_ns(lab.ns[role], "ip", "route", "add", "default", "via", gw)
            lab.start(role, sys.executable, "-c", SERVER, role)
        deadline = time.monotonic() + 10
        while not all(
            lab.connect("client", ip, 8080)[0].startswith(name)
            for name, ip in (("b1", "10.244.1.2"), ("b2", "10.244.2.2"))
        ):
            assert time.monotonic() < deadline, "backend servers did not come up"
            time.sleep(0.1)
        yield lab
    finally:
        for proc in lab.procs:
            proc.kill()
            proc.wait()
        for name in lab.ns.values():
            run("ip", "netns", "del", name, check=False)


def service(name: str, **spec: Any) -> Service:
    return Service.model_validate(
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec}
    )


def cluster() -> tuple[list[Service], list[PodInfo]]:
    """Three NodePort Services over the two backends, allocated as the API server would."""
    wanted = [
        service(
            "web",
            type="NodePort",
            selector={"app": "web"},
            ports=[{"name": "http", "port": 80, "targetPort": "http", "nodePort": 30080}],
        ),
        service(
            "empty",
            type="NodePort",
            selector={"app": "none"},
            ports=[{"port": 80, "nodePort": 30081}],
        ),
        service(
            "local",
            type="NodePort",
            externalTrafficPolicy="Local",
            selector={"app": "web"},
            ports=[{"port": 80, "targetPort": 8080, "nodePort": 30082}],
        ),
    ]
    stored: dict[str, Service] = {}
    for svc in wanted:
        stored[svc.key] = allocate(svc, stored, SERVICE_CIDR)
    http = (NamedPort("http", 8080, "TCP"),)
    pods = [
        PodInfo("default", "web-1", "10.244.1.2", "node", {"app": "web"}, http),
        PodInfo("default", "web-2", "10.244.2.2", "node2", {"app": "web"}, http),
    ]
    return list(stored.values()), pods


def ip_of(services: list[Service], name: str) -> str:
    ip = next(s.spec.clusterIP for s in services if s.metadata.name == name)
    assert ip is not None
    return ip


@pytest.fixture
def holder(lab: Lab) -> int:
    """The pid of a process in the node's namespace, as the lab's node processes are."""
    return lab.start("node", "sleep", "600").pid


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_services_in_the_kernel(lab: Lab, holder: int, mode: str) -> None:
    services, pods = cluster()
    result = sync(services, pods, {"node": NODE_IP}, {"node": holder}, CLUSTER_CIDR, mode)
    assert result.rules > 0 and set(result.texts) == {"node"}
    web, empty = ip_of(services, "web"), ip_of(services, "empty")

    # ClusterIP from off the cluster: both backends, source masqueraded to the node.
    replies = lab.connect("client", web, 80, 30)
    assert {r.split()[0] for r in replies} == {"b1", "b2"}, replies
    assert set(replies) == {"b1 10.244.1.1", "b2 10.244.2.1"}, replies

    # From a pod: reaching itself works only thanks to the hairpin masquerade; reaching the
    # other pod keeps the pod's own address.
    replies = lab.connect("b1", web, 80, 30)
    assert set(replies) == {"b1 10.244.1.1", "b2 10.244.1.2"}, replies

    # NodePort (Cluster policy): both backends, masqueraded.
    replies = lab.connect("client", NODE_IP, 30080, 20)
    assert set(replies) == {"b1 10.244.1.1", "b2 10.244.2.1"}, replies

    # NodePort with externalTrafficPolicy Local: only this node's endpoint, client address kept.
    assert set(lab.connect("client", NODE_IP, 30082, 10)) == {"b1 10.0.0.2"}

    # No endpoints: rejected (refused at once), on the ClusterIP and on the NodePort.
    assert lab.connect("client", empty, 80) == ["ConnectionRefusedError"]
    assert lab.connect("client", NODE_IP, 30081) == ["ConnectionRefusedError"]

    plans = {p.name: p for p in port_plans("node", services, compute_slices(services, pods))}
    web_http = plans["default/web:http"]
    if mode == "iptables":
        saved = in_ns(lab.ns["node"], "iptables-save").stdout
        svc_chain = proxy_iptables.service_chain("default/web:http", "tcp")
        for ep in web_http.reachable:
            assert proxy_iptables.endpoint_chain("default/web:http", "tcp", ep.text) in saved
        for chain in (svc_chain, "KUBE-NODEPORTS", "KUBE-MARK-MASQ", "KUBE-POSTROUTING"):
            assert f":{chain} - " in saved, chain
        # Every rule line reads back exactly as compiled.
        lines = set(saved.splitlines())
        missing = [
            line
            for line in result.texts["node"].splitlines()
            if line.startswith("-A ") and line not in lines
        ]
        assert not missing, missing
    else:
        listing = in_ns(lab.ns["node"], "nft", "list", "table", "ip", "kube-proxy").stdout
        base = proxy_nftables.port_chain_base(web_http)
        assert base.endswith("-default/web/tcp/http")
        for chain in (f"service-{base}", f"external-{base}", "services", "masquerading"):
            assert f"chain {chain} {{" in listing, chain
        for ep in web_http.reachable:
            assert f"chain endpoint-{proxy_nftables.endpoint_chain_base(web_http, ep)} {{" in (
                listing
            )
        assert "numgen random mod 2 vmap" in listing
        assert 'comment "default/empty" : goto reject-chain' in listing

    # A second sync is a no-op for the dataplane: same rules, no duplicate hooks.
    again = sync(services, pods, {"node": NODE_IP}, {"node": holder}, CLUSTER_CIDR, mode)
    assert again.rules <= result.rules
    if mode == "iptables":
        nat = in_ns(lab.ns["node"], "iptables-save", "-t", "nat").stdout
        assert nat.count("-A PREROUTING ") == 1
    assert set(lab.connect("client", NODE_IP, 30082, 3)) == {"b1 10.0.0.2"}


def test_one_refusing_node_loads_nothing(lab: Lab, holder: int) -> None:
    services, pods = cluster()
    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid with no process: that node cannot be checked
    nodes = {"node": NODE_IP, "ghost": "10.0.0.9"}
    with pytest.raises(ProxyApplyError, match="ghost"):
        sync(services, pods, nodes, {"node": holder, "ghost": gone.pid}, CLUSTER_CIDR, "nftables")
    listing = in_ns(lab.ns["node"], "nft", "list", "tables").stdout
    assert "kube-proxy" not in listing
