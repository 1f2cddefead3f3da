"""The compiled policy tables in a real kernel (root): syntax, atomic reload, teardown, traffic.

Every test works in fresh scratch namespaces named ``lctest-nft-<random>`` that are deleted
in the fixture's ``finally``; nothing runs nft in the host's own namespace.

* ``nft -c -f`` accepts each ruleset (empty sets, named ports, ipBlock except, long names,
  100 policies over 200 pods), loading it twice in a row works (the table replaces itself in
  one transaction), the kernel holds as many rules and set elements as the compiler says, and
  ``teardown_text()`` removes it (also when it is absent).
* A one-node lab (node namespace, three pod namespaces on ``cali*`` veths, Calico-style /32
  routes) shows the packet walk: default deny, replies passing, egress then ingress for a
  same-node pair, named ports.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from labctl.policy.compile import TABLE, NodeRuleset, compile_all, compile_node, teardown_text
from labctl.policy.model import NamedPort, NetworkPolicy, PodInfo

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(shutil.which("nft") is None, reason="nft is not installed"),
]

PREFIX = "lctest-nft-"


def run(*argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc


@pytest.fixture
def scratch() -> Iterator[Callable[[str], str]]:
    """Makes scratch namespaces (`make(suffix)` -> name); all are deleted afterwards."""
    tag = secrets.token_hex(3)
    made: list[str] = []

    def make(suffix: str = "") -> str:
        name = f"{PREFIX}{tag}{'-' + suffix if suffix else ''}"
        run("ip", "netns", "add", name)
        made.append(name)
        return name

    try:
        yield make
    finally:
        for name in reversed(made):
            run("ip", "netns", "del", name, check=False)


def nft(ns: str, text: str, tmp: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    """`nft [flags] -f FILE` inside `ns`; a file, so errors carry line numbers."""
    path = tmp / f"ruleset-{secrets.token_hex(4)}.nft"
    path.write_text(text)
    proc = run("ip", "netns", "exec", ns, "nft", *flags, "-f", str(path), check=False)
    assert proc.returncode == 0, f"nft {' '.join(flags)} -f rejected:\n{proc.stderr}\n{text}"
    return proc


def kernel_table(ns: str) -> list[dict[str, Any]] | None:
    """The table as `nft -j` lists it, or None when it does not exist."""
    proc = run("ip", "netns", "exec", ns, "nft", "-j", "list", "table", "ip", TABLE, check=False)
    if proc.returncode != 0:
        return None
    items: list[dict[str, Any]] = json.loads(proc.stdout)["nftables"]
    return items


def check_in_kernel(ns: str, rs: NodeRuleset, tmp: Path) -> None:
    """Dry run, load twice, compare with the compiler's counts, tear down."""
    nft(ns, rs.text, tmp, "-c")
    assert kernel_table(ns) is None  # -c changed nothing
    nft(ns, rs.text, tmp)
    nft(ns, rs.text, tmp)  # replaces itself: no "File exists", no duplicate rules
    items = kernel_table(ns)
    assert items is not None
    chains = [x["chain"]["name"] for x in items if "chain" in x]
    assert sorted(chains) == sorted(rs.chains)
    assert sum(1 for x in items if "rule" in x) == rs.rules
    maps = {x["map"]["name"]: x["map"].get("elem", []) for x in items if "map" in x}
    assert len(maps["filter-cali-to-wl-dispatch"]) == len(rs.endpoints)
    sets = {x["set"]["name"]: len(x["set"].get("elem", [])) for x in items if "set" in x}
    assert sets == compiled_sets(rs.text)
    nft(ns, teardown_text(), tmp)
    assert kernel_table(ns) is None
    nft(ns, teardown_text(), tmp)  # absent: still fine


def compiled_sets(text: str) -> dict[str, int]:
    """Set name -> number of elements, read from the compiler's text."""
    out = {}
    for name, body in re.findall(r"^\tset (\S+) \{\n(.*?)^\t\}", text, re.M | re.S):
        m = re.search(r"elements = \{(.*?)\}", body, re.S)
        out[name] = m[1].count(",") + 1 if m else 0
    return out


