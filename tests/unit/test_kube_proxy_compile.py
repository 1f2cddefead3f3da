"""Unit tests for the kube-proxy compilers (labctl.services.proxy_iptables / proxy_nftables)
and the pure parts of labctl.services.apply.

Chain names are checked against the values upstream's own tests pin (pkg/proxy/iptables and
pkg/proxy/nftables proxier_test.go: ns1/svc1 port p80 -> KUBE-SVC-XPGD46QRK7WJZT7O,
service-ULMVA6XW-ns1/svc1/tcp/p80, ...), probabilities against what iptables-save prints.
Every semantic check comes with its negative.
"""

from __future__ import annotations

import re
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import pytest

from labctl.policy.model import NamedPort, PodInfo
from labctl.services import proxy_iptables as ipt
from labctl.services import proxy_nftables as nft
from labctl.services.apply import PROXY_MODES, ProxyModeError, check_proxy_mode, compile_all
from labctl.services.endpoints import ProxyEndpoint, compute_slices, port_plans
from labctl.services.model import Service, allocate

CLUSTER = IPv4Network("10.244.0.0/16")
SERVICE_CIDR = IPv4Network("10.96.0.0/12")


def service(name: str = "web", ns: str = "default", **spec: Any) -> Service:
    spec.setdefault("selector", {"app": "web"})
    spec.setdefault("ports", [{"name": "http", "port": 80, "targetPort": 8080}])
    return Service.model_validate(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": ns},
            "spec": spec,
        }
    )


def pods(*placed: tuple[str, str], app: str = "web") -> list[PodInfo]:
    """Pods `web-<i>` at (ip, node), each with container port http=8080."""
    return [
        PodInfo("default", f"web-{i}", ip, node, {"app": app}, (NamedPort("http", 8080, "TCP"),))
        for i, (ip, node) in enumerate(placed, 1)
    ]


TWO = pods(("10.244.1.2", "n1"), ("10.244.2.2", "n2"))
THREE = pods(("10.244.1.2", "n1"), ("10.244.2.2", "n2"), ("10.244.1.3", "n1"))


def compiled(
    mode: str, *services: Service, placed: list[PodInfo] = TWO, node: str = "n1", saved: str = ""
) -> str:
    stored: dict[str, Service] = {}
    for svc in services:
        stored[svc.key] = allocate(svc, stored, SERVICE_CIDR)
    slices = compute_slices(stored.values(), placed)
    if mode == "iptables":
        return ipt.compile_node(node, "10.0.0.31", CLUSTER, list(stored.values()), slices, saved)
    return nft.compile_node(node, "10.0.0.31", CLUSTER, list(stored.values()), slices)


def chain_rules(text: str, chain: str) -> list[str]:
    """The `-A <chain>` lines of an iptables text."""
    return [line for line in text.splitlines() if line.startswith(f"-A {chain} ")]


def table(text: str, name: str) -> str:
    """One `*table ... COMMIT` section of an iptables text."""
    return text.split(f"*{name}\n", 1)[1].split("COMMIT", 1)[0]


def nft_chain(text: str, name: str) -> list[str]:
    """The rule lines of an nft chain in a compiled text."""
    m = re.search(rf"^\tchain {re.escape(name)} \{{\n(.*?)^\t\}}", text, re.M | re.S)
    assert m, f"no chain {name}"
    return [x.strip() for x in m[1].splitlines() if not x.strip().startswith(("type ", "comment "))]


def nft_elements(text: str, name: str) -> list[str]:
    m = re.search(rf"^\t(?:map|set) {re.escape(name)} \{{\n(.*?)^\t\}}", text, re.M | re.S)
    assert m, f"no map {name}"
    body = re.search(r"elements = \{\n(.*?)\n\t\t\}", m[1], re.S)
    return [x.strip().rstrip(",") for x in body[1].splitlines()] if body else []


# --- names and probabilities --------------------------------------------------------------------


