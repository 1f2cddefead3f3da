"""The upstream Kubernetes e2e NetworkPolicy behaviour cases, as data, plus the course's seeds.

Each case is the policies (YAML as `kubectl apply` takes it), the steps between probes (policy
updates and deletions, label changes) and, at each probe, the expected truth table over every
ordered pair of pods (cyclonus style: rows are sources, columns destinations).

The expectations are the upstream test's own, translated call by call, so that this file is an
oracle independent of labctl's evaluator: `Reachability` mirrors upstream's helpers
(`NewReachability(pods, true)`, `Expect`, `ExpectPeer(&Peer{Namespace, Pod})`,
`ExpectAllIngress`, `ExpectAllEgress`), and each case can be held next to its Go source.

Upstream source: kubernetes/kubernetes test/e2e/network/netpol/network_policy.go, at
commit 9db638c0807a720aa050ebcef69c32e4d4cce280, the last layout that probes the full model
(namespaces x, y, z; pods a, b, c; ports 80 and 81) in every test. Later versions create only
the pods each test needs (`initializeResources(..., "x/a", "x/b", "y/a")`); their expectations
are the same calls restricted to fewer pods. Upstream namespaces carry random suffixes; here
they are exactly x, y and z (topologies/netpol-xyz.yaml), and upstream's
`namespaceLabelKey: nsY` is `kubernetes.io/metadata.name: y`.

One TCP case comes from older releases of the same file: "should not allow access by TCP when
a policy specifies only SCTP" (later split into the two SCTP cases). The three cases of the
"... using SCTP" context are listed but skipped: the lab's pods serve TCP and UDP only.

Self pairs are left out of every matrix: upstream ignores loopback (`ignoreLoopback = true`).

ipBlock policies name pod addresses with placeholders, filled in by `materialize`:
`{{ip:x/b}}` is the pod's address and `{{cidrN:x/b}}` the /N network holding it (so
`{{cidr32:x/b}}` is upstream's `podIP/32`).
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any, Literal

import yaml

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples" / "policies"

UPSTREAM = (
    "kubernetes/kubernetes test/e2e/network/netpol/network_policy.go "
    "@ 9db638c0807a720aa050ebcef69c32e4d4cce280"
)

# The model of topologies/netpol-xyz.yaml, in upstream's order.
PODS: tuple[str, ...] = tuple(f"{ns}/{pod}" for ns in "xyz" for pod in "abc")

# The pods of topologies/netpol-seed.yaml, in file order.
SEED_PODS: tuple[str, ...] = (
    "default/myapp-v1",
    "default/client-test",
    "default/client-other",
    "test/tester",
    "test/plain",
    "frontend/web",
    "backend/api",
    "backend/db",
)

Matrix = dict[str, dict[str, bool]]
Protocol = Literal["TCP", "UDP", "SCTP"]


# ---------------------------------------------------------------- expectations


@dataclass(frozen=True)
class Peer:
    """Upstream's `Peer{Namespace, Pod}`: an empty field matches any namespace or pod name."""

    namespace: str = ""
    pod: str = ""

    def matches(self, key: str) -> bool:
        ns, _, name = key.partition("/")
        return (not self.namespace or self.namespace == ns) and (not self.pod or self.pod == name)


class Reachability:
    """The expected truth table, built the way upstream builds it.

    `Reachability()` is upstream's `NewReachability(allPods, true)`; every method returns the
    object so calls can be chained. Unknown pod names are refused (a typo must not silently
    expect nothing).
    """

    def __init__(self, default: bool = True, pods: Sequence[str] = PODS) -> None:
        self.pods: tuple[str, ...] = tuple(pods)
        self._table: dict[tuple[str, str], bool] = {
            (src, dst): default for src in self.pods for dst in self.pods
        }

    def _check(self, *keys: str) -> None:
        for key in keys:
            if key not in self.pods:
                raise ValueError(f"unknown pod {key!r}; known pods: {', '.join(self.pods)}")

    def expect(self, src: str, dst: str, allowed: bool) -> Reachability:
        """`Expect(from, to, isConnected)`."""
        self._check(src, dst)
        self._table[src, dst] = allowed
        return self

    def expect_peer(self, src: Peer, dst: Peer, allowed: bool) -> Reachability:
        """`ExpectPeer(&from, &to, connected)`: every pair matching both peers."""
        for s in self.pods:
            if src.matches(s):
                for d in self.pods:
                    if dst.matches(d):
                        self._table[s, d] = allowed
        return self

    def expect_all_ingress(self, pod: str, allowed: bool) -> Reachability:
        """`ExpectAllIngress(pod, connected)`: every source to `pod`."""
        self._check(pod)
        for s in self.pods:
            self._table[s, pod] = allowed
        return self

    def expect_all_egress(self, pod: str, allowed: bool) -> Reachability:
        """`ExpectAllEgress(pod, connected)`: `pod` to every destination."""
        self._check(pod)
        for d in self.pods:
            self._table[pod, d] = allowed
        return self

    def matrix(self) -> Matrix:
        """{src: {dst: allowed}} over all ordered pairs src != dst."""
        return {s: {d: self._table[s, d] for d in self.pods if d != s} for s in self.pods}

    def __repr__(self) -> str:
        blocked = sum(not v for row in self.matrix().values() for v in row.values())
        return f"Reachability({len(self.pods)} pods, {blocked} blocked)"


def _pods_of(*matrices: Mapping[str, Mapping[str, bool]]) -> list[str]:
    seen: dict[str, None] = {}
    for m in matrices:
        for src, row in m.items():
            seen.setdefault(src)
            for dst in row:
                seen.setdefault(dst)
    return list(seen)


def render(matrix: Mapping[str, Mapping[str, bool]], pods: Sequence[str] | None = None) -> str:
    """The cyclonus-style grid: rows sources, columns destinations, `.` allowed, `X` blocked,
    `-` not probed (self pairs), `?` missing."""
    pods = list(pods) if pods is not None else _pods_of(matrix)
    width = max([len(p) for p in pods] + [1])
    lines = [" " * width + " " + " ".join(p.ljust(width) for p in pods)]
    for src in pods:
        cells = []
        for dst in pods:
            if src == dst:
                cell = "-"
            elif dst not in matrix.get(src, {}):
                cell = "?"
            else:
                cell = "." if matrix[src][dst] else "X"
            cells.append(cell.ljust(width))
        lines.append(src.ljust(width) + " " + " ".join(cells))
    return "\n".join(line.rstrip() for line in lines)


