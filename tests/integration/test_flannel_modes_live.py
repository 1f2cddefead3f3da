"""The live control plane in every flannel mode: a node that dies and comes back (`labctl node
stop|start`), the backend switched in place (`labctl config set backend`) and the agents
restarted (`labctl restart agents`), with verify's wire checks after each change.

One lab per mode on default.yaml (three nodes, lease TTL 4 s), shared by its two tests
(module scope: pytest runs both against one lab, then takes it down and brings up the next).
flannel-vxlan's whole story (etcd frozen and killed, vxlan -> host-gw with the MTU notes and
the leftover flannel.1) is test_control_plane.py's; join and leave are test_node_membership.py's.

The switches offered in place are between the backends whose device every node already has
(SWITCHABLE in controlplane/dynamics.py): vxlan -> vxlan-directrouting keeps flannel.1 in use
and the pods' MTU right, so verify passes with no leftover; vxlan-directrouting -> host-gw
leaves flannel.1 behind, as flanneld does, and verify names it on each node. host-gw, udp and
ipip labs have no flannel.1 (and the lab's agents do not make flannel0 or flannel.ipip): the
switch is refused (exit 2), with the reason, nothing changes, and `restart agents` brings the
agents back in the backend they have.

flannel-udp programs no per-peer kernel route (one route into flannel0): the peers are in
each node's proxy table, which the agent rewrites from the leases (SIGHUP), as flanneld's udp
backend sets and deletes its proxy's routes.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator

import pytest

from labctl import state
from labctl.controlplane.agent import read_status
from labctl.nsutil import nsenter_argv

from .conftest import labctl, labctl_json, run_name

pytestmark = pytest.mark.root

TTL = 4
MASTER, NODE1, NODE2 = "10.244.0.0/24", "10.244.1.0/24", "10.244.2.0/24"
OTHERS = ("master", "node1")  # the nodes that watch node2 die

#: mode -> (lab, backend to switch to, whether the switch is offered in place)
CASES = {
    "flannel-vxlan": ("fm-vx", "vxlan-directrouting", True),
    "flannel-vxlan-directrouting": ("fm-dr", "host-gw", True),
    "flannel-host-gw": ("fm-gw", "vxlan", False),
    "flannel-udp": ("fm-udp", "host-gw", False),
    "flannel-ipip": ("fm-ipip", "host-gw", False),
}


@pytest.fixture(scope="module", params=list(CASES))
def live(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    mode = request.param
    lab = CASES[mode][0]
    labctl("down", "-n", lab, check=False)
    os.environ["LABCTL_LEASE_TTL"] = str(TTL)
    try:
        labctl("up", mode, "-n", lab)
    finally:
        del os.environ["LABCTL_LEASE_TTL"]
    yield mode, lab
    labctl("down", "-n", lab, check=False)


def _routes(lab: str, node: str) -> str:
    pid = state.load(run_name(lab)).namespaces[node].pid
    argv = nsenter_argv(pid, ["ip", "route"], mount=False)
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def _routed(lab: str, node: str, cidr: str) -> bool:
    """A route into `cidr` on `node` (udp: one route into flannel0 for the whole network)."""
    return any(line.startswith(cidr) for line in _routes(lab, node).splitlines())


def _peers(lab: str, node: str) -> list[str]:
    """The subnets `node`'s agent last reported programmed."""
    return list(read_status(state.lab_dir(run_name(lab)))[node]["peers"])


def _leases(lab: str) -> str:
    argv = ["nsenter", f"--net=/run/netns/labctl-{run_name(lab)}", "etcdctl", "get"]
    argv += ["--prefix", "--keys-only", "/coreos.com/network/subnets"]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def _wait(what: str, cond: object, timeout: float) -> float:
    started = time.monotonic()
    while not cond():  # type: ignore[operator]
        assert time.monotonic() - started < timeout, f"timed out waiting for {what}"
        time.sleep(0.1)
    return time.monotonic() - started


def _proxy_table(lab: str, node: str) -> list[str]:
    """The subnets in flannel-udp's proxy table on `node`."""
    path = state.lab_dir(run_name(lab)) / "daemons" / f"{node}-udpproxy.json"
    return [r["subnet"] for r in json.loads(path.read_text())["routes"]]


def _programmed(lab: str, mode: str, node: str, cidr: str) -> tuple[bool, bool]:
    """Whether `node` has the peer owning `cidr` in its agent's report, and in its kernel's
    routes (flannel-udp: its proxy's table)."""
    if mode == "flannel-udp":
        datapath = cidr in _proxy_table(lab, node)
    else:
        datapath = _routed(lab, node, cidr)
    return cidr in _peers(lab, node), datapath


def _has(lab: str, mode: str, node: str, cidr: str) -> bool:
    return _programmed(lab, mode, node, cidr) == (True, True)


def _dropped(lab: str, mode: str, node: str, cidr: str) -> bool:
    return _programmed(lab, mode, node, cidr) == (False, False)


def _verify(lab: str, check: bool | int = True) -> dict:
    report = labctl_json("verify", "-n", lab, check=check)
    wire = [c for c in report["checks"] if c["name"].startswith("wire ") and "->" in c["name"]]
    assert wire, [c["name"] for c in report["checks"]]  # the wire was checked, not only pings
    return report