def test_iptables_chain_names_hash_as_upstream() -> None:
    # Values from upstream's pkg/proxy/iptables/proxier_test.go.
    assert ipt.service_chain("ns1/svc1:p80", "tcp") == "KUBE-SVC-XPGD46QRK7WJZT7O"
    assert ipt.endpoint_chain("ns1/svc1:p80", "tcp", "10.180.0.1:80") == "KUBE-SEP-SXIVWICOYRO3J4NJ"
    # SVL/EXT share the SVC hash; protocol, port name and endpoint all change it.
    assert ipt.local_chain("ns1/svc1:p80", "tcp") == "KUBE-SVL-XPGD46QRK7WJZT7O"
    assert ipt.external_chain("ns1/svc1:p80", "tcp") == "KUBE-EXT-XPGD46QRK7WJZT7O"
    assert ipt.service_chain("ns1/svc1:p80", "udp") != "KUBE-SVC-XPGD46QRK7WJZT7O"
    assert ipt.service_chain("ns1/svc1:p81", "tcp") != "KUBE-SVC-XPGD46QRK7WJZT7O"
    assert ipt.endpoint_chain("ns1/svc1:p80", "tcp", "10.180.0.2:80") != "KUBE-SEP-SXIVWICOYRO3J4NJ"
    # iptables chain names hold at most 28 characters, whatever names are hashed.
    assert len(ipt.service_chain("a" * 63 + "/" + "b" * 63 + ":" + "c" * 15, "tcp")) == 25


def test_nftables_chain_names_hash_as_upstream() -> None:
    svc1 = allocate(service("svc1", "ns1", ports=[{"name": "p80", "port": 80}]), {}, SERVICE_CIDR)
    (plan,) = port_plans("n1", [svc1], {})
    text = nft.compile_node("n1", "10.0.0.31", CLUSTER, [svc1], {})
    # Values from upstream's pkg/proxy/nftables/proxier_test.go.
    assert nft.port_chain_base(plan) == "ULMVA6XW-ns1/svc1/tcp/p80"
    assert (
        nft.endpoint_chain_base(plan, ProxyEndpoint("10.180.0.1", 80, "n1"))
        == "5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"
    )
    assert (
        nft.endpoint_chain_base(plan, ProxyEndpoint("10.180.0.1", 81, "n1"))
        != "5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"
    )
    assert "service-ULMVA6XW" not in text  # no endpoints: no service chain at all
    long = nft.hash_and_truncate("x" * 300)
    assert len(long) == 240 and long.endswith("...")
    assert re.fullmatch(r"[A-Z2-7]{8}-ns/s/tcp/", nft.hash_and_truncate("ns/s/tcp/"))


@pytest.mark.parametrize(
    ("n", "printed"),
    [
        (2, "0.50000000000"),
        (3, "0.33333333349"),
        (4, "0.25000000000"),
        (5, "0.20000000019"),
        (10, "0.10000000009"),
    ],
)
def test_probability_as_iptables_save_prints_it(n: int, printed: str) -> None:
    assert ipt.probability(n) == printed
    assert ipt.probability(n) != f"{1 / n:0.10f}"  # not what kube-proxy writes


def test_endpoints_split_one_over_n_minus_i() -> None:
    text = compiled("iptables", service(), placed=THREE)
    svc_chain = ipt.service_chain("default/web:http", "tcp")
    lb = [r for r in chain_rules(text, svc_chain) if "KUBE-SEP-" in r]
    # Sorted by "ip:port" as strings, as kube-proxy sorts them.
    order = ["10.244.1.2:8080", "10.244.1.3:8080", "10.244.2.2:8080"]
    assert [re.search(r'-> (\S+)"', r)[1] for r in lb] == order  # type: ignore[index]
    assert "--probability 0.33333333349" in lb[0]
    assert "--probability 0.50000000000" in lb[1]
    assert "statistic" not in lb[2]  # the last one always matches
    for ep, rule in zip(order, lb, strict=True):
        assert rule.endswith(f"-j {ipt.endpoint_chain('default/web:http', 'tcp', ep)}")
    single = compiled("iptables", service(), placed=THREE[:1])
    assert "statistic" not in single


# --- iptables semantics -------------------------------------------------------------------------


def test_cluster_ip_path() -> None:
    text = compiled("iptables", service())
    svc_chain = ipt.service_chain("default/web:http", "tcp")
    assert chain_rules(text, "KUBE-SERVICES")[0] == (
        "-A KUBE-SERVICES -d 10.96.0.2/32 -p tcp "
        '-m comment --comment "default/web:http cluster IP" '
        f"-m tcp --dport 80 -j {svc_chain}"
    )
    # Off-cluster sources are marked for masquerade; pods are not.
    assert chain_rules(text, svc_chain)[0].startswith(
        f"-A {svc_chain} ! -s 10.244.0.0/16 -d 10.96.0.2/32"
    )
    assert chain_rules(text, svc_chain)[0].endswith("-j KUBE-MARK-MASQ")
    sep = ipt.endpoint_chain("default/web:http", "tcp", "10.244.1.2:8080")
    assert chain_rules(text, sep) == [
        f'-A {sep} -s 10.244.1.2/32 -m comment --comment "default/web:http" -j KUBE-MARK-MASQ',
        f'-A {sep} -p tcp -m comment --comment "default/web:http" -m tcp '
        "-j DNAT --to-destination 10.244.1.2:8080",
    ]
    assert "KUBE-EXT-" not in text and "KUBE-NODEPORTS -p" not in text  # ClusterIP only
    assert "REJECT" not in text