def _word(value: bool | None) -> str:
    return "missing" if value is None else ("allowed" if value else "blocked")


def diff(
    expected: Mapping[str, Mapping[str, bool]], observed: Mapping[str, Mapping[str, bool]]
) -> list[str]:
    """One line per pair whose observed value differs from (or lacks) the expected one."""
    out = []
    for src in _pods_of(expected, observed):
        for dst in _pods_of(expected, observed):
            if src == dst:
                continue
            want = expected.get(src, {}).get(dst)
            got = observed.get(src, {}).get(dst)
            if want != got:
                out.append(f"{src} -> {dst}: expected {_word(want)}, observed {_word(got)}")
    return out


def report(
    title: str,
    expected: Mapping[str, Mapping[str, bool]],
    observed: Mapping[str, Mapping[str, bool]],
) -> str:
    """Expected, observed and the comparison (`X` where they differ), then the differences."""
    pods = _pods_of(expected, observed)
    comparison = {
        s: {d: expected.get(s, {}).get(d) == observed.get(s, {}).get(d) for d in pods if d != s}
        for s in pods
    }
    wrong = diff(expected, observed)
    return "\n".join(
        [
            f"{title}: {len(wrong)} of {len(pods) * (len(pods) - 1)} pairs wrong",
            "expected:",
            render(expected, pods),
            "observed:",
            render(observed, pods),
            "comparison (X = wrong):",
            render(comparison, pods),
            *wrong,
        ]
    )


# ---------------------------------------------------------------- steps and cases


@dataclass(frozen=True)
class Apply:
    """One or more NetworkPolicy documents, as `kubectl apply -f` takes them (an existing
    policy of the same namespace/name is replaced)."""

    yaml: str


@dataclass(frozen=True)
class Delete:
    """Documents to delete, by kind/namespace/name."""

    yaml: str


@dataclass(frozen=True)
class LabelNamespace:
    """`kubectl label namespace <namespace> <args>`: ("ns2=updated",) or ("ns2-",)."""

    namespace: str
    args: tuple[str, ...]


@dataclass(frozen=True)
class LabelPod:
    """`kubectl label pod -n <ns> <name> <args>` for pod "ns/name"."""

    pod: str
    args: tuple[str, ...]


@dataclass(frozen=True)
class Probe:
    """Probe every ordered pair of pods on `protocol`/`port` and compare with `expect`."""

    protocol: Protocol
    port: int
    expect: Reachability


Step = Apply | Delete | LabelNamespace | LabelPod | Probe


@dataclass(frozen=True)
class Case:
    """name: the upstream ginkgo It() text; context: "TCP" for "NetworkPolicy between server
    and client", "UDP" and "SCTP" for the "... using UDP/SCTP" contexts, "seed" for the
    course's scenarios. skip says what the lab cannot do yet for this case."""

    name: str
    context: str
    steps: tuple[Step, ...]
    skip: str = ""
    topology: str = "netpol-xyz"
    note: str = ""

    @property
    def id(self) -> str:
        """A pytest id: context and a slug of the name."""
        slug = re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-")
        return f"{self.context}-{slug}"

    @property
    def probes(self) -> tuple[Probe, ...]:
        return tuple(s for s in self.steps if isinstance(s, Probe))

    @property
    def policy_yaml(self) -> tuple[str, ...]:
        """Every Apply and Delete document text of the case, in order."""
        return tuple(s.yaml for s in self.steps if isinstance(s, Apply | Delete))


def netpol(namespace: str, name: str, spec: str) -> str:
    """A complete NetworkPolicy document; `spec` is the YAML under `spec:` (dedented here)."""
    body = textwrap.indent(textwrap.dedent(spec).strip("\n"), "  ")
    return (
        "apiVersion: networking.k8s.io/v1\n"
        "kind: NetworkPolicy\n"
        "metadata:\n"
        f"  name: {name}\n"
        f"  namespace: {namespace}\n"
        "spec:\n"
        f"{body}\n"
    )


def docs(*documents: str) -> str:
    """Several documents in one file."""
    return "---\n".join(documents)


_PLACEHOLDER = re.compile(r"\{\{\s*(ip|cidr(\d{1,2})):([a-z0-9-]+/[a-z0-9-]+)\s*\}\}")


def materialize(text: str, pod_ips: Mapping[str, str | IPv4Address]) -> str:
    """Fill in `{{ip:ns/pod}}` and `{{cidrN:ns/pod}}` from the lab's pod addresses.

    `{{cidrN:...}}` is the network of prefix length N holding the pod's address, written
    without host bits (0.0.0.0/4 for 10.244.1.2 and N=4), as the API server accepts it.
    """

    def fill(m: re.Match[str]) -> str:
        kind, prefix, pod = m.group(1), m.group(2), m.group(3)
        if pod not in pod_ips:
            raise KeyError(f"{m.group(0)}: no pod {pod}; known pods: {', '.join(pod_ips)}")
        ip = IPv4Address(str(pod_ips[pod]))
        if kind == "ip":
            return str(ip)
        if not 0 <= int(prefix) <= 32:
            raise ValueError(f"{m.group(0)}: prefix length must be 0-32")
        return str(IPv4Network(f"{ip}/{prefix}", strict=False))

    out = _PLACEHOLDER.sub(fill, text)
    if "{{" in out:
        raise ValueError(f"unknown placeholder left in: {out[out.index('{{') :][:40]!r}")
    return out


# Shorthands that keep each case close to its Go source.
R = Reachability
ANY = Peer()
X, Y, Z = Peer("x"), Peer("y"), Peer("z")


def tcp(port: int, expect: Reachability) -> Probe:
    return Probe("TCP", port, expect)


def udp(port: int, expect: Reachability) -> Probe:
    return Probe("UDP", port, expect)


def sctp(port: int, expect: Reachability) -> Probe:
    return Probe("SCTP", port, expect)


