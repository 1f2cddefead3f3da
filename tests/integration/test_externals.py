"""Integration: hosts outside the cluster and flannel's ipMasq on a real lab.

One flannel-vxlan lab on topologies/services.yaml for the whole module (always torn down):
a laptop on the nodes' segment, an "internet" host behind router r1, which has no route to
the pod network. What arrives at a host is read with tcpdump inside it (`labctl exec`).
"""

from __future__ import annotations

import os
import select
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from labctl.engine import EngineError, apply_netfilter
from labctl.nsutil import nsenter_argv

from .conftest import cli_argv, labctl, labctl_json

LAB = "ext"
NODE1_IP = "10.0.0.32"
WEB2 = "default/web-2"  # on node1
WEB2_IP = "10.244.1.2"
WEB3 = "default/web-3"  # on node2
WEB3_IP = "10.244.2.2"
LAPTOP_IP = "10.0.0.100"
INTERNET_IP = "192.168.100.10"
ECHO = "icmp[icmptype] == icmp-echo"
MASQ_RULE = [
    "-s", "10.244.0.0/16", "!", "-d", "224.0.0.0/4",
    "-m", "comment", "--comment", "flanneld masq", "-j", "MASQUERADE", "--random-fully",
]  # fmt: skip


def flannel_lines(lease: str) -> list[str]:
    """Reference section 9's rules for a node with `lease`, as iptables-save prints them."""
    c, m, f = "10.244.0.0/16", '-m comment --comment "flanneld masq"', "flanneld forward"
    return [
        ":FLANNEL-FWD - [0:0]",
        f'-A FORWARD -m comment --comment "{f}" -j FLANNEL-FWD',
        f'-A FLANNEL-FWD -s {c} -m comment --comment "{f}" -j ACCEPT',
        f'-A FLANNEL-FWD -d {c} -m comment --comment "{f}" -j ACCEPT',
        ":FLANNEL-POSTRTG - [0:0]",
        f"-A POSTROUTING {m} -j FLANNEL-POSTRTG",
        f"-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 {m} -j RETURN",
        f"-A FLANNEL-POSTRTG -s {lease} -d {c} {m} -j RETURN",
        f"-A FLANNEL-POSTRTG -s {c} -d {lease} {m} -j RETURN",
        f"-A FLANNEL-POSTRTG ! -s {c} -d {lease} {m} -j RETURN",
        f"-A FLANNEL-POSTRTG -s {c} ! -d 224.0.0.0/4 {m} -j MASQUERADE --random-fully",
        f"-A FLANNEL-POSTRTG ! -s {c} -d {c} {m} -j MASQUERADE --random-fully",
    ]


@pytest.fixture(scope="module")
def services_lab() -> Iterator[str]:
    try:
        labctl("up", "flannel-vxlan", "-t", "services", "-n", LAB)
        yield LAB
    finally:
        labctl("down", "-n", LAB, check=False)


def run_in(target: str, *argv: str, check: bool | int = True) -> subprocess.CompletedProcess[str]:
    return labctl("exec", "-n", LAB, target, "--", *argv, check=check)


def ping(src: str, dst: str) -> int:
    """Exit code of one ping from `src` to `dst` (0: answered)."""
    return run_in(src, "ping", "-c", "1", "-W", "2", dst, check=False).returncode


def flannel_rules(node: str) -> list[str]:
    save = run_in(node, "iptables-save").stdout
    return [line for line in save.splitlines() if "FLANNEL" in line]


@contextmanager
def arriving(target: str, bpf: str = ECHO) -> Iterator[list[str]]:
    """Capture the first packet matching `bpf` on `target`'s eth0 while the body runs; the
    yielded list holds tcpdump's line for it afterwards (empty if none came)."""
    argv = ["timeout", "10", "tcpdump", "-n", "-l", "-c", "1", "-i", "eth0", bpf]
    cmd = cli_argv("exec", "-n", LAB, target, "--", *argv)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    lines: list[str] = []
    try:
        # Only once tcpdump says it listens is the first packet sure to be seen.
        said, deadline = b"", time.monotonic() + 10
        while b"listening on" not in said:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([proc.stderr], [], [], max(left, 0))
            chunk = os.read(proc.stderr.fileno(), 4096) if ready else b""
            assert chunk, f"tcpdump in {target} did not start: {said.decode()}"
            said += chunk
        yield lines
        out, _ = proc.communicate(timeout=15)
        lines += out.decode().splitlines()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def sources(lines: list[str]) -> list[str]:
    """Source addresses of tcpdump -n lines ("... IP 10.0.0.32 > 192.168.100.10: ICMP ...")."""
    return [line.split(" IP ", 1)[1].split(" > ", 1)[0] for line in lines if " IP " in line]


# ---------------------------------------------------------------- externals in the lab


def test_status_lists_externals(services_lab: str) -> None:
    doc = labctl_json("status", "-n", services_lab)
    assert doc["externals"] == [
        {"name": "laptop", "ip": LAPTOP_IP, "segment": "lan1", "gateway": "10.0.0.1"},
        {"name": "internet", "ip": INTERNET_IP, "segment": "wan", "gateway": "192.168.100.1"},
    ]
    # Nodes now route through r1, the router on their segment.
    assert {n["name"]: n["gateway"] for n in doc["nodes"]} == {
        "master": "10.0.0.1",
        "node1": "10.0.0.1",
        "node2": "10.0.0.1",
    }
    table = labctl("status", "-n", services_lab).stdout
    assert "laptop (external)" in table and INTERNET_IP in table