def test_masquerade_and_mark_chains() -> None:
    text = compiled("iptables")
    assert chain_rules(text, "KUBE-MARK-MASQ") == [
        "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000"
    ]
    assert chain_rules(text, "KUBE-POSTROUTING") == [
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
        "-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0",
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" '
        "-j MASQUERADE --random-fully",
    ]
    assert chain_rules(text, "KUBE-FORWARD")[1].endswith("-m mark --mark 0x4000/0x4000 -j ACCEPT")
    last = chain_rules(text, "KUBE-SERVICES")[-1]
    assert "-m addrtype --dst-type LOCAL -j KUBE-NODEPORTS" in last and "! -d 127.0.0.0/8" in last


def test_node_port_and_external_ip_cluster_policy() -> None:
    text = compiled("iptables", service(type="NodePort", externalIPs=["192.0.2.10"]))
    ext = ipt.external_chain("default/web:http", "tcp")
    svc_chain = ipt.service_chain("default/web:http", "tcp")
    assert (
        f'-A KUBE-NODEPORTS -p tcp -m comment --comment "default/web:http" '
        f"-m tcp --dport 30000 -j {ext}" in text
    )
    assert (
        "-A KUBE-SERVICES -d 192.0.2.10/32 -p tcp "
        f'-m comment --comment "default/web:http external IP" -m tcp --dport 80 -j {ext}' in text
    )
    rules = chain_rules(text, ext)
    assert rules[0].endswith("-j KUBE-MARK-MASQ") and "-s " not in rules[0]  # masquerade all
    assert rules[-1] == f"-A {ext} -j {svc_chain}"
    assert ipt.local_chain("default/web:http", "tcp") not in text


def test_external_traffic_policy_local() -> None:
    svc = service(type="NodePort", externalTrafficPolicy="Local")
    name = "default/web:http"
    ext, svl, svc_chain = (
        ipt.external_chain(name, "tcp"),
        ipt.local_chain(name, "tcp"),
        ipt.service_chain(name, "tcp"),
    )
    with_local = compiled("iptables", svc, node="n1")
    rules = chain_rules(with_local, ext)
    assert (
        rules[0] == f"-A {ext} -s 10.244.0.0/16 "
        f'-m comment --comment "pod traffic for {name} external destinations" -j {svc_chain}'
    )
    assert (
        "--src-type LOCAL -j KUBE-MARK-MASQ" in rules[1]
        and "--src-type LOCAL -j " + svc_chain in rules[2]
    )
    assert rules[-1] == f"-A {ext} -j {svl}"
    assert not any(
        r.endswith("-j KUBE-MARK-MASQ") and "addrtype" not in r for r in rules
    )  # source kept
    # Only this node's endpoint behind KUBE-SVL; KUBE-SVC keeps both for the short-circuit.
    assert [r.split("-> ")[1].split('"')[0] for r in chain_rules(with_local, svl)] == [
        "10.244.1.2:8080"
    ]
    assert len([r for r in chain_rules(with_local, svc_chain) if "KUBE-SEP" in r]) == 2
    assert "has no local endpoints" not in with_local
    # A node without a local endpoint drops external traffic (no final jump), keeps the rest.
    without = compiled("iptables", svc, node="n3")
    assert chain_rules(without, ext)[-1] != f"-A {ext} -j {svl}" and svl not in without
    drop = [
        r for r in chain_rules(without, "KUBE-EXTERNAL-SERVICES") if "has no local endpoints" in r
    ]
    assert (
        len(drop) == 1
        and drop[0].endswith("--dport 30000 -j DROP")
        and "--dst-type LOCAL" in drop[0]
    )
    assert f"-j {svc_chain}" in table(without, "nat")  # ClusterIP still served (Cluster ITP)