# ---------------------------------------------------------------- policies used more than once

DENY_INGRESS_X = netpol(
    "x",
    "deny-ingress",
    """
    podSelector: {}
    policyTypes: [Ingress]
    ingress: []
    """,
)

DENY_ALL_X = netpol(
    "x",
    "deny-all",
    """
    podSelector: {}
    policyTypes: [Ingress, Egress]
    ingress: []
    egress: []
    """,
)

# x/a accepts only pod=b of its own namespace.
X_A_ALLOWS_X_B = netpol(
    "x",
    "x-a-allows-x-b",
    """
    podSelector:
      matchLabels: {pod: a}
    policyTypes: [Ingress]
    ingress:
      - from:
          - podSelector:
              matchLabels: {pod: b}
    """,
)

# x/a accepts only y/a (namespace AND pod in one peer).
ALLOW_X_A_FROM_Y_A = netpol(
    "x",
    "allow-ns-y-pod-a-via-namespace-pod-selector",
    """
    podSelector:
      matchLabels: {pod: a}
    policyTypes: [Ingress]
    ingress:
      - from:
          - namespaceSelector:
              matchLabels: {kubernetes.io/metadata.name: y}
            podSelector:
              matchLabels: {pod: a}
    """,
)


def _allow_port_from_y(name: str, port: int | str, protocol: str) -> str:
    """x/a accepts namespace y on one port (upstream's allowPort81Policy and friends)."""
    return netpol(
        "x",
        name,
        f"""
        podSelector:
          matchLabels: {{pod: a}}
        policyTypes: [Ingress]
        ingress:
          - from:
              - namespaceSelector:
                  matchLabels: {{kubernetes.io/metadata.name: y}}
            ports:
              - {{port: {port}, protocol: {protocol}}}
        """,
    )


def _allow_ingress_to_x_a_on(name: str, port: int, protocol: str) -> str:
    """x/a accepts anyone, on one port of one protocol only."""
    return netpol(
        "x",
        name,
        f"""
        podSelector:
          matchLabels: {{pod: a}}
        policyTypes: [Ingress]
        ingress:
          - ports:
              - {{port: {port}, protocol: {protocol}}}
        """,
    )


EGRESS_X_A_EXCEPT_X_B = netpol(
    "x",
    "allow-client-a-via-cidr-egress-rule",
    """
    podSelector:
      matchLabels: {pod: a}
    policyTypes: [Egress]
    egress:
      - to:
          - ipBlock:
              cidr: "{{cidr4:x/a}}"
              except: ["{{cidr32:x/b}}"]
    """,
)

_NEEDS_SCTP = "needs SCTP servers in the model pods (the lab serves TCP and UDP only)"


# ---------------------------------------------------------------- the upstream cases

