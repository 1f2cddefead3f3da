"""The live control plane of a flannel lab: etcd leases, node agents, a node frozen and
thawed, etcd frozen and killed, an agent killed, the backend switched in place, and down.

One flannel-vxlan lab (default.yaml, lease TTL 4 s) shared by the whole file; the tests run
in file order and each leaves the lab converged for the next."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from labctl import state
from labctl.controlplane.dynamics import leftovers
from labctl.nsutil import nsenter_argv

from .conftest import labctl, labctl_json, run_name
from .test_lab import assert_gone

pytestmark = pytest.mark.root

LAB = "cp-it"
TTL = 4
NODE2_PODS = "10.244.2.0/24"


@pytest.fixture(scope="module")
def lab() -> Iterator[str]:
    labctl("down", "-n", LAB, check=False)
    os.environ["LABCTL_LEASE_TTL"] = str(TTL)
    try:
        labctl("up", "flannel-vxlan", "-n", LAB)
    finally:
        del os.environ["LABCTL_LEASE_TTL"]
    yield LAB
    labctl("down", "-n", LAB, check=False)


def _in(node: str, *argv: str) -> str:
    # nsenter straight, not `labctl exec` (proved below): polling must be cheap.
    pid = state.load(run_name(LAB)).namespaces[node].pid
    return subprocess.run(nsenter_argv(pid, list(argv)), capture_output=True, text=True).stdout


def _routes(node: str) -> str:
    return _in(node, "ip", "route")


def _wait(what: str, cond: object, timeout: float = 30.0) -> float:
    """Seconds until `cond()` holds; fails after `timeout`."""
    started = time.monotonic()
    while not cond():  # type: ignore[operator]
        assert time.monotonic() - started < timeout, f"timed out waiting for {what}"
        time.sleep(0.1)
    return time.monotonic() - started


def _etcd(*args: str) -> str:
    argv = ["nsenter", f"--net=/run/netns/labctl-{run_name(LAB)}", "etcdctl", *args]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def _probe_ok() -> None:
    report = labctl_json("probe", "-n", LAB)
    bad = [(s, d) for s, row in report["matrix"].items() for d, ok in row.items() if not ok]
    assert not bad, bad


def test_etcd_holds_flannels_records(lab: str) -> None:
    dump = json.loads(
        labctl(
            "exec",
            "-n",
            LAB,
            "etcd",
            "--",
            "etcdctl",
            "get",
            "--prefix",
            "/coreos.com",
            "-w",
            "json",
        ).stdout
    )

    kvs = {base64.b64decode(k["key"]).decode(): k for k in dump["kvs"]}
    config = json.loads(base64.b64decode(kvs["/coreos.com/network/config"]["value"]))
    assert config["Network"] == "10.244.0.0/16" and config["Backend"]["Type"] == "vxlan"
    subnets = sorted(k for k in kvs if k.startswith("/coreos.com/network/subnets/"))
    assert subnets == [f"/coreos.com/network/subnets/10.244.{i}.0-24" for i in range(3)]
    value = json.loads(base64.b64decode(kvs[subnets[1]]["value"]))
    assert value["PublicIP"] == "10.0.0.32" and value["BackendType"] == "vxlan"
    assert set(value["BackendData"]) == {"VNI", "VtepMAC"}
    # Leased, with the lab's TTL; the config is not (a reservation never expires).
    assert kvs[subnets[1]]["lease"] and "lease" not in kvs["/coreos.com/network/config"]
    # Each renewal grants a fresh etcd lease (flannel's updateSubnet), so ask the live ones.
    ttls = [_etcd("lease", "timetolive", x) for x in _etcd("lease", "list").split()[3:]]
    assert any(f"granted with TTL({TTL}s)" in t for t in ttls), ttls
    # The agents, not the engine, programmed the peers, and wrote subnet.env.
    env = _in("node1", "cat", "/run/flannel/subnet.env")
    assert "FLANNEL_SUBNET=10.244.1.1/24" in env and "FLANNEL_MTU=1450" in env
    assert f"{NODE2_PODS} via 10.244.2.0 dev flannel.1 onlink" in _routes("master")


def test_stopped_node_is_dropped_and_comes_back(lab: str) -> None:
    labctl("node", "stop", "-n", LAB, "node2")
    assert any("node2 is stopped" in n for n in labctl_json("status", "-n", LAB)["notes"])
    # Lease expiry: the others remove node2's route (and its node2 still has theirs).
    gone = _wait("node2's route to vanish", lambda: NODE2_PODS not in _routes("master"))
    assert gone < 3 * TTL
    assert "10.244.0.0/24 via 10.244.0.0 dev flannel.1" in _routes("node2")
    labctl("node", "start", "-n", LAB, "node2")
    _wait("node2's route to return", lambda: NODE2_PODS in _routes("master"), 10)
    _wait("node1 too", lambda: NODE2_PODS in _routes("node1"), 10)
    assert not any("stopped" in n for n in labctl_json("status", "-n", LAB)["notes"])
    _probe_ok()


def test_node_verbs_refuse_bad_input(lab: str) -> None:
    proc = labctl("node", "stop", "-n", LAB, "nodeX", check=2)
    assert "nodeX" in proc.stderr and "master" in proc.stderr
    labctl("config", "set", "-n", LAB, "backend", "wireguard", check=2)


def test_dataplane_forwards_while_etcd_is_frozen(lab: str) -> None:
    etcd = labctl_json("status", "-n", LAB)["processes"]["etcd"]
    os.kill(etcd, signal.SIGSTOP)
    try:
        time.sleep(TTL + 1)  # every lease is past its TTL, and no agent can renew
        assert NODE2_PODS in _routes("master")  # nothing withdrew the routes
        _probe_ok()
    finally:
        os.kill(etcd, signal.SIGCONT)
    # Back: leases the frozen etcd let expire are put again by the agents' renewals.
    _wait(
        "every lease back",
        lambda: (
            _etcd("get", "--prefix", "--keys-only", "/coreos.com/network/subnets").count("-24") == 3
        ),
    )
    _wait("node2's route back", lambda: NODE2_PODS in _routes("master"))
    _probe_ok()


def test_killed_etcd_and_agent_are_restarted(lab: str) -> None:
    before = labctl_json("status", "-n", LAB)["processes"]
    os.kill(before["etcd"], signal.SIGKILL)
    os.kill(before["node1:flannel-agent"], signal.SIGKILL)
    _wait(
        "etcd and the agent restarted",
        lambda: all(
            labctl_json("status", "-n", LAB)["processes"][k] != before[k]
            for k in ("etcd", "node1:flannel-agent")
        ),
    )
    warnings = labctl_json("status", "-n", LAB)["warnings"]
    assert any(w.startswith("etcd exited with -9; restarted") for w in warnings), warnings
    # Nothing lost: etcd's data dir kept every lease, the agent re-took its own.
    keys = _etcd("get", "--prefix", "--keys-only", "/coreos.com/network/subnets")
    assert keys.count("-24") == 3
    assert NODE2_PODS in _routes("node1")
    _probe_ok()


def test_backend_switch_in_place_leaves_flannel1(lab: str) -> None:
    reply = labctl_json("config", "set", "-n", LAB, "backend", "host-gw")
    assert reply["from"] == "flannel-vxlan" and reply["to"] == "flannel-host-gw"
    assert f"{NODE2_PODS} via 10.0.0.33 dev eth0" in _routes("master")
    value = _etcd("get", "--print-value-only", "/coreos.com/network/subnets/10.244.1.0-24")
    assert json.loads(value) == {
        "PublicIP": "10.0.0.32",
        "PublicIPv6": None,
        "BackendType": "host-gw",
    }
    env = _in("node1", "cat", "/run/flannel/subnet.env")
    assert "FLANNEL_MTU=1500" in env
    # Pods made before the switch keep their 1450-byte MTU, as real running pods do; verify
    # says so (host-gw's pod MTU is the underlay's). Everything else passes.
    report = labctl_json("verify", "-n", LAB, check=1)
    bad = [c for c in report["checks"] if not c["passed"]]
    assert bad and all(c["name"].startswith("mtu ") for c in bad), bad
    assert all("1500" in c["detail"] for c in bad), bad
    wire = [
        c["detail"] for c in report["checks"] if c["name"].startswith("wire ") and "->" in c["name"]
    ]
    assert wire and all("bare" in d for d in wire), wire
    assert sum("flannel.1 is left over" in n for n in report["notes"]) == 3
    assert "flannel.1" in _in("node1", "ip", "link")
    # Negative: deleting the leftover makes verify's note on it go (asked in-process: a
    # second verify would only cost time).
    _in("node1", "ip", "link", "del", "flannel.1")
    st = state.load(run_name(LAB))
    pids = {n: r.pid for n, r in st.namespaces.items()}
    notes = leftovers(state.read_plan(run_name(LAB)), pids, st.mode)
    assert [n.split(":")[0] for n in notes] == ["master", "node2"]


def test_down_leaves_nothing(lab: str) -> None:
    etcd = labctl_json("status", "-n", LAB)["processes"]["etcd"]
    labctl("down", "-n", LAB)
    assert_gone(LAB)
    assert subprocess.run(["kill", "-0", str(etcd)], capture_output=True).returncode != 0