def test_internal_traffic_policy_local() -> None:
    svc = service(internalTrafficPolicy="Local")
    name = "default/web:http"
    svl = ipt.local_chain(name, "tcp")
    here = compiled("iptables", svc, node="n1")
    assert f"--dport 80 -j {svl}" in chain_rules(here, "KUBE-SERVICES")[0]
    assert ipt.service_chain(name, "tcp") not in here
    assert next(r for r in chain_rules(here, svl) if "KUBE-SEP" in r).endswith(
        ipt.endpoint_chain(name, "tcp", "10.244.1.2:8080")
    )
    assert "10.244.2.2" not in table(here, "nat")
    elsewhere = compiled("iptables", svc, node="n3")
    assert chain_rules(elsewhere, "KUBE-SERVICES")[0].startswith("-A KUBE-SERVICES -d 10.96.0.2/32")
    assert chain_rules(elsewhere, "KUBE-SERVICES")[0].endswith("-j DROP")
    assert svl not in elsewhere


def test_no_endpoints_rejected() -> None:
    text = compiled("iptables", service(type="NodePort", externalIPs=["192.0.2.10"]), placed=[])
    name = "default/web:http"
    assert chain_rules(text, "KUBE-SERVICES")[0] == (
        f'-A KUBE-SERVICES -d 10.96.0.2/32 -p tcp -m comment --comment "{name} has no endpoints" '
        "-m tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable"
    )
    external = chain_rules(text, "KUBE-EXTERNAL-SERVICES")
    assert len(external) == 2 and all(
        r.endswith("-j REJECT --reject-with icmp-port-unreachable") for r in external
    )
    assert (
        "-d 192.0.2.10/32" in external[0]
        and "--dst-type LOCAL" in external[1]
        and "--dport 30000" in external[1]
    )
    nat = table(text, "nat")
    assert "KUBE-SVC-" not in nat and "KUBE-EXT-" not in nat and "KUBE-SEP-" not in nat
    assert "REJECT" not in compiled("iptables", service(type="NodePort"))


def test_client_ip_affinity() -> None:
    svc = service(
        sessionAffinity="ClientIP", sessionAffinityConfig={"clientIP": {"timeoutSeconds": 600}}
    )
    text = compiled("iptables", svc)
    name = "default/web:http"
    svc_chain = ipt.service_chain(name, "tcp")
    rules = chain_rules(text, svc_chain)[1:]
    seps = [ipt.endpoint_chain(name, "tcp", ep) for ep in ("10.244.1.2:8080", "10.244.2.2:8080")]
    # First the remembered choices, then the random one.
    for rule, sep in zip(rules[:2], seps, strict=True):
        assert (
            f"-m recent --rcheck --seconds 600 --reap --name {sep} "
            f"--mask 255.255.255.255 --rsource -j {sep}" in rule
        )
    assert "statistic" in rules[2] and "recent" not in rules[2]
    assert "-m recent --set --name " + seps[0] in chain_rules(text, seps[0])[1]
    assert "recent" not in compiled("iptables", service())


def test_hooks_inserted_once_and_stale_chains_deleted() -> None:
    fresh = compiled("iptables", service())
    inserts = [line for line in fresh.splitlines() if line.startswith("-I ")]
    assert len(inserts) == len(ipt.HOOKS) == 12
    assert (
        '-I PREROUTING 1 -m comment --comment "kubernetes service portals" -j KUBE-SERVICES'
        in inserts
    )
    gone = ipt.service_chain("default/old", "tcp")
    saved = "*filter\n:INPUT ACCEPT [0:0]\n" + "\n".join(
        h.line for h in ipt.HOOKS if h.table == "filter"
    )
    saved += f"\nCOMMIT\n*nat\n:{gone} - [0:0]\n:FLANNEL-POSTRTG - [0:0]\n"
    saved += "\n".join(h.line for h in ipt.HOOKS if h.table == "nat") + "\nCOMMIT\n"
    again = compiled("iptables", service(), saved=saved)
    assert not [line for line in again.splitlines() if line.startswith("-I ")]
    assert f"-X {gone}" in again and f":{gone} - [0:0]" in again
    # Other chains are neither flushed (declared) nor deleted.
    assert not re.search(r"^(:|-X )FLANNEL", again, re.M)
    assert "-X " not in fresh