_TCP_CASES: tuple[Case, ...] = (
    Case(
        "should support a 'default-deny-ingress' policy",
        "TCP",
        (
            Apply(DENY_INGRESS_X),
            # reachability.ExpectPeer(&Peer{}, &Peer{Namespace: nsX}, false)
            tcp(80, R().expect_peer(ANY, X, False)),
        ),
    ),
    Case(
        "should support a 'default-deny-all' policy",
        "TCP",
        (
            Apply(DENY_ALL_X),
            tcp(80, R().expect_peer(ANY, X, False).expect_peer(X, ANY, False)),
        ),
    ),
    Case(
        "should enforce policy to allow traffic from pods within server namespace based on "
        "PodSelector",
        "TCP",
        (
            Apply(X_A_ALLOWS_X_B),
            tcp(80, R().expect_all_ingress("x/a", False).expect("x/b", "x/a", True)),
        ),
    ),
    Case(
        "should enforce policy to allow ingress traffic for a target",
        "TCP",
        (
            Apply(
                docs(
                    netpol(
                        "x",
                        "deny-all",
                        """
                        podSelector: {}
                        policyTypes: [Ingress]
                        ingress: []
                        """,
                    ),
                    netpol(
                        "x",
                        "allow-all-to-a",
                        """
                        podSelector:
                          matchLabels: {pod: a}
                        policyTypes: [Ingress]
                        ingress:
                          - from:
                              - podSelector: {}
                                namespaceSelector: {}
                        """,
                    ),
                )
            ),
            tcp(
                80,
                R()
                .expect_all_ingress("x/a", True)
                .expect_all_ingress("x/b", False)
                .expect_all_ingress("x/c", False),
            ),
        ),
    ),
    Case(
        "should enforce policy to allow ingress traffic from pods in all namespaces",
        "TCP",
        (
            Apply(
                netpol(
                    "x",
                    "allow-from-another-ns",
                    """
                    podSelector:
                      matchLabels: {pod: a}
                    policyTypes: [Ingress]
                    ingress:
                      - from:
                          - namespaceSelector: {}
                    """,
                )
            ),
            tcp(80, R()),
        ),
    ),
    Case(
        "should enforce policy to allow traffic only from a different namespace, based on "
        "NamespaceSelector",
        "TCP",
        (
            Apply(
                netpol(
                    "x",
                    "allow-client-a-via-ns-selector",
                    """
                    podSelector:
                      matchLabels: {pod: a}
                    policyTypes: [Ingress]
                    ingress:
                      - from:
                          - namespaceSelector:
                              matchLabels: {kubernetes.io/metadata.name: y}
                    """,
                )
            ),
            tcp(
                80,
                R().expect_peer(X, Peer("x", "a"), False).expect_peer(Z, Peer("x", "a"), False),
            ),
        ),
    ),
    Case(
        "should enforce policy based on PodSelector with MatchExpressions",
        "TCP",
        (
            Apply(
                netpol(
                    "x",
                    "x-a-allows-x-b",
                    """
                    podSelector:
                      matchLabels: {pod: a}
                    policyTypes: [Ingress]
                    ingress:
                      - from:
                          - podSelector:
                              matchExpressions:
                                - {key: pod, operator: In, values: [b]}
                    """,
                )
            ),
            tcp(80, R().expect_all_ingress("x/a", False).expect("x/b", "x/a", True)),
        ),
    ),
    Case(
        "should enforce policy based on NamespaceSelector with MatchExpressions",
        "TCP",
        (
            Apply(
                netpol(
                    "x",
                    "allow-ns-y-match-selector",
                    """
                    podSelector:
                      matchLabels: {pod: a}
                    policyTypes: [Ingress]
                    ingress:
                      - from:
                          - namespaceSelector:
                              matchExpressions:
                                - {key: kubernetes.io/metadata.name, operator: In, values: [y]}
                    """,
                )
            ),
            tcp(
                80,
                R().expect_peer(X, Peer("x", "a"), False).expect_peer(Z, Peer("x", "a"), False),
            ),
        ),
    ),
    Case(
        "should enforce policy based on PodSelector or NamespaceSelector",
        "TCP",
        (
            Apply(
                netpol(
                    "x",
                    "allow-ns-y-match-selector",
                    """
                    podSelector:
                      matchLabels: {pod: a}
                    policyTypes: [Ingress]
                    ingress:
                      - from:
                          - namespaceSelector:
                              matchExpressions:
                                - {key: kubernetes.io/metadata.name, operator: NotIn, values: [x]}
                          - podSelector:
                              matchLabels: {pod: b}
                    """,
                )
            ),
            # Upstream's first call is the loopback pair x/a -> x/a, which is not probed.
            tcp(80, R().expect("x/a", "x/a", False).expect("x/c", "x/a", False)),
        ),
    ),
    Case(
        "should enforce policy based on PodSelector and NamespaceSelector",
        "TCP",
        (
            Apply(
                netpol(
                    "x",
                    "allow-ns-y-podselector-and-nsselector",
                    """
                    podSelector:
                      matchLabels: {pod: a}
                    policyTypes: [Ingress]
                    ingress:
                      - from:
                          - namespaceSelector:
                              matchExpressions:
                                - {key: kubernetes.io/metadata.name, operator: NotIn, values: [x]}
                            podSelector:
                              matchLabels: {pod: b}
                    """,
                )
            ),
            tcp(
                80,
                R()
                .expect_all_ingress("x/a", False)
                .expect("y/b", "x/a", True)
                .expect("z/b", "x/a", True),
            ),
        ),
    ),
    Case(
        "should enforce policy based on Multiple PodSelectors and NamespaceSelectors",
        "TCP",
        (
            Apply(
                netpol(
                    "x",
                    "allow-ns-y-z-pod-b-c",
                    """
                    podSelector:
                      matchLabels: {pod: a}
                    policyTypes: [Ingress]
                    ingress:
                      - from:
                          - namespaceSelector:
                              matchExpressions:
                                - {key: kubernetes.io/metadata.name, operator: NotIn, values: [x]}
                            podSelector:
                              matchExpressions:
                                - {key: pod, operator: In, values: [b, c]}
                    """,
                )
            ),
            tcp(
                80,
                R()
                .expect_peer(X, Peer("x", "a"), False)
                .expect("y/a", "x/a", False)
                .expect("z/a", "x/a", False),
            ),
        ),
    ),
    Case(
        "should enforce policy based on any PodSelectors",
        "TCP",
        (
            Apply(
                netpol(
                    "x",
                    "allow-ns-x-pod-b-c",
                    """
                    podSelector:
                      matchLabels: {pod: a}
                    policyTypes: [Ingress]
                    ingress:
                      - from:
                          - podSelector:
                              matchLabels: {pod: b}
                          - podSelector:
                              matchLabels: {pod: c}
                    """,
                )
            ),
            tcp(
                80,
                R()
                .expect_all_ingress("x/a", False)
                .expect("x/b", "x/a", True)
                .expect("x/c", "x/a", True),
            ),
        ),
    ),
    Case(
        "should enforce policy to allow traffic only from a pod in a different namespace based "
        "on PodSelector and NamespaceSelector",
        "TCP",
        (
            Apply(ALLOW_X_A_FROM_Y_A),
            tcp(80, R().expect_all_ingress("x/a", False).expect("y/a", "x/a", True)),
        ),
    ),
    Case(
        "should enforce policy based on Ports",
        "TCP",
        (
            Apply(_allow_port_from_y("allow-client-a-via-ns-selector", 81, "TCP")),
            tcp(
                81,
                R()
                .expect_peer(X, Peer("x", "a"), False)
                .expect_peer(Y, Peer("x", "a"), True)
                .expect_peer(Z, Peer("x", "a"), False),
            ),
        ),
    ),
    Case(
        "should enforce multiple, stacked policies with overlapping podSelectors",
        "TCP",
        (
            Apply(_allow_port_from_y("allow-client-a-via-ns-selector", 81, "TCP")),
            # reachabilityALLOW, on port 81
            tcp(
                81,
                R()
                .expect_peer(X, Peer("x", "a"), False)
                .expect_peer(Y, Peer("x", "a"), True)
                .expect_peer(Z, Peer("x", "a"), False),
            ),
            # reachabilityDENY, on port 80
            tcp(80, R().expect_all_ingress("x/a", False)),
            Apply(_allow_port_from_y("allow-client-a-via-ns-selector-80", 80, "TCP")),
            # reachabilityALLOW again, now on port 80
            tcp(
                80,
                R()
                .expect_peer(X, Peer("x", "a"), False)
                .expect_peer(Y, Peer("x", "a"), True)
                .expect_peer(Z, Peer("x", "a"), False),
            ),
        ),
    ),
    Case(
        "should support allow-all policy",
        "TCP",
        (
            Apply(
                netpol(
                    "x",
                    "allow-all",
                    """
                    podSelector: {}
                    policyTypes: [Ingress]
                    ingress:
                      - {}
                    """,
                )
            ),
            tcp(80, R()),
            tcp(81, R()),
        ),
    ),
    Case(
        "should allow ingress access on one named port",
        "TCP",
        (
            Apply(
                netpol(
                    "x",
                    "allow-all",
                    """
                    podSelector: {}
                    policyTypes: [Ingress]
                    ingress:
                      - ports:
                          - port: serve-81-tcp
                    """,
                )
            ),
            tcp(81, R()),
            tcp(80, R().expect_peer(ANY, X, False)),
        ),
    ),
    Case(
        "should allow ingress access from namespace on one named port",
        "TCP",
        (
            Apply(_allow_port_from_y("allow-client-a-via-ns-selector-80", "serve-80-tcp", "TCP")),
            tcp(
                80,
                R().expect_peer(X, Peer("x", "a"), False).expect_peer(Z, Peer("x", "a"), False),
            ),
            # reachabilityFAIL: port 81 is blocked for all namespaces including y
            tcp(81, R().expect_all_ingress("x/a", False)),
        ),
    ),
    Case(
        "should allow egress access on one named port",
        "TCP",
        (
            Apply(
                netpol(
                    "x",
                    "allow-egress",
                    """
                    podSelector: {}
                    policyTypes: [Egress]
                    egress:
                      - ports:
                          - port: serve-80-tcp
                    """,
                )
            ),
            tcp(80, R()),
            tcp(81, R().expect_peer(X, ANY, False)),
        ),
    ),
    Case(
        "should enforce updated policy",
        "TCP",
        (
            Apply(
                netpol(
                    "x",
                    "allow-all-mutate-to-deny-all",
                    """
                    podSelector: {}
                    policyTypes: [Ingress]
                    ingress:
                      - {}
                    """,
                )
            ),
            tcp(81, R()),
            # UpdatePolicy with policy.Spec.Ingress = []
            Apply(
                netpol(
                    "x",
                    "allow-all-mutate-to-deny-all",
                    """
                    podSelector: {}
                    policyTypes: [Ingress]
                    ingress: []
                    """,
                )
            ),
            tcp(81, R().expect_peer(ANY, X, False)),
        ),
    ),
    Case(
        "should allow ingress access from updated namespace",
        "TCP",
        (
            Apply(
                netpol(
                    "x",
                    "allow-client-a-via-ns-selector",
                    """
                    podSelector:
                      matchLabels: {pod: a}
                    policyTypes: [Ingress]
                    ingress:
                      - from:
                          - namespaceSelector:
                              matchLabels: {ns2: updated}
                    """,
                )
            ),
            tcp(80, R().expect_all_ingress("x/a", False)),
            # AddNamespaceLabel(ctx, k8s, nsY, "ns2", "updated")
            LabelNamespace("y", ("ns2=updated",)),
            tcp(80, R().expect_all_ingress("x/a", False).expect_peer(Y, ANY, True)),
        ),
    ),
    Case(
        "should allow ingress access from updated pod",
        "TCP",
        (
            Apply(
                netpol(
                    "x",
                    "allow-client-a-via-pod-selector",
                    """
                    podSelector:
                      matchLabels: {pod: a}
                    policyTypes: [Ingress]
                    ingress:
                      - from:
                          - podSelector:
                              matchLabels: {pod: b, pod2: updated}
                    """,
                )
            ),
            tcp(80, R().expect_all_ingress("x/a", False)),
            # AddPodLabels(x/b, {pod: b, pod2: updated}): x/b already has pod=b, and kubectl
            # refuses to re-set an existing key without --overwrite, so only pod2 is added.
            LabelPod("x/b", ("pod2=updated",)),
            tcp(80, R().expect_all_ingress("x/a", False).expect("x/b", "x/a", True)),
        ),
    ),
    Case(
        "should deny ingress from pods on other namespaces",
        "TCP",
        (
            Apply(
                netpol(
                    "x",
                    "deny-empty-policy",
                    """
                    podSelector: {}
                    policyTypes: [Ingress]
                    ingress:
                      - from:
                          - podSelector: {}
                    """,
                )
            ),
            tcp(80, R().expect_peer(Y, X, False).expect_peer(Z, X, False)),
        ),
    ),
    Case(
        "should deny ingress access to updated pod",
        "TCP",
        (
            Apply(
                netpol(
                    "x",
                    "deny-ingress-via-label-selector",
                    """
                    podSelector:
                      matchLabels: {target: isolated}
                    policyTypes: [Ingress]
                    ingress: []
                    """,
                )
            ),
            tcp(80, R()),
            LabelPod("x/a", ("target=isolated",)),
            tcp(80, R().expect_all_ingress("x/a", False)),
        ),
    ),
    Case(
        "should deny egress from pods based on PodSelector",
        "TCP",
        (
            Apply(
                netpol(
                    "x",
                    "deny-egress-pod-a",
                    """
                    podSelector:
                      matchLabels: {pod: a}
                    policyTypes: [Egress]
                    egress: []
                    """,
                )
            ),
            tcp(80, R().expect_all_egress("x/a", False)),
        ),
    ),
    Case(
        "should deny egress from all pods in a namespace",
        "TCP",
        (
            Apply(
                netpol(
                    "x",
                    "deny-egress-ns-x",
                    """
                    podSelector: {}
                    policyTypes: [Egress]
                    egress: []
                    """,
                )
            ),
            tcp(80, R().expect_peer(X, ANY, False)),
        ),
    ),
    Case(
        "should work with Ingress, Egress specified together",
        "TCP",
        (
            Apply(
                netpol(
                    "x",
                    "allow-client-a-via-pod-selector",
                    """
                    podSelector:
                      matchLabels: {pod: a}
                    policyTypes: [Egress, Ingress]
                    ingress:
                      - from:
                          - podSelector:
                              matchLabels: {pod: b}
                    egress:
                      - ports:
                          - port: 80
                    """,
                )
            ),
            tcp(80, R().expect_all_ingress("x/a", False).expect("x/b", "x/a", True)),
            tcp(
                81,
                R()
                .expect_all_ingress("x/a", False)
                .expect_all_egress("x/a", False)
                .expect("x/b", "x/a", True),
            ),
        ),
    ),
    Case(
        "should support denying of egress traffic on the client side (even if the server "
        "explicitly allows this traffic)",
        "TCP",
        (
            Apply(
                docs(
                    netpol(
                        "x",
                        "allow-to-ns-y-pod-a",
                        """
                        podSelector:
                          matchLabels: {pod: a}
                        policyTypes: [Egress]
                        egress:
                          - to:
                              - namespaceSelector:
                                  matchLabels: {kubernetes.io/metadata.name: y}
                                podSelector:
                                  matchLabels: {pod: a}
                        """,
                    ),
                    netpol(
                        "y",
                        "allow-from-xa-on-ya-match-selector",
                        """
                        podSelector:
                          matchLabels: {pod: a}
                        policyTypes: [Ingress]
                        ingress:
                          - from:
                              - namespaceSelector:
                                  matchLabels: {kubernetes.io/metadata.name: x}
                                podSelector:
                                  matchLabels: {pod: a}
                        """,
                    ),
                    netpol(
                        "y",
                        "allow-from-xa-on-yb-match-selector",
                        """
                        podSelector:
                          matchLabels: {pod: b}
                        policyTypes: [Ingress]
                        ingress:
                          - from:
                              - namespaceSelector:
                                  matchLabels: {kubernetes.io/metadata.name: x}
                                podSelector:
                                  matchLabels: {pod: a}
                        """,
                    ),
                )
            ),
            tcp(
                80,
                R()
                .expect_peer(Peer("x", "a"), ANY, False)
                .expect_peer(ANY, Peer("y", "a"), False)
                .expect_peer(Peer("x", "a"), Peer("y", "a"), True)
                .expect_peer(ANY, Peer("y", "b"), False),
            ),
        ),
    ),
    Case(
        "should enforce egress policy allowing traffic to a server in a different namespace "
        "based on PodSelector and NamespaceSelector",
        "TCP",
        (
            Apply(
                netpol(
                    "x",
                    "allow-to-ns-y-pod-a",
                    """
                    podSelector:
                      matchLabels: {pod: a}
                    policyTypes: [Egress]
                    egress:
                      - to:
                          - namespaceSelector:
                              matchLabels: {kubernetes.io/metadata.name: y}
                            podSelector:
                              matchLabels: {pod: a}
                    """,
                )
            ),
            tcp(80, R().expect_all_egress("x/a", False).expect("x/a", "y/a", True)),
        ),
    ),
    Case(
        "should enforce ingress policy allowing any port traffic to a server on a specific "
        "protocol",
        "TCP",
        (
            Apply(
                netpol(
                    "x",
                    "allow-ingress-by-proto",
                    """
                    podSelector:
                      matchLabels: {pod: a}
                    policyTypes: [Ingress]
                    ingress:
                      - ports:
                          - protocol: TCP
                    """,
                )
            ),
            tcp(80, R()),
            udp(80, R().expect_peer(ANY, Peer("x", "a"), False)),
        ),
    ),
    Case(
        "should enforce multiple ingress policies with ingress allow-all policy taking precedence",
        "TCP",
        (
            Apply(
                netpol(
                    "x",
                    "allow-ingress-port-80",
                    """
                    podSelector: {}
                    policyTypes: [Ingress]
                    ingress:
                      - ports:
                          - port: 80
                    """,
                )
            ),
            tcp(81, R().expect_peer(ANY, X, False)),
            Apply(
                netpol(
                    "x",
                    "allow-ingress",
                    """
                    podSelector: {}
                    policyTypes: [Ingress]
                    ingress:
                      - {}
                    """,
                )
            ),
            tcp(81, R()),
        ),
    ),
    Case(
        "should enforce multiple egress policies with egress allow-all policy taking precedence",
        "TCP",
        (
            Apply(
                netpol(
                    "x",
                    "allow-egress-port-80",
                    """
                    podSelector: {}
                    policyTypes: [Egress]
                    egress:
                      - ports:
                          - port: 80
                    """,
                )
            ),
            tcp(81, R().expect_peer(X, ANY, False)),
            Apply(
                netpol(
                    "x",
                    "allow-egress",
                    """
                    podSelector: {}
                    policyTypes: [Egress]
                    egress:
                      - {}
                    """,
                )
            ),
            tcp(81, R()),
        ),
    ),
    Case(
        "should stop enforcing policies after they are deleted",
        "TCP",
        (
            Apply(DENY_ALL_X),
            tcp(80, R().expect_peer(X, ANY, False).expect_peer(ANY, X, False)),
            # k8s.cleanNetworkPolicies: every policy of x, y and z (only x/deny-all exists)
            Delete(DENY_ALL_X),
            tcp(80, R()),
        ),
    ),
    Case(
        "should allow egress access to server in CIDR block",
        "TCP",
        (
            Apply(
                netpol(
                    "x",
                    "allow-client-a-via-cidr-egress-rule",
                    """
                    podSelector:
                      matchLabels: {pod: a}
                    policyTypes: [Egress]
                    egress:
                      - to:
                          - ipBlock:
                              cidr: "{{cidr32:y/b}}"
                    """,
                )
            ),
            tcp(80, R().expect_all_egress("x/a", False).expect("x/a", "y/b", True)),
        ),
    ),
    Case(
        "should enforce except clause while egress access to server in CIDR block",
        "TCP",
        (
            # podServerAllowCIDR: "<x/a IP>/4" (later versions: makeLargeCIDRForIP, the /4
            # holding the pod; the API server wants it without host bits, as here).
            Apply(EGRESS_X_A_EXCEPT_X_B),
            tcp(80, R().expect("x/a", "x/b", False)),
        ),
    ),
    Case(
        "should ensure an IP overlapping both IPBlock.CIDR and IPBlock.Except is allowed",
        "TCP",
        (
            Apply(EGRESS_X_A_EXCEPT_X_B),
            tcp(80, R().expect("x/a", "x/b", False)),
            # UpdatePolicy: the same name, now only x/b's /32
            Apply(
                netpol(
                    "x",
                    "allow-client-a-via-cidr-egress-rule",
                    """
                    podSelector:
                      matchLabels: {pod: a}
                    policyTypes: [Egress]
                    egress:
                      - to:
                          - ipBlock:
                              cidr: "{{cidr32:x/b}}"
                    """,
                )
            ),
            tcp(80, R().expect_all_egress("x/a", False).expect("x/a", "x/b", True)),
        ),
    ),
    Case(
        "should enforce policies to check ingress and egress policies can be controlled "
        "independently based on PodSelector",
        "TCP",
        (
            Apply(
                netpol(
                    "x",
                    "allow-egress-for-target",
                    """
                    podSelector:
                      matchLabels: {pod: a}
                    policyTypes: [Egress]
                    egress:
                      - {}
                    """,
                )
            ),
            tcp(80, R()),
            Apply(
                netpol(
                    "x",
                    "deny-ingress-via-label-selector",
                    """
                    podSelector:
                      matchLabels: {pod: a}
                    policyTypes: [Ingress]
                    ingress: []
                    """,
                )
            ),
            tcp(80, R().expect_all_ingress("x/a", False)),
        ),
    ),
    Case(
        "should not mistakenly treat 'protocol: SCTP' as 'protocol: TCP', even if the plugin "
        "doesn't support SCTP",
        "TCP",
        (
            Apply(DENY_INGRESS_X),
            Apply(_allow_ingress_to_x_a_on("allow-only-sctp-ingress-on-port-81", 81, "SCTP")),
            tcp(81, R().expect_peer(ANY, X, False)),
        ),
    ),
    Case(
        "should properly isolate pods that are selected by a policy allowing SCTP, even if the "
        "plugin doesn't support SCTP",
        "TCP",
        (
            Apply(_allow_ingress_to_x_a_on("allow-only-sctp-ingress-on-port-80", 80, "SCTP")),
            tcp(81, R().expect_all_ingress("x/a", False)),
        ),
    ),
    Case(
        "should not allow access by TCP when a policy specifies only SCTP",
        "TCP",
        (
            Apply(_allow_ingress_to_x_a_on("allow-only-sctp-ingress-on-port-81", 81, "SCTP")),
            tcp(81, R().expect_all_ingress("x/a", False)),
        ),
        note="the name of this case up to Kubernetes 1.2x (e.g. the [Feature:Netpol] layout of "
        "1.20); later versions split it into the two SCTP cases above",
    ),
    Case(
        "should not allow access by TCP when a policy specifies only UDP",
        "TCP",
        (
            Apply(_allow_ingress_to_x_a_on("allow-only-udp-ingress-on-port-81", 81, "UDP")),
            tcp(81, R().expect_all_ingress("x/a", False)),
        ),
    ),
    Case(
        "should enforce policy to allow traffic based on NamespaceSelector with MatchLabels "
        "using default ns label",
        "TCP",
        (
            Apply(
                netpol(
                    "x",
                    "allow-client-a-via-ns-selector-for-immutable-ns-label",
                    """
                    podSelector:
                      matchLabels: {pod: a}
                    policyTypes: [Ingress]
                    ingress:
                      - from:
                          - namespaceSelector:
                              matchLabels: {kubernetes.io/metadata.name: y}
                    """,
                )
            ),
            tcp(
                80,
                R().expect_peer(X, Peer("x", "a"), False).expect_peer(Z, Peer("x", "a"), False),
            ),
        ),
    ),
    Case(
        "should enforce policy based on NamespaceSelector with MatchExpressions using default "
        "ns label",
        "TCP",
        (
            Apply(
                netpol(
                    "x",
                    "allow-ns-y-match-selector-for-immutable-ns-label",
                    """
                    podSelector:
                      matchLabels: {pod: a}
                    policyTypes: [Egress]
                    egress:
                      - to:
                          - namespaceSelector:
                              matchExpressions:
                                - {key: kubernetes.io/metadata.name, operator: NotIn, values: [y]}
                    """,
                )
            ),
            tcp(80, R().expect_peer(Peer("x", "a"), Y, False)),
        ),
    ),
)


