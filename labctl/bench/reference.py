"""A hand-built reference of a lab's datapath, made with plain `ip` commands in throwaway
namespaces, shaped like a lab on two-node.yaml: a segment bridge in its own namespace (as
Mininet's), two nodes with eth0 in it, a pod behind each node's cni0 bridge. host-gw adds a
route per peer subnet via the peer node; vxlan adds flannel.1 (VNI 1, port 8472, MTU 1450,
neigh + FDB + onlink route, as flanneld). No daemons, no netfilter, no lab: what the kernel
alone costs, for `labctl bench` to hold the lab's figure against."""

from __future__ import annotations

import subprocess
from types import TracebackType
from typing import Literal

from labctl.bench.runners import Pair, netns_argv

RefKind = Literal["host-gw", "vxlan"]
#: kind -> pod MTU (the underlay's 1500 minus the encapsulation)
POD_MTU: dict[str, int] = {"host-gw": 1500, "vxlan": 1450}


def _ip(*args: str) -> None:
    res = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if res.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {res.stderr.strip()}")


class Reference:
    """Context manager: builds on enter, deletes every namespace it made on exit (also when
    the build failed half way)."""

    def __init__(self, kind: RefKind, prefix: str) -> None:
        if kind not in POD_MTU:
            raise ValueError(f"reference kind {kind!r}: one of {', '.join(POD_MTU)}")
        self.kind = kind
        self.prefix = f"{prefix}-{kind}"
        self.made: list[str] = []

    def ns(self, role: str) -> str:
        """The `ip netns` name of sw, n1, n2, p1 or p2."""
        return f"{self.prefix}-{role}"

    def __enter__(self) -> Reference:
        try:
            self.build()
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.destroy()

    def build(self) -> None:
        """Namespaces, the segment, the pods, then the datapath's routes."""
        mtu = str(POD_MTU[self.kind])
        for role in ("sw", "n1", "n2", "p1", "p2"):
            _ip("netns", "add", self.ns(role))
            self.made.append(self.ns(role))
            _ip("-n", self.ns(role), "link", "set", "lo", "up")
        sw = self.ns("sw")
        _ip("-n", sw, "link", "add", "sg0", "type", "bridge", "stp_state", "0")
        _ip("-n", sw, "link", "set", "sg0", "up")
        for i in (1, 2):
            node, pod = self.ns(f"n{i}"), self.ns(f"p{i}")
            _ip("-n", sw, "link", "add", f"s{i}", "type", "veth", "peer", "eth0", "netns", node)
            _ip("-n", sw, "link", "set", f"s{i}", "master", "sg0", "up")
            _ip("-n", node, "addr", "add", f"10.99.0.{i}/24", "dev", "eth0")
            _ip("-n", node, "link", "set", "eth0", "up")
            _ip("netns", "exec", node, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            _ip("-n", node, "link", "add", "cni0", "mtu", mtu, "type", "bridge")
            _ip("-n", node, "addr", "add", f"10.244.{i}.1/24", "dev", "cni0")
            _ip("-n", node, "link", "set", "cni0", "up")
            _ip("-n", node, "link", "add", "veth0", "mtu", mtu, "type", "veth",
                "peer", "eth0", "netns", pod, "mtu", mtu)  # fmt: skip
            _ip("-n", node, "link", "set", "veth0", "master", "cni0", "up")
            _ip("-n", pod, "addr", "add", f"10.244.{i}.2/24", "dev", "eth0")
            _ip("-n", pod, "link", "set", "eth0", "up")
            _ip("-n", pod, "route", "add", "default", "via", f"10.244.{i}.1")
        for i, j in ((1, 2), (2, 1)):
            node = self.ns(f"n{i}")
            if self.kind == "host-gw":
                _ip("-n", node, "route", "add", f"10.244.{j}.0/24", "via", f"10.99.0.{j}",
                    "dev", "eth0")  # fmt: skip
                continue
            mac, peer_mac = f"02:00:00:00:00:0{i}", f"02:00:00:00:00:0{j}"
            _ip("-n", node, "link", "add", "flannel.1", "address", mac, "mtu", mtu, "type",
                "vxlan", "id", "1", "dev", "eth0", "local", f"10.99.0.{i}", "dstport", "8472",
                "nolearning")  # fmt: skip
            _ip("-n", node, "addr", "add", f"10.244.{i}.0/32", "dev", "flannel.1")
            _ip("-n", node, "link", "set", "flannel.1", "up")
            _ip("-n", node, "neigh", "replace", f"10.244.{j}.0", "lladdr", peer_mac,
                "dev", "flannel.1", "nud", "permanent")  # fmt: skip
            subprocess.run(
                ["ip", "netns", "exec", node, "bridge", "fdb", "replace", peer_mac, "dev",
                 "flannel.1", "dst", f"10.99.0.{j}", "self", "permanent"],
                check=True, capture_output=True, timeout=30,
            )  # fmt: skip
            _ip("-n", node, "route", "add", f"10.244.{j}.0/24", "via", f"10.244.{j}.0",
                "dev", "flannel.1", "onlink")  # fmt: skip

    def pods(self) -> Pair:
        """Pod 1 to pod 2 through the datapath."""
        return Pair(
            name=f"reference {self.kind}",
            client=netns_argv(name=self.ns("p1")),
            server=netns_argv(name=self.ns("p2")),
            server_ip="10.244.2.2",
        )

    def nodes(self) -> Pair:
        """Node 1 to node 2 over the segment: the underlay baseline."""
        return Pair(
            name="underlay",
            client=netns_argv(name=self.ns("n1")),
            server=netns_argv(name=self.ns("n2")),
            server_ip="10.99.0.2",
        )

    def destroy(self) -> None:
        """Delete every namespace made (their devices go with them)."""
        for ns in reversed(self.made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        self.made.clear()