def test_every_jump_target_is_declared() -> None:
    # iptables-restore --test (iptables-nft) does not check this; the compiler must.
    svcs = [
        service("a", type="NodePort", externalTrafficPolicy="Local", externalIPs=["192.0.2.1"]),
        service("b", internalTrafficPolicy="Local", sessionAffinity="ClientIP"),
        service("c", type="NodePort", selector={"app": "none"}),
    ]
    for node in ("n1", "n3"):
        text = compiled("iptables", *svcs, placed=THREE, node=node)
        for name in ("filter", "nat"):
            part = table(text, name)
            declared = set(re.findall(r"^:(\S+)", part, re.M))
            targets = set(re.findall(r" -j (KUBE-\S+)", part))
            assert targets <= declared, targets - declared
    assert ipt.count_rules(text) == len(re.findall(r"^-[AI] ", text, re.M))


def test_udp_port() -> None:
    text = compiled("iptables", service(ports=[{"port": 53, "protocol": "UDP"}]))
    assert '-p udp -m comment --comment "default/web cluster IP" -m udp --dport 53' in text
    assert ipt.service_chain("default/web", "udp") in text
    assert "-m tcp" not in table(text, "nat").split("# default/web")[1]


# --- nftables -----------------------------------------------------------------------------------


def test_nft_replaces_its_table_in_one_transaction() -> None:
    text = compiled("nftables", service())
    body = [x for x in text.splitlines() if not x.startswith("#")]
    assert body[:3] == [
        "table ip kube-proxy {}",
        "delete table ip kube-proxy",
        "table ip kube-proxy {",
    ]
    assert text.count("table ip kube-proxy") == 3 and text.rstrip().endswith("}")
    for base in (
        "nat-prerouting",
        "nat-output",
        "nat-postrouting",
        "filter-input",
        "filter-forward",
        "filter-output",
    ):
        assert "hook" in text.split(f"chain {base} {{", 1)[1].split("}", 1)[0]
    assert nft_chain(text, "nat-prerouting") == ["jump services"]
    assert nft_chain(text, "nat-postrouting") == ["jump masquerading"]
    assert nft_chain(text, "mark-for-masquerade") == ["mark set mark or 0x4000"]
    assert nft_chain(text, "masquerading") == [
        "mark and 0x4000 == 0 return",
        "mark set mark xor 0x4000",
        "masquerade fully-random",
    ]


def test_nft_dispatch_maps_and_random_choice() -> None:
    text = compiled("nftables", service(type="NodePort"))
    plan = port_plans(
        "n1",
        [allocate(service(type="NodePort"), {}, SERVICE_CIDR)],
        compute_slices([service()], TWO),
    )[0]
    base = nft.port_chain_base(plan)
    assert base.endswith("-default/web/tcp/http")
    assert nft_elements(text, "service-ips") == [f"10.96.0.2 . tcp . 80 : goto service-{base}"]
    assert nft_elements(text, "service-nodeports") == [f"tcp . 30000 : goto external-{base}"]
    assert nft_elements(text, "cluster-ips") == ["10.96.0.2"]
    assert nft_elements(text, "nodeport-ips") == ["10.0.0.31"]
    rules = nft_chain(text, f"service-{base}")
    assert rules[0] == "ip daddr 10.96.0.2 ip saddr != 10.244.0.0/16 jump mark-for-masquerade"
    eps = [nft.endpoint_chain_base(plan, ep) for ep in plan.cluster]
    assert (
        rules[1]
        == f"numgen random mod 2 vmap {{ 0 : goto endpoint-{eps[0]}, 1 : goto endpoint-{eps[1]} }}"
    )
    assert nft_chain(text, f"endpoint-{eps[0]}") == [
        "ip saddr 10.244.1.2 jump mark-for-masquerade",
        "meta l4proto tcp dnat to 10.244.1.2:8080",
    ]
    assert nft_chain(text, f"external-{base}") == [
        "jump mark-for-masquerade",
        f"goto service-{base}",
    ]
    assert nft_elements(text, "no-endpoint-services") == []