def _per_protocol(context: str, protocol: str, skip: str = "") -> tuple[Case, ...]:
    """The three cases upstream repeats for UDP and SCTP."""
    probe = {"UDP": udp, "SCTP": sctp}[protocol]
    return (
        Case(
            "should support a 'default-deny-ingress' policy",
            context,
            (
                Apply(
                    netpol(
                        "x",
                        "deny-all",
                        """
                        podSelector: {}
                        policyTypes: [Ingress]
                        ingress: []
                        """,
                    )
                ),
                probe(80, R().expect_peer(ANY, X, False)),
            ),
            skip=skip,
        ),
        Case(
            "should enforce policy based on Ports",
            context,
            (
                Apply(_allow_port_from_y("allow-ingress-on-port-81-ns-x", 81, protocol)),
                probe(
                    81,
                    R().expect_peer(X, Peer("x", "a"), False).expect_peer(Z, Peer("x", "a"), False),
                ),
            ),
            skip=skip,
        ),
        Case(
            "should enforce policy to allow traffic only from a pod in a different namespace "
            "based on PodSelector and NamespaceSelector",
            context,
            (
                Apply(ALLOW_X_A_FROM_Y_A),
                probe(80, R().expect_all_ingress("x/a", False).expect("y/a", "x/a", True)),
            ),
            skip=skip,
        ),
    )


