"""Pod-to-pod TCP throughput: kernel VXLAN vs. the userspace UDP proxy vs. userspace IPIP.

Builds the same two-node setup once per datapath, runs ``iperf3 -t 5`` from pod 1 to pod 2 and
prints Gbit/s plus the ratio to kernel VXLAN. Needs root, iperf3 and /dev/net/tun; everything
lives in network namespaces named ``lctest-dp-*`` that are removed afterwards.

    pod1 (10.244.1.2) -- n1 (10.99.0.1) ==== n2 (10.99.0.2) -- pod2 (10.244.2.2)

``TwoNodeLab`` is also what ``tests/integration/test_datapath.py`` builds its labs with.

Usage: ``sudo .venv/bin/python benchmarks/datapath_throughput.py [--seconds 5]``
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import select
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from pyroute2 import NetNS

#: datapath kind -> (device name, device MTU = pod MTU, module run for it or None for kernel)
KINDS: dict[str, tuple[str, int, str | None]] = {
    "vxlan": ("flannel.1", 1450, None),
    "udp": ("flannel0", 1472, "labctl.datapath.udpproxy"),
    "ipip": ("tunl0", 1480, "labctl.datapath.ipip"),
}
UDP_PORT = 8285
REPO = Path(__file__).resolve().parents[1]


def sh(*cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run a command, capture its output, raise with stderr on failure."""
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} -> {result.returncode}: {result.stderr.strip()}")
    return result


@dataclass
class Node:
    """One lab node: its netns, underlay IP, pod netns and pod subnet."""

    index: int
    ns: str
    pod_ns: str
    ip: str
    subnet: str
    pod_ip: str
    gateway: str
    process: subprocess.Popen[str] | None = None
    config: str = ""