def test_nft_no_endpoints_and_local_policy() -> None:
    empty = compiled("nftables", service(type="NodePort"), placed=[])
    assert nft_elements(empty, "no-endpoint-services") == [
        '10.96.0.2 . tcp . 80 comment "default/web:http" : goto reject-chain'
    ]
    assert nft_elements(empty, "no-endpoint-nodeports") == [
        'tcp . 30000 comment "default/web:http" : goto reject-chain'
    ]
    assert nft_elements(empty, "service-ips") == [] and not re.search(
        r"chain service-[A-Z2-7]{8}-", empty
    )
    assert nft_chain(empty, "reject-chain") == ["reject"]
    local = service(type="NodePort", externalTrafficPolicy="Local")
    here = compiled("nftables", local, node="n1")
    ext = next(n for n in re.findall(r"chain (external-\S+) \{", here))
    rules = nft_chain(here, ext)
    assert (
        rules[0].startswith("ip saddr 10.244.0.0/16 goto service-")
        and "short-circuit pod traffic" in rules[0]
    )
    assert rules[1].startswith("fib saddr type local jump mark-for-masquerade")
    assert rules[-1].startswith("goto local-")
    assert nft_elements(here, "no-endpoint-nodeports") == []
    there = compiled("nftables", local, node="n3")
    assert not nft_chain(there, ext)[-1].startswith("goto local-")
    assert nft_elements(there, "no-endpoint-nodeports") == [
        'tcp . 30000 comment "default/web:http" : drop'
    ]


def test_nft_affinity_sets() -> None:
    text = compiled("nftables", service(sessionAffinity="ClientIP"))
    sets = re.findall(
        r"^\tset (affinity-\S+) \{\n\t\ttype ipv4_addr\n"
        r"\t\tflags dynamic,timeout\n\t\ttimeout 10800s\n",
        text,
        re.M,
    )
    assert len(sets) == 2
    svc_chain = next(n for n in re.findall(r"chain (service-[A-Z2-7]{8}-\S+) \{", text))
    rules = nft_chain(text, svc_chain)
    assert rules[1] == f"ip saddr @{sets[0]} goto endpoint-{sets[0].removeprefix('affinity-')}"
    assert rules[3].startswith("numgen random mod 2")
    assert f"update @{sets[0]} {{ ip saddr }}" in nft_chain(
        text, "endpoint-" + sets[0].removeprefix("affinity-")
    )
    assert "affinity-" not in compiled("nftables", service())


def test_nft_every_jump_target_is_declared() -> None:
    svcs = [
        service("a", type="NodePort", externalTrafficPolicy="Local", externalIPs=["192.0.2.1"]),
        service("b", internalTrafficPolicy="Local", sessionAffinity="ClientIP"),
        service("c", type="NodePort", selector={"app": "none"}),
    ]
    for node in ("n1", "n3"):
        text = compiled("nftables", *svcs, placed=THREE, node=node)
        declared = set(re.findall(r"^\tchain (\S+) \{", text, re.M))
        targets = set(re.findall(r"\b(?:goto|jump) ([A-Za-z][\w./-]*)", text))
        assert targets <= declared, targets - declared
    assert nft.count_rules(text) == sum(len(nft_chain(text, c)) for c in declared)


# --- apply (pure parts) -------------------------------------------------------------------------


def test_proxy_modes() -> None:
    assert PROXY_MODES == ("iptables", "nftables", "ipvs")
    check_proxy_mode("iptables")
    check_proxy_mode("nftables")


def test_ipvs_is_refused_never_replaced(tmp_path: Path) -> None:
    with pytest.raises(ProxyModeError) as e:
        check_proxy_mode("ipvs", tmp_path / "ip_vs")
    assert e.value.exit_code == 3
    assert "kernel has no IPVS" in str(e.value) and "--proxy-mode nftables|iptables" in str(e.value)
    (tmp_path / "ip_vs").write_text("IP Virtual Server version 1.2.1\n")
    with pytest.raises(ProxyModeError) as e:
        check_proxy_mode("ipvs", tmp_path / "ip_vs")
    assert e.value.exit_code == 3 and "--proxy-mode nftables|iptables" in str(e.value)
    with pytest.raises(ProxyModeError) as e:
        check_proxy_mode("userspace")
    assert e.value.exit_code == 2


def test_compile_all_per_node() -> None:
    svc = allocate(service(), {}, SERVICE_CIDR)
    nodes = {"n1": "10.0.0.31", "n2": "10.0.0.32"}
    texts = compile_all([svc], TWO, nodes, CLUSTER, "nftables")
    assert set(texts) == {"n1", "n2"} and "10.0.0.32" in nft_elements(texts["n2"], "nodeport-ips")
    hooks = compile_all(
        [svc], TWO, nodes, CLUSTER, "iptables", {"n1": "*nat\n" + ipt.HOOKS[-1].line + "\nCOMMIT\n"}
    )
    assert "-I POSTROUTING" not in hooks["n1"] and "-I POSTROUTING" in hooks["n2"]