def test_exec_in_externals(services_lab: str) -> None:
    assert f"inet {LAPTOP_IP}/24" in run_in("laptop", "ip", "-4", "-o", "addr", "show").stdout
    routes = run_in("internet", "ip", "route").stdout.splitlines()
    assert "default via 192.168.100.1 dev eth0" in [r.strip() for r in routes]
    # The laptop reaches internet through r1: the lab's underlay routing works end to end.
    assert ping("laptop", INTERNET_IP) == 0


def test_verify_still_passes(services_lab: str) -> None:
    report = labctl_json("verify", "-n", services_lab)
    nat = {c["name"]: c for c in report["checks"] if c["name"].startswith("outgoing nat")}
    # One per node (its first pod) and external host, each seen from the node's address.
    assert len(nat) == 6 and all(c["passed"] for c in nat.values()), nat
    assert (
        "arrived from 10.0.0.32, node1's address" in nat[f"outgoing nat {WEB2} -> laptop"]["detail"]
    )


# ---------------------------------------------------------------- flannel's ipMasq


@pytest.mark.parametrize(
    ("node", "lease"),
    [("master", "10.244.0.0/24"), ("node1", "10.244.1.0/24"), ("node2", "10.244.2.0/24")],
)
def test_iptables_save_shows_flannels_chains(services_lab: str, node: str, lease: str) -> None:
    assert flannel_rules(node) == flannel_lines(lease)


def test_pod_to_internet_leaves_with_the_node_ip(services_lab: str) -> None:
    with arriving("internet") as seen:
        assert ping(WEB2, INTERNET_IP) == 0
    assert sources(seen) == [NODE1_IP], seen


def test_pod_to_laptop_leaves_with_the_node_ip(services_lab: str) -> None:
    with arriving("laptop") as seen:
        assert ping(WEB2, LAPTOP_IP) == 0
    assert sources(seen) == [NODE1_IP], seen


def test_pod_to_pod_keeps_the_pod_ip(services_lab: str) -> None:
    with arriving(WEB3) as seen:
        assert ping(WEB2, WEB3_IP) == 0
    assert sources(seen) == [WEB2_IP], seen


def test_without_the_masquerade_rule_the_pod_ip_leaks(services_lab: str) -> None:
    run_in("node1", "iptables", "-t", "nat", "-D", "FLANNEL-POSTRTG", *MASQ_RULE)
    try:
        with arriving("laptop") as seen:
            # The laptop answers the pod's own address via its gateway r1, which has no
            # route to the pod network: the reply never comes back.
            assert ping(WEB2, LAPTOP_IP) == 1
        assert sources(seen) == [WEB2_IP], seen
        # Behind r1 the same: internet's reply to 10.244.1.2 dies at r1.
        assert ping(WEB2, INTERNET_IP) == 1
        # verify's check notices (the laptop saw the pod IP; internet's answer never came).
        report = labctl_json("verify", "-n", services_lab, check=1)
        bad = {c["name"]: c["detail"] for c in report["checks"] if not c["passed"]}
        assert set(bad) == {f"outgoing nat {WEB2} -> laptop", f"outgoing nat {WEB2} -> internet"}
        assert "no answer" in bad[f"outgoing nat {WEB2} -> internet"]
    finally:
        run_in("node1", "iptables", "-t", "nat", "-I", "FLANNEL-POSTRTG", "5", *MASQ_RULE)
    assert flannel_rules("node1") == flannel_lines("10.244.1.0/24")
    assert ping(WEB2, INTERNET_IP) == 0


# ---------------------------------------------------------------- the engine, no lab


NAT = "*nat\n:FLANNEL-POSTRTG - [0:0]\n-A POSTROUTING -j FLANNEL-POSTRTG\nCOMMIT\n"
FILTER = "*filter\n:FLANNEL-FWD - [0:0]\n-A FORWARD -j FLANNEL-FWD\nCOMMIT\n"


def test_refused_rules_change_nothing() -> None:
    # A scratch network namespace of our own, held by a sleeping process.
    holder = subprocess.Popen(["unshare", "--net", "sleep", "60"])
    try:
        time.sleep(0.2)

        def save() -> str:
            argv = nsenter_argv(holder.pid, ["iptables-save"], mount=False)
            return subprocess.run(argv, capture_output=True, text=True, check=True).stdout

        bad = NAT + FILTER.replace("-j FLANNEL-FWD", "-j NO-SUCH-CHAIN")
        # iptables-nft commits nat before it reads the bad filter line: the engine undoes it.
        with pytest.raises(EngineError) as info:
            apply_netfilter("node9", holder.pid, bad)
        msg = str(info.value)
        assert msg.startswith("node9: iptables-restore refused the netfilter rules: "), msg
        assert "Chain 'NO-SUCH-CHAIN' does not exist" in msg and "\n" not in msg
        assert "FLANNEL" not in save()

        apply_netfilter("node9", holder.pid, NAT + FILTER)
        before = [line for line in save().splitlines() if line.startswith(("-A", ":FLANNEL"))]
        assert len(before) == 4
        # Refused on top of loaded rules: what was there stays, nothing is added.
        extra = NAT.replace("FLANNEL-POSTRTG", "X-POST") + FILTER.replace("-j ", "-j NOPE-")
        with pytest.raises(EngineError):
            apply_netfilter("node9", holder.pid, extra)
        after = [line for line in save().splitlines() if line.startswith(("-A", ":FLANNEL"))]
        assert after == before
    finally:
        holder.kill()
        holder.wait()
