"""The TC-BPF IPIP datapath in every IPIP mode, on real labs: pods talk across nodes, the wire
is IP protocol 4 between node IPs (labctl verify captures and checks it), the pod MTU holds,
the programs sit where the docs say, a node without its egress program fails verify, and
`down` leaves nothing behind. One lab per mode, shared by the tests of that mode."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator

import pytest

from labctl.features import resolve_datapath
from tests.integration.conftest import labctl, labctl_json

# mode -> (topology, a node, the tunnel device)
# Every IPIP mode verifies on the BPF path (the default here) in test_matrix.py; this lab
# looks at the programs themselves, their negative, and what down leaves.
MODES = {
    "calico-ipip": ("default", "node1", "tunl0"),
}


def _bpf_usable() -> bool:
    try:
        return resolve_datapath("ipip", "bpf")[0] == "bpf"
    except Exception:
        return False


pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not _bpf_usable(), reason="needs root, clang, tc and bpftool"
)


def _sh(lab: str, target: str, *argv: str) -> str:
    return labctl("exec", "-n", lab, target, "--", *argv).stdout


def _first_prog(tc_json: str) -> dict | None:
    """The BPF program ({name, id, ...}) in `tc -j filter show` output, or None."""
    for f in json.loads(tc_json or "[]"):
        prog = f.get("options", {}).get("prog")
        if prog:
            return dict(prog)
    return None


def _prog(lab: str, node: str, dev: str, hook: str) -> dict | None:
    """The BPF program tc shows on `dev` `hook` of `node`, or None."""
    return _first_prog(_sh(lab, node, "tc", "-j", "filter", "show", "dev", dev, hook))


def _bpffs() -> list[str]:
    return sorted(os.listdir("/sys/fs/bpf")) if os.path.isdir("/sys/fs/bpf") else []


@pytest.fixture(scope="module", params=list(MODES))
def bpf_lab(request: pytest.FixtureRequest) -> Iterator[tuple[str, str, dict]]:
    mode = request.param
    name = f"bpf-{mode.replace('calico-', 'c').replace('flannel-', 'f')}"[:20]
    host_qdiscs = subprocess.run(["tc", "qdisc", "show"], capture_output=True, text=True).stdout
    bpffs = _bpffs()
    up = labctl_json("up", mode, "-t", MODES[mode][0], "-n", name, "--datapath", "bpf")
    try:
        yield mode, name, up
    finally:
        labctl("down", "-n", name, check=False)
    # down leaves nothing: no programs, maps or pins, and the host's qdiscs untouched.
    ids = up.get("_progs", [])
    for prog_id in ids:
        gone = subprocess.run(["bpftool", "prog", "show", "id", str(prog_id)], capture_output=True)
        assert gone.returncode != 0, f"BPF program {prog_id} outlived lab {name}"
    assert _bpffs() == bpffs
    assert subprocess.run(["tc", "qdisc", "show"], capture_output=True, text=True).stdout.count(
        "clsact"
    ) == host_qdiscs.count("clsact")


def test_bpf_datapath_verifies(bpf_lab: tuple[str, str, dict]) -> None:
    mode, name, up = bpf_lab
    _, _, dev = MODES[mode]
    assert up["datapath"] == "bpf"
    assert any("BPF IPIP datapath" in n for n in up["notes"])
    status = labctl_json("status", "-n", name)
    assert status["datapath"] == "bpf"
    human = labctl("status", "-n", name).stdout
    assert "datapath bpf" in human
    report = labctl_json("verify", "-n", name)
    assert report["passed"], [c for c in report["checks"] if not c["passed"]]
    wire = [c for c in report["checks"] if c["name"].startswith("wire ") and "->" in c["name"]]
    assert wire and all(
        "IPIP (IP protocol 4)" in c["detail"] for c in wire if "bare" not in c["detail"]
    )
    assert any(c["name"].startswith("mtu ") and c["passed"] for c in report["checks"])
    for node in status["nodes"]:
        # One exec per node: tc's view of both hooks, then the device.
        script = (
            f"tc -j filter show dev {dev} egress; echo '#--'; tc -j filter show dev eth0 "
            f"ingress; echo '#--'; ip -d link show {dev}"
        )
        encap_json, decap_json, link = _sh(name, node["name"], "sh", "-c", script).split("#--", 2)
        encap, decap = _first_prog(encap_json), _first_prog(decap_json)
        assert encap and encap["name"] == "ipip_encap", (node, encap)
        assert decap and decap["name"] == "ipip_decap", (node, decap)
        up.setdefault("_progs", []).extend([encap["id"], decap["id"]])
        # The real name, a TUN underneath that has carrier (held by the loader).
        assert f"{dev}:" in link and "tun type tun" in link and "NO-CARRIER" not in link


def test_without_egress_program_verify_fails(bpf_lab: tuple[str, str, dict]) -> None:
    """Negative: take the encap program off one node: its pods lose the other nodes; the
    supervisor's restarted loader puts it back."""
    mode, name, up = bpf_lab
    if mode != "calico-ipip":
        pytest.skip("one negative is enough: shown on calico-ipip")
    _, node, dev = MODES[mode]
    assert node is not None
    _sh(name, node, "tc", "filter", "del", "dev", dev, "egress")
    proc = labctl("verify", "-n", name, "-o", "json", check=False)
    report = json.loads(proc.stdout)
    assert proc.returncode != 0 and not report["passed"]
    failed = {c["name"] for c in report["checks"] if not c["passed"]}
    assert any(node in f for f in failed), failed
    # Restarting the node's loader re-attaches the program; verify passes again.
    pid = labctl_json("status", "-n", name)["processes"][f"{node}:ipip-bpf"]
    subprocess.run(["kill", "-9", str(pid)], check=True)
    deadline = time.monotonic() + 15
    while _prog(name, node, dev, "egress") is None and time.monotonic() < deadline:
        time.sleep(0.2)
    prog = _prog(name, node, dev, "egress")
    assert prog is not None
    up.setdefault("_progs", []).append(prog["id"])
    assert labctl_json("verify", "-n", name)["passed"]