def make_policy(name: str, ns: str = "x", **spec: Any) -> NetworkPolicy:
    spec.setdefault("podSelector", {})
    return NetworkPolicy.model_validate(
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": ns},
            "spec": spec,
        }
    )


def small_cluster() -> list[PodInfo]:
    pods = []
    for i, ns in enumerate("xyz"):
        for j, name in enumerate("abc"):
            node = (i + j) % 3 + 1
            pods.append(
                PodInfo(
                    ns,
                    name,
                    f"10.244.{node}.{10 * i + j + 2}",
                    f"n{node}",
                    {"pod": name},
                    (NamedPort("serve-80", 80, "TCP"), NamedPort("serve-81", 81, "UDP")),
                    f"cali{ns}{name}{node}",
                )
            )
    return pods


NAMESPACES = {ns: {"kubernetes.io/metadata.name": ns} for ns in "xyz"}

CASES: dict[str, list[NetworkPolicy]] = {
    "no-policies": [],
    "default-deny-all": [make_policy("deny", policyTypes=["Ingress", "Egress"])],
    "empty-sets": [
        make_policy("nobody", ingress=[{"from": [{"podSelector": {"matchLabels": {"p": "q"}}}]}]),
        make_policy("no-named", ingress=[{"ports": [{"port": "nothing"}]}]),
    ],
    "named-ports": [
        make_policy(
            "named",
            policyTypes=["Ingress", "Egress"],
            ingress=[{"ports": [{"port": "serve-80"}, {"protocol": "UDP", "port": "serve-81"}]}],
            egress=[{"to": [{"namespaceSelector": {}}], "ports": [{"port": "serve-80"}]}],
        )
    ],
    "ipblock-except": [
        make_policy(
            "cidr",
            egress=[
                {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}}]},
                {
                    "to": [
                        {
                            "ipBlock": {
                                "cidr": "192.168.0.0/16",
                                "except": ["192.168.1.0/24", "192.168.0.0/23"],
                            }
                        }
                    ]
                },
            ],
            ingress=[{"from": [{"ipBlock": {"cidr": "10.244.1.2/32"}}]}],
        )
    ],
    "ports-and-protocols": [
        make_policy(
            "ports",
            ingress=[
                {
                    "from": [
                        {
                            "namespaceSelector": {
                                "matchLabels": {"kubernetes.io/metadata.name": "y"}
                            },
                            "podSelector": {
                                "matchExpressions": [
                                    {"key": "pod", "operator": "In", "values": ["a", "b"]}
                                ]
                            },
                        }
                    ],
                    "ports": [
                        {"port": 80},
                        {"port": 8000, "endPort": 8080},
                        {"port": 8050, "endPort": 9000},
                        {"protocol": "UDP"},
                        {"protocol": "SCTP", "port": 80},
                    ],
                },
                {},
            ],
        )
    ],
    "long-names": [make_policy(("p" * 62 + ".") * 4 + "p", ns="x" * 63)],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_compiled_rulesets_load(case: str, scratch: Callable[[str], str], tmp_path: Path) -> None:
    pods = small_cluster()
    namespaces = {**NAMESPACES, "x" * 63: {"kubernetes.io/metadata.name": "x" * 63}}
    if case == "long-names":
        pods.append(PodInfo("x" * 63, "long", "10.244.1.99", "n1", {}, (), "calilong"))
    ns = scratch("")
    for rs in compile_all(["n1", "n2", "n3"], CASES[case], namespaces, pods).values():
        check_in_kernel(ns, rs, tmp_path)


def test_node_without_pods_loads(scratch: Callable[[str], str], tmp_path: Path) -> None:
    rs = compile_node("n9", CASES["default-deny-all"], NAMESPACES, small_cluster())
    assert rs.endpoints == ()
    check_in_kernel(scratch(""), rs, tmp_path)


