"""Services on real labs (root): the seed's damo.yml applies unmodified in every mode and
answers from both replicas through its ClusterIP, its externalIP and a NodePort; pods reach
the outside masqueraded; verify's service checks pass in both kube-proxy modes and fail when
a node's rules are tampered with; NetworkPolicy acts on the backend after DNAT.

The full verify runs in two labs (nftables and iptables); damo in every mode is part of
test_matrix.py, which shares one lab per mode."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import labctl, labctl_json

pytestmark = pytest.mark.root

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "services"
DAMO = (EXAMPLES / "damo.yml").read_text()


def cluster_ip(lab: str, name: str) -> str:
    items = labctl_json("get", "svc", "-n", lab)["items"]
    return str(next(i for i in items if i["metadata"]["name"] == name)["spec"]["clusterIP"])


def answers(lab: str, src: str, url: str, tries: int = 12) -> set[str]:
    """Who answered `tries` curls from `src` (first body line), '' for no answer."""
    # One exec for all tries; each prints "=<first body line>" ("=" when nothing answered).
    loop = f'for i in $(seq {tries}); do echo "=$(curl -s -m 2 {url} | head -1)"; done'
    proc = labctl("exec", "-n", lab, src, "--", "sh", "-c", loop, check=False)
    return {line[1:] for line in proc.stdout.splitlines() if line.startswith("=")}


@pytest.fixture(scope="module", params=[("flannel-vxlan", "nftables"), ("calico-bgp", "iptables")])
def svc_lab(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    mode, proxy = request.param
    lab = f"svc-{proxy}"
    labctl("down", "-n", lab, check=False)
    labctl("up", mode, "-t", "services", "-n", lab, "--proxy-mode", proxy)
    labctl("apply", "-n", lab, "-f", str(EXAMPLES))
    try:
        yield lab, proxy
    finally:
        labctl("down", "-n", lab, check=False)


def service_results(lab: str, check: bool | int = True) -> dict[str, dict]:
    report = labctl_json("verify", "-n", lab, "--no-mtu", check=check)
    return {c["name"]: c for c in report["checks"] if c["name"].startswith("service")}


def test_verify_checks_every_service_path(svc_lab: tuple[str, str]) -> None:
    lab, proxy = svc_lab
    checks = service_results(lab)
    assert all(c["passed"] for c in checks.values()), checks
    names = " ".join(checks)
    for part in ("cluster IP", "nodePort 30080 from laptop", "nodePort 30081 from internet",
                 "externalIP 203.0.113.10 from laptop", "service traffic on the wire"):  # fmt: skip
        assert part in names
    local = checks["service default/myapp-local:8080/TCP nodePort 30081 from laptop"]["detail"]
    assert "client IP kept" in local
    # The rules a student reads are kube-proxy's own.
    if proxy == "iptables":
        text = labctl("exec", "-n", lab, "node1", "--", "iptables-save", "-t", "nat").stdout
        assert "-A KUBE-SERVICES" in text and "--probability 0.50000000000" in text
    else:
        argv = ["nft", "list", "table", "ip", "kube-proxy"]
        text = labctl("exec", "-n", lab, "node1", "--", *argv).stdout
        assert "map service-ips" in text and "numgen random mod 2" in text


def test_a_node_without_its_service_rules_fails_verify(svc_lab: tuple[str, str]) -> None:
    lab, proxy = svc_lab
    if proxy == "iptables":
        tamper = ["iptables", "-t", "nat", "-F", "KUBE-SERVICES"]
    else:
        tamper = ["nft", "flush", "map", "ip", "kube-proxy", "service-ips"]
    labctl("exec", "-n", lab, "node2", "--", *tamper)
    try:
        checks = service_results(lab, check=1)
        bad = {n: c["detail"] for n, c in checks.items() if not c["passed"]}
        cluster = next(d for n, d in bad.items() if "myservice:80/TCP cluster IP" in n)
        assert "default/web-3: no answer" in cluster  # web-3 runs on node2
    finally:
        labctl("apply", "-n", lab, "-f", str(EXAMPLES))  # kube-proxy's resync puts them back
    ip = cluster_ip(lab, "myservice")
    assert "" not in answers(lab, "default/web-3", f"http://{ip}/", tries=4)


def test_policy_applies_to_the_backend_after_dnat(svc_lab: tuple[str, str]) -> None:
    lab, proxy = svc_lab
    if proxy == "nftables":
        pytest.skip("flannel does not enforce NetworkPolicy; calico-bgp lab covers this")
    deny = (
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"
        "metadata: {name: myapp-from-test}\n"
        "spec:\n  podSelector: {matchLabels: {app: myapp}}\n"
        "  ingress: [{from: [{namespaceSelector: {matchLabels: {project: test}}}]}]\n"
    )
    labctl("apply", "-n", lab, "-f", "-", stdin=deny)
    try:
        ip = cluster_ip(lab, "myservice")
        assert answers(lab, "default/web-1", f"http://{ip}/", tries=3) == {""}
        assert "" not in answers(lab, "test/db-1", f"http://{ip}/", tries=3)
        # verify expects exactly that: the ClusterIP check still passes.
        checks = service_results(lab)
        assert checks["service default/myservice:80/TCP cluster IP " + ip]["passed"]
    finally:
        labctl("delete", "-n", lab, "-f", "-", stdin=deny)


def test_ipvs_is_refused_where_the_kernel_lacks_it() -> None:
    if Path("/proc/net/ip_vs").exists():
        pytest.skip("this kernel has IPVS")
    proc = labctl("up", "flannel-vxlan", "-n", "svc-ipvs", "--proxy-mode", "ipvs", check=3)
    assert "IPVS" in proc.stderr and "--proxy-mode" in proc.stderr


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("type: NodePort, ports: [{port: 80, nodePort: 30080}]", "already allocated"),
        ("type: NodePort, ports: [{port: 80, nodePort: 40000}]", "nodePort"),
        ("clusterIP: 10.200.0.1, ports: [{port: 80}]", "valid range"),
        ("ports: [{port: 70000}]", "port"),
    ],
)
def test_bad_services_are_refused_and_change_nothing(
    svc_lab: tuple[str, str], spec: str, message: str
) -> None:
    lab, _ = svc_lab
    before = labctl_json("get", "svc", "-n", lab)["items"]
    doc = f"apiVersion: v1\nkind: Service\nmetadata: {{name: bad}}\nspec: {{{spec}}}\n"
    proc = labctl("apply", "-n", lab, "-f", "-", stdin=doc, check=2)
    assert message in proc.stderr
    assert labctl_json("get", "svc", "-n", lab)["items"] == before


STICKY = """\
apiVersion: v1
kind: Service
metadata: {name: sticky}
spec: {selector: {app: myapp}, sessionAffinity: ClientIP, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: local-only}
spec: {selector: {app: myapp}, internalTrafficPolicy: Local, ports: [{port: 80}]}
"""


def test_client_ip_affinity_and_internal_local(svc_lab: tuple[str, str]) -> None:
    lab, _ = svc_lab
    labctl("apply", "-n", lab, "-f", "-", stdin=STICKY)
    try:
        pods = labctl_json("get", "pods", "-n", lab)["items"]
        by_node = {
            i["spec"]["nodeName"]: f"default/{i['metadata']['name']}"
            for i in pods
            if i["metadata"]["name"].startswith("demo2-")
        }
        # ClientIP: every request of one client lands on the same replica.
        assert len(answers(lab, "test/db-3", f"http://{cluster_ip(lab, 'sticky')}/", 8)) == 1
        # internalTrafficPolicy Local: only the client's own node's replica; none on node2.
        local = f"http://{cluster_ip(lab, 'local-only')}/"
        assert answers(lab, "default/web-1", local, 4) == {by_node["master"]}
        assert answers(lab, "default/web-3", local, 2) == {""}
    finally:
        labctl("delete", "-n", lab, "-f", "-", stdin=STICKY)