CASES: tuple[Case, ...] = (
    *_TCP_CASES,
    *_per_protocol("UDP", "UDP"),
    *_per_protocol("SCTP", "SCTP", skip=_NEEDS_SCTP),
)


# ---------------------------------------------------------------- the course's seed scenarios


def example(name: str) -> str:
    """The text of examples/policies/<name>.yaml, applied unmodified."""
    return (EXAMPLES / f"{name}.yaml").read_text()


def S() -> Reachability:
    """NewReachability over the seed topology's pods."""
    return Reachability(True, SEED_PODS)


MYAPP = "default/myapp-v1"


def _seed(name: str, title: str, expect: Reachability) -> Case:
    return Case(
        f"{name}: {title}",
        "seed",
        (Apply(example(name)), tcp(80, expect), udp(80, expect)),
        topology="netpol-seed",
    )


SEED_CASES: tuple[Case, ...] = (
    _seed(
        "test-network-policy-v1",
        "a podSelector peer selects role=test in the policy's own namespace only",
        S().expect_all_ingress(MYAPP, False).expect("default/client-test", MYAPP, True),
    ),
    _seed(
        "test-network-policy-v2",
        "a namespaceSelector peer admits every pod of the project=test namespaces",
        S()
        .expect_all_ingress(MYAPP, False)
        .expect_peer(Peer("test"), Peer("default", "myapp-v1"), True),
    ),
    _seed(
        "test-network-policy-v3",
        "one peer with both selectors is an AND",
        S().expect_all_ingress(MYAPP, False).expect("test/tester", MYAPP, True),
    ),
    _seed(
        "test-network-policy-v4",
        "two peers are an OR",
        S()
        .expect_all_ingress(MYAPP, False)
        .expect_peer(Peer("test"), Peer("default", "myapp-v1"), True)
        .expect("default/client-test", MYAPP, True),
    ),
    _seed(
        "test-network-policy-v5",
        "an ipBlock with an except matches addresses, not labels",
        S()
        .expect_all_ingress(MYAPP, False)
        .expect("default/client-test", MYAPP, True)
        .expect("frontend/web", MYAPP, True),
    ),
    _seed(
        "allow-namespace",
        "a namespace accepts only namespaces labelled role=frontend",
        S()
        .expect_peer(ANY, Peer("backend"), False)
        .expect_peer(Peer("frontend"), Peer("backend"), True),
    ),
    _seed(
        "deny-egress",
        "policyTypes [Egress] with no rules: app=backend sends nothing",
        S().expect_all_egress("backend/api", False),
    ),
)