@dataclass
class TwoNodeLab:
    """Two nodes joined by a veth, a pod behind each, connected through one datapath kind.

    Use as a context manager: ``__enter__`` builds and starts everything, ``__exit__`` stops the
    datapath processes and deletes every namespace (which takes the veths and TUNs with it),
    also when the build failed half way.
    """

    kind: str
    prefix: str = field(default_factory=lambda: f"lctest-dp-{secrets.token_hex(3)}")
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="lctest-dp-")))
    nodes: list[Node] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.device, self.mtu, self.module = KINDS[self.kind]
        for i in (1, 2):
            self.nodes.append(
                Node(
                    index=i,
                    ns=f"{self.prefix}-n{i}",
                    pod_ns=f"{self.prefix}-p{i}",
                    ip=f"10.99.0.{i}",
                    subnet=f"10.244.{i}.0/24",
                    pod_ip=f"10.244.{i}.2",
                    gateway=f"10.244.{i}.1",
                )
            )

    def __enter__(self) -> TwoNodeLab:
        try:
            self.build()
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.destroy()

    def peer(self, node: Node) -> Node:
        """The other node."""
        return self.nodes[2 - node.index]

    def build(self) -> None:
        """Namespaces, underlay veth, pods, then the datapath kind's device and routes."""
        n1, n2 = self.nodes
        for node in self.nodes:
            for ns in (node.ns, node.pod_ns):
                sh("ip", "netns", "add", ns)
                self.namespaces.append(ns)
                sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "link", "add", "eth0", "netns", n1.ns, "type", "veth",
           "peer", "eth0", "netns", n2.ns)  # fmt: skip
        for node in self.nodes:
            sh("ip", "-n", node.ns, "addr", "add", f"{node.ip}/24", "dev", "eth0")
            sh("ip", "-n", node.ns, "link", "set", "eth0", "up")
            sh("ip", "netns", "exec", node.ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            sh("ip", "link", "add", "pod0", "netns", node.ns, "mtu", str(self.mtu), "type",
               "veth", "peer", "eth0", "netns", node.pod_ns, "mtu", str(self.mtu))  # fmt: skip
            sh("ip", "-n", node.ns, "addr", "add", f"{node.gateway}/24", "dev", "pod0")
            sh("ip", "-n", node.ns, "link", "set", "pod0", "up")
            sh("ip", "-n", node.pod_ns, "addr", "add", f"{node.pod_ip}/24", "dev", "eth0")
            sh("ip", "-n", node.pod_ns, "link", "set", "eth0", "up")
            sh("ip", "-n", node.pod_ns, "route", "add", "default", "via", node.gateway)
        for node in self.nodes:
            if self.kind == "vxlan":
                self._vxlan(node)
            else:
                self._tun(node)
                self.start(node)

    def _vxlan(self, node: Node) -> None:
        """flannel.1 as flanneld programs it: neigh, FDB, then the onlink route."""
        peer = self.peer(node)
        ns, dev = node.ns, self.device
        sh("ip", "-n", ns, "link", "add", dev, "address", self._mac(node), "type", "vxlan",
           "id", "1", "dev", "eth0", "local", node.ip, "dstport", "8472", "nolearning")  # fmt: skip
        sh("ip", "-n", ns, "link", "set", dev, "mtu", str(self.mtu), "up")
        sh("ip", "-n", ns, "addr", "add", f"10.244.{node.index}.0/32", "dev", dev)
        peer_net = f"10.244.{peer.index}.0"
        sh("ip", "-n", ns, "neigh", "replace", peer_net, "lladdr", self._mac(peer), "dev", dev,
           "nud", "permanent")  # fmt: skip
        sh("ip", "netns", "exec", ns, "bridge", "fdb", "replace", self._mac(peer), "dev", dev,
           "dst", peer.ip, "self", "permanent")  # fmt: skip
        sh("ip", "-n", ns, "route", "replace", peer.subnet, "via", peer_net, "dev", dev, "onlink")

    @staticmethod
    def _mac(node: Node) -> str:
        return f"02:00:00:00:00:0{node.index}"

    def _tun(self, node: Node) -> None:
        """The persistent TUN as the engine creates it (pyroute2), plus the kind's routes."""
        peer = self.peer(node)
        with NetNS(node.ns) as ns:
            ns.link("add", ifname=self.device, kind="tuntap", mode="tun", ifr={"no_pi": True})
            idx = ns.link_lookup(ifname=self.device)[0]
            ns.link("set", index=idx, mtu=self.mtu, state="up")
            ns.addr("add", index=idx, address=f"10.244.{node.index}.0", prefixlen=32)
            if self.kind == "udp":
                # flannel udp: the whole cluster network via flannel0.
                ns.route("add", dst="10.244.0.0/16", oif=idx)
            else:
                # calico ipip: each remote block via its node, onlink on tunl0 ...
                ns.route("add", dst=peer.subnet, gateway=peer.ip, oif=idx, flags=4)  # onlink
                # ... plus a kernel route the datapath has no peer for (a peer that left), to
                # show the ICMP net unreachable path.
                ns.route("add", dst="10.244.9.0/24", oif=idx)
        routes = [{"subnet": peer.subnet, "node_ip": peer.ip}]
        config: dict[str, object] = {"tun": self.device, "local_ip": node.ip, "routes": routes}
        if self.kind == "udp":
            config["port"] = UDP_PORT
        node.config = str(self.workdir / f"{node.ns}.json")
        Path(node.config).write_text(json.dumps(config))

    def start(self, node: Node, timeout: float = 10) -> subprocess.Popen[str]:
        """Start the datapath in the node's netns and wait for its "ready" line."""
        assert self.module is not None
        cmd = ["ip", "netns", "exec", node.ns, sys.executable, "-m", self.module,
               "--config", node.config]  # fmt: skip
        with open(self.workdir / f"{node.ns}.log", "a") as log:
            proc = subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                cwd=REPO,
            )
        node.process = proc
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        line = proc.stdout.readline().strip() if ready else ""
        if line != "ready":
            proc.kill()
            proc.wait()
            raise RuntimeError(f"{self.module} in {node.ns} not ready: {line!r}, {self.log(node)}")
        return proc

    def log(self, node: Node) -> str:
        """What the node's datapath process wrote to stderr so far."""
        path = self.workdir / f"{node.ns}.log"
        return path.read_text() if path.exists() else ""

    def stop(self, node: Node, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        """Signal the node's datapath process and return its exit code."""
        proc = node.process
        if proc is None:
            return 0
        if proc.poll() is None:
            proc.send_signal(sig)
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        node.process = None
        return rc

    def destroy(self) -> None:
        """Stop processes, delete namespaces (veths and TUNs go with them), remove files."""
        for node in self.nodes:
            self.stop(node)
        for ns in reversed(self.namespaces):
            sh("ip", "netns", "del", ns, check=False)
        self.namespaces.clear()
        for path in self.workdir.glob("*"):
            path.unlink()
        self.workdir.rmdir()

    def iperf3(self, seconds: float, timeout: float | None = None) -> float:
        """TCP pod1 -> pod2 for ``seconds``; returns receiver-side Gbit/s."""
        n1, n2 = self.nodes
        server = subprocess.Popen(
            ["ip", "netns", "exec", n2.pod_ns, "iperf3", "-s", "-1", "-B", n2.pod_ip],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            # iperf3 -J exits 0 even when the connect is refused: wait for the listener.
            deadline = time.monotonic() + 5
            while not sh("ip", "netns", "exec", n2.pod_ns, "ss", "-Hltn", "sport = :5201",
                         check=False).stdout.strip():  # fmt: skip
                if time.monotonic() > deadline:
                    raise RuntimeError("iperf3 server did not listen within 5 s")
                time.sleep(0.02)
            client = sh("ip", "netns", "exec", n1.pod_ns, "iperf3", "-J", "-c", n2.pod_ip,
                        "-t", str(seconds), check=False,
                        timeout=timeout or seconds + 30)  # fmt: skip
            if client.returncode != 0 and not client.stdout.strip():
                raise RuntimeError(f"iperf3 failed: {client.stderr}")
            result = json.loads(client.stdout)
            if "error" in result:
                raise RuntimeError(f"iperf3: {result['error']}")
            return float(result["end"]["sum_received"]["bits_per_second"]) / 1e9
        finally:
            server.kill()
            server.wait()


def main() -> int:
    """Run the benchmark for each datapath kind and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5, help="iperf3 -t (default 5)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 3
    results: dict[str, float] = {}
    for kind in KINDS:
        with TwoNodeLab(kind) as lab:
            results[kind] = lab.iperf3(args.seconds)
        print(f"{kind:6} {results[kind]:7.3f} Gbit/s", file=sys.stderr, flush=True)
    base = results["vxlan"]
    print(f"{'datapath':10} {'Gbit/s':>8} {'vs kernel vxlan':>16}")
    for kind, gbps in results.items():
        print(f"{kind:10} {gbps:8.3f} {gbps / base:16.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