def scale_cluster(
    n_pods: int = 200, n_policies: int = 100
) -> tuple[list[PodInfo], list[NetworkPolicy]]:
    """200 pods in 4 namespaces on 3 nodes, 100 policies over them (each selects 2 pods and
    allows egress to 2 others of its namespace)."""
    namespaces = ["ns0", "ns1", "ns2", "ns3"]
    pods = [
        PodInfo(
            namespaces[i % 4],
            f"pod{i}",
            f"10.244.{i % 3}.{i // 3 + 2}",
            f"n{i % 3 + 1}",
            {"app": f"app{i % 25}", "tier": "web" if i // 4 % 2 else "db"},
            (NamedPort("http", 8080 + i % 3, "TCP"),),
            f"cali{i:011d}",
        )
        for i in range(n_pods)
    ]
    policies = [
        make_policy(
            f"pol{k}",
            ns=namespaces[k % 4],
            podSelector={"matchLabels": {"app": f"app{k % 25}"}},
            policyTypes=["Ingress", "Egress"] if k % 3 == 0 else ["Ingress"],
            ingress=[
                {
                    "from": [
                        {"podSelector": {"matchLabels": {"tier": "web"}}},
                        {
                            "namespaceSelector": {
                                "matchLabels": {
                                    "kubernetes.io/metadata.name": namespaces[(k + 1) % 4]
                                }
                            }
                        },
                        {"ipBlock": {"cidr": f"172.16.{k}.0/24", "except": [f"172.16.{k}.128/25"]}},
                    ],
                    "ports": [{"port": 80 + k}, {"port": "http"}, {"protocol": "UDP", "port": 53}],
                }
            ],
            egress=[{"to": [{"podSelector": {"matchLabels": {"app": f"app{(k + 1) % 25}"}}}]}],
        )
        for k in range(n_policies)
    ]
    return pods, policies


def test_100_policies_over_200_pods(scratch: Callable[[str], str], tmp_path: Path) -> None:
    pods, policies = scale_cluster()
    namespaces = {f"ns{i}": {"kubernetes.io/metadata.name": f"ns{i}"} for i in range(4)}
    rulesets = compile_all(["n1", "n2", "n3"], policies, namespaces, pods)
    ns = scratch("")
    for rs in rulesets.values():
        assert len(rs.endpoints) in (66, 67)
        check_in_kernel(ns, rs, tmp_path)
    sets = compiled_sets(rulesets["n1"].text)
    assert [v for k, v in sets.items() if k.startswith("cali40n-")] == [200]  # http: all pods
    assert 25 in sets.values()  # tier=web in one namespace


# --- traffic through a one-node lab -----------------------------------------------------


@dataclass
class OneNode:
    """A node namespace with pods behind `cali*` veths, wired the way Calico does it."""

    node: str
    pods: dict[str, PodInfo] = field(default_factory=dict)
    netns: dict[str, str] = field(default_factory=dict)
    listeners: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def add_pod(self, make: Callable[[str], str], info: PodInfo, index: int) -> None:
        podns = make(info.name)
        mac = f"02:00:00:00:00:{index:02x}"
        run("ip", "-n", self.node, "link", "add", info.iface, "address", "ee:ee:ee:ee:ee:ee",
            "type", "veth", "peer", "name", "eth0", "address", mac, "netns", podns)  # fmt: skip
        run("ip", "-n", self.node, "link", "set", info.iface, "up")
        run("ip", "-n", self.node, "route", "add", f"{info.ip}/32", "dev", info.iface)
        # Static neighbours both ways: the node has no address to ARP from, and this keeps the
        # test about policy, not about proxy ARP.
        run("ip", "-n", self.node, "neigh", "add", info.ip, "lladdr", mac, "dev", info.iface,
            "nud", "permanent")  # fmt: skip
        run("ip", "-n", podns, "link", "set", "lo", "up")
        run("ip", "-n", podns, "link", "set", "eth0", "up")
        run("ip", "-n", podns, "addr", "add", f"{info.ip}/32", "dev", "eth0")
        run("ip", "-n", podns, "route", "add", "169.254.1.1", "dev", "eth0")
        run("ip", "-n", podns, "route", "add", "default", "via", "169.254.1.1", "dev", "eth0")
        run("ip", "-n", podns, "neigh", "add", "169.254.1.1", "lladdr", "ee:ee:ee:ee:ee:ee",
            "dev", "eth0", "nud", "permanent")  # fmt: skip
        self.pods[info.name] = info
        self.netns[info.name] = podns

    def listen(self, pod: str, port: int) -> None:
        argv = ["ip", "netns", "exec", self.netns[pod], "socat", "-u"]
        argv += [f"TCP-LISTEN:{port},reuseaddr,fork", "/dev/null"]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.listeners.append(proc)

    def ping(self, src: str, dst: str) -> bool:
        ip = self.pods[dst].ip
        proc = run("ip", "netns", "exec", self.netns[src], "ping", "-c1", "-W1", ip, check=False)
        return proc.returncode == 0

    def tcp(self, src: str, dst: str, port: int) -> bool:
        target = f"TCP:{self.pods[dst].ip}:{port},connect-timeout=1"
        argv = ["ip", "netns", "exec", self.netns[src], "socat", "-u", "/dev/null", target]
        proc = run(*argv, check=False)
        return proc.returncode == 0

    def stop(self) -> None:
        for proc in self.listeners:
            proc.terminate()
            proc.wait(timeout=10)


@pytest.fixture
def one_node(scratch: Callable[[str], str]) -> Iterator[OneNode]:
    if shutil.which("socat") is None or shutil.which("ping") is None:
        pytest.skip("needs socat and ping")
    lab = OneNode(scratch("node"))
    run("ip", "-n", lab.node, "link", "set", "lo", "up")
    # Only inside the scratch node namespace: routes pod to pod like a Calico node.
    run("ip", "netns", "exec", lab.node, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    for i, (ns, name, ports) in enumerate(
        [
            ("x", "a", ()),
            ("x", "b", (NamedPort("http", 80, "TCP"),)),
            ("y", "c", ()),
        ]
    ):
        info = PodInfo(ns, name, f"10.244.1.{i + 2}", "n1", {"pod": name}, ports, f"cali{name}{i}")
        lab.add_pod(scratch, info, i + 1)
    lab.listen("b", 80)
    lab.listen("b", 81)
    try:
        yield lab
    finally:
        lab.stop()


def reachability(lab: OneNode) -> dict[str, bool]:
    return {
        "a->b": lab.ping("a", "b"),
        "b->a": lab.ping("b", "a"),
        "c->b": lab.ping("c", "b"),
        "a->c": lab.ping("a", "c"),
    }


def apply(lab: OneNode, policies: Sequence[NetworkPolicy], tmp: Path) -> NodeRuleset:
    rs = compile_node("n1", policies, NAMESPACES, list(lab.pods.values()))
    nft(lab.node, rs.text, tmp)
    return rs


def test_packet_walk(one_node: OneNode, tmp_path: Path) -> None:
    lab = one_node
    # No policy: everything flows (through the profiles).
    apply(lab, [], tmp_path)
    assert reachability(lab) == {"a->b": True, "b->a": True, "c->b": True, "a->c": True}
    assert lab.tcp("a", "b", 80)

    # Default deny ingress for x: nothing reaches a or b; c (namespace y) is not isolated, and
    # the replies to a's ping to c pass (conntrack) although a accepts no new ingress.
    deny = make_policy("deny")
    apply(lab, [deny], tmp_path)
    assert reachability(lab) == {"a->b": False, "b->a": False, "c->b": False, "a->c": True}

    # Allow from pod a to b's named port http (TCP 80) only: not ICMP, not 81, not from c.
    allow = make_policy(
        "allow-a-http",
        podSelector={"matchLabels": {"pod": "b"}},
        ingress=[
            {"from": [{"podSelector": {"matchLabels": {"pod": "a"}}}], "ports": [{"port": "http"}]}
        ],
    )
    apply(lab, [deny, allow], tmp_path)
    assert lab.tcp("a", "b", 80)
    assert not lab.tcp("a", "b", 81)
    assert not lab.tcp("c", "b", 80)  # pod selector confined to x
    assert not lab.ping("a", "b")

    # Egress deny on a, ingress to b open: a same-node pair is checked at both ends.
    egress_deny = make_policy(
        "a-no-egress", podSelector={"matchLabels": {"pod": "a"}}, policyTypes=["Egress"]
    )
    apply(lab, [egress_deny], tmp_path)
    assert reachability(lab) == {"a->b": False, "b->a": True, "c->b": True, "a->c": False}

    # Teardown: back to open.
    nft(lab.node, teardown_text(), tmp_path)
    assert kernel_table(lab.node) is None
    assert lab.ping("a", "b")