# ---------------------------------------------------------------- an in-memory cluster


class Cluster:
    """The cluster state a case acts on, for checking cases against labctl's evaluator.

    Starts from a topology (namespace labels plus the automatic kubernetes.io/metadata.name,
    pod labels, ports and addresses) and applies steps as the API server would: Apply replaces
    policies by namespace/name, Delete removes them, Label* edit labels the way `kubectl label`
    does (no --overwrite). `observe(protocol, port)` asks labctl's evaluator for the matrix.
    """

    def __init__(self, topology: str | Path = "netpol-xyz") -> None:
        from labctl.topology import load_topology

        topo = load_topology(topology)
        self.topology = topo
        self.pod_ips: dict[str, str] = {k: str(v) for k, v in topo.pod_ips.items()}
        names = {"default", *topo.namespaces, *(p.namespace for p in topo.pods)}
        self.namespace_labels: dict[str, dict[str, str]] = {
            ns: topo.namespace_labels(ns) for ns in sorted(names)
        }
        self.pod_labels: dict[str, dict[str, str]] = {p.key: dict(p.labels) for p in topo.pods}
        self.policies: dict[str, Any] = {}  # "ns/name" -> labctl.policy.model.NetworkPolicy

    # ---- steps

    def run(self, step: Step) -> None:
        """Carry out a non-probe step."""
        if isinstance(step, Apply):
            self.apply(step.yaml)
        elif isinstance(step, Delete):
            self.delete(step.yaml)
        elif isinstance(step, LabelNamespace):
            self._label(self.namespace_labels, step.namespace, "namespace", step.args)
        elif isinstance(step, LabelPod):
            self._label(self.pod_labels, step.pod, "pod", step.args)
        else:
            raise TypeError(f"not an action step: {step!r}")

    def _documents(self, text: str) -> list[dict[str, Any]]:
        out = [d for d in yaml.safe_load_all(materialize(text, self.pod_ips)) if d is not None]
        for d in out:
            if not isinstance(d, dict) or d.get("kind") != "NetworkPolicy":
                raise ValueError(f"not a NetworkPolicy document: {d!r}")
        return out

    def apply(self, text: str) -> None:
        from labctl.k8s.manifests import Document, parse_objects
        from labctl.policy.model import NetworkPolicy

        data = self._documents(text)
        objects = parse_objects([Document("<case>", i, d) for i, d in enumerate(data, 1)])
        for obj in objects:
            assert isinstance(obj, NetworkPolicy), obj
            ns = obj.key.partition("/")[0]
            if ns not in self.namespace_labels:
                raise ValueError(f"{obj.key}: namespace {ns} does not exist")
            self.policies[obj.key] = obj

    def delete(self, text: str) -> None:
        for d in self._documents(text):
            meta = d.get("metadata", {})
            key = f"{meta.get('namespace', 'default')}/{meta['name']}"
            if key not in self.policies:
                raise KeyError(f"networkpolicy {key} not found")
            del self.policies[key]

    @staticmethod
    def _label(
        table: dict[str, dict[str, str]], target: str, what: str, args: Iterable[str]
    ) -> None:
        from labctl.k8s.meta import parse_label_args

        if target not in table:
            raise KeyError(f"{what} {target} not found")
        add, remove = parse_label_args(tuple(args))
        labels = table[target]
        for key in add:
            if key in labels:
                raise ValueError(
                    f"{what} {target}: {key!r} already has a value ({labels[key]}), "
                    "and --overwrite is false"
                )
        if what == "namespace" and "kubernetes.io/metadata.name" in (*add, *remove):
            raise ValueError("kubernetes.io/metadata.name is set by the API server; leave it")
        labels.update(add)
        for key in remove:
            labels.pop(key, None)

    # ---- probing

    def pod_infos(self) -> list[Any]:
        from labctl.policy.model import NamedPort, PodInfo

        return [
            PodInfo(
                namespace=p.namespace,
                name=p.name,
                ip=self.pod_ips[p.key],
                node=p.node,
                labels=dict(self.pod_labels[p.key]),
                ports=tuple(NamedPort(x.name, x.containerPort, x.protocol) for x in p.ports),
            )
            for p in self.topology.pods
        ]

    def observe(self, protocol: Protocol, port: int) -> Matrix:
        """labctl's evaluator's matrix for the current state, self pairs left out."""
        from labctl.policy.evaluate import matrix

        raw = matrix(
            list(self.policies.values()),
            {ns: dict(labels) for ns, labels in self.namespace_labels.items()},
            self.pod_infos(),
            port,
            protocol,
        )
        return {s: {d: bool(v) for d, v in row.items() if d != s} for s, row in raw.items()}


def check(case: Case, cluster: Cluster | None = None) -> list[str]:
    """Run a case against the evaluator; one failure report per probe that differs."""
    cluster = cluster or Cluster(case.topology)
    failures = []
    for i, step in enumerate(case.steps):
        if isinstance(step, Probe):
            expected = step.expect.matrix()
            observed = cluster.observe(step.protocol, step.port)
            if diff(expected, observed):
                title = f"{case.id} step {i + 1}: {step.protocol}/{step.port}"
                failures.append(report(title, expected, observed))
        else:
            cluster.run(step)
    return failures