def test_dead_node_is_dropped_after_the_ttl_and_comes_back(live: tuple[str, str]) -> None:
    mode, lab = live
    assert all(_has(lab, mode, n, NODE2) for n in OTHERS)
    t0 = time.monotonic()
    labctl("node", "stop", "-n", lab, "node2")
    # The lease expires (no renewal from the frozen agent), then the others drop node2: the
    # expiry, not the verb, is what removes it (no lower time bound: a renewal that a loaded
    # machine delayed lets the lease expire sooner after the freeze).
    _wait("node2's lease to expire", lambda: "10.244.2.0-24" not in _leases(lab), 3 * TTL)
    _wait("the others to drop node2", lambda: all(_dropped(lab, mode, n, NODE2) for n in OTHERS), 5)
    assert time.monotonic() - t0 <= 3 * TTL
    # Negative: the check sees a live peer; node1 is still everywhere, node2 still has both.
    assert _has(lab, mode, "master", NODE1) and _has(lab, mode, "node2", NODE1)
    assert _has(lab, mode, "node2", MASTER)
    labctl("node", "start", "-n", lab, "node2")
    _wait("node2 back on every node", lambda: all(_has(lab, mode, n, NODE2) for n in OTHERS), 10)
    report = _verify(lab)
    assert report["passed"], [c for c in report["checks"] if not c["passed"]]
    assert not any("stopped" in n for n in report["notes"]), report["notes"]


def test_backend_switch_in_place(live: tuple[str, str]) -> None:
    mode, lab = live
    _, backend, offered = CASES[mode]
    target = f"flannel-{backend}"
    if not offered:
        plan = (state.lab_dir(run_name(lab)) / "plan.json").read_bytes()
        proc = labctl("config", "set", "-n", lab, "backend", backend, check=2)
        assert f"up a new lab in {target}" in proc.stderr, proc.stderr
        assert labctl_json("status", "-n", lab)["mode"] == mode
        assert (state.lab_dir(run_name(lab)) / "plan.json").read_bytes() == plan
        value = _etcd_config(lab)
        assert value["Backend"]["Type"] == mode.removeprefix("flannel-"), value
        # The agents restart in the backend they have and program every peer again.
        _restart_agents(lab)
        for node, peers in (("master", (NODE1, NODE2)), ("node1", (MASTER, NODE2))):
            assert all(_has(lab, mode, node, cidr) for cidr in peers), node
        return
    reply = labctl_json("config", "set", "-n", lab, "backend", backend)
    assert (reply["from"], reply["to"]) == (mode, target)
    conf = _etcd_config(lab)["Backend"]
    assert (conf["Type"], conf.get("DirectRouting", False)) == (
        backend.removesuffix("-directrouting"),
        backend.endswith("-directrouting"),
    ), conf
    # The documented sequence: config set backend, then restart agents (set already did;
    # again is harmless and must leave the new backend in place).
    _restart_agents(lab)
    # Same segment: both new backends route node2's pods straight at its address.
    assert f"{NODE2} via 10.0.0.33 dev eth0" in _routes(lab, "master")
    report = _verify(lab, check=False)
    bad = [c for c in report["checks"] if not c["passed"]]
    leftover = [n for n in report["notes"] if "left over" in n]
    if target == "flannel-host-gw":
        # Pods made before the switch keep the vxlan MTU (as running pods do): verify says so
        # and nothing else; flannel.1 stays on every node, as flanneld leaves it.
        assert bad and all(c["name"].startswith("mtu ") for c in bad), bad
        assert sorted(n.split(":")[0] for n in leftover) == ["master", "node1", "node2"]
        assert all("flannel.1 is left over" in n for n in leftover), leftover
        wire = [
            c["detail"]
            for c in report["checks"]
            if c["name"].startswith("wire ") and "->" in c["name"]
        ]
        assert all("bare" in d for d in wire), wire
    else:
        # flannel.1 is still the path for peers off the segment: nothing is left over.
        assert not bad and not leftover, (bad, leftover)
        assert "flannel.1" in _links(lab, "node1")


def _restart_agents(lab: str) -> None:
    """`labctl restart agents`: every agent is a new process and has converged again."""
    agents = [f"{n}:flannel-agent" for n in ("master", "node1", "node2")]
    before = labctl_json("status", "-n", lab)["processes"]
    reply = labctl_json("restart", "-n", lab, "agents")
    assert reply["restarted"] is True, reply
    after = labctl_json("status", "-n", lab)["processes"]
    assert all(after[a] != before[a] for a in agents), (before, after)


def _etcd_config(lab: str) -> dict:
    argv = ["nsenter", f"--net=/run/netns/labctl-{run_name(lab)}", "etcdctl", "get"]
    argv += ["--print-value-only", "/coreos.com/network/config"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    value: dict = json.loads(out)
    return value


def _links(lab: str, node: str) -> str:
    pid = state.load(run_name(lab)).namespaces[node].pid
    argv = nsenter_argv(pid, ["ip", "link"], mount=False)
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout
