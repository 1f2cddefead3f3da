"""What the policy dataplane should do, and whether the nodes hold it: the expected truth
table from the reference evaluator (or all-open where the mode enforces nothing), and a
check that each node's kernel table is the compiled one."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping, Sequence

from labctl.nsutil import nsenter_argv
from labctl.policy.compile import TABLE, NodeRuleset, compile_all
from labctl.policy.evaluate import allowed
from labctl.probe import default_port
from labctl.store import Store
from labctl.wire import CheckResult

Pair = tuple[str, str]


def expected(store: Store, enforced: bool, protocol: str, port: int | None) -> dict[Pair, bool]:
    """Per ordered pod pair: does Kubernetes allow a `protocol` connection to `port` (default:
    the destination's first port of that protocol)? All True where nothing enforces policy."""
    policies = store.policies()
    namespaces = store.namespace_labels()
    pods = list(store.pods.values())
    infos = {p.key: p.info() for p in pods}
    proto = protocol.upper()
    out: dict[Pair, bool] = {}
    for src in pods:
        for dst in pods:
            if src.key == dst.key:
                continue
            if not enforced or not policies:
                out[(src.key, dst.key)] = True
                continue
            dport = 0 if proto == "ICMP" else (port or default_port(dst, protocol))
            out[(src.key, dst.key)] = allowed(
                policies,
                namespaces,
                infos[src.key],
                infos[dst.key],
                dport,
                proto,  # type: ignore[arg-type]
            )
    return out


def blocked_by_kubernetes(store: Store, protocol: str, port: int | None) -> int:
    """Pairs the stored policies would block if something enforced them (for flannel's note)."""
    return sum(not ok for ok in expected(store, True, protocol, port).values())


def _kernel_table(pid: int) -> dict[str, set[str]]:
    """Chain names and dispatched interfaces of the node's `ip calico` table."""
    proc = subprocess.run(
        nsenter_argv(pid, ["nft", "-j", "list", "table", "ip", TABLE], mount=False),
        capture_output=True,
        text=True,
        timeout=10,
    )
    if proc.returncode != 0:
        return {"chains": set(), "endpoints": set(), "missing": {proc.stderr.strip()}}
    chains: set[str] = set()
    endpoints: set[str] = set()
    for item in json.loads(proc.stdout).get("nftables", []):
        if "chain" in item:
            chains.add(item["chain"]["name"])
        elif "map" in item:
            for elem in item["map"].get("elem", []):
                endpoints.add(elem[0] if isinstance(elem, list) else str(elem))
    return {"chains": chains, "endpoints": endpoints, "missing": set()}


def table_checks(rulesets: Mapping[str, NodeRuleset], pids: Mapping[str, int]) -> list[CheckResult]:
    """Each node's kernel holds the compiled table: every chain, every pod interface."""
    out = []
    for node, rs in sorted(rulesets.items()):
        seen = _kernel_table(pids[node])
        if seen["missing"]:
            out.append(
                CheckResult(
                    f"policy table {node}",
                    False,
                    f"no table ip {TABLE}: " + "; ".join(seen["missing"]),
                )
            )
            continue
        missing = [c for c in rs.chains if c not in seen["chains"]]
        extra = sorted(seen["chains"] - set(rs.chains))
        unknown = sorted(set(rs.endpoints) - seen["endpoints"])
        ok = not missing and not extra and not unknown
        detail = f"{len(rs.chains)} chains, {len(rs.endpoints)} endpoints, {rs.rules} rules"
        if missing:
            detail += f"; missing chains {', '.join(missing[:3])}"
        if extra:
            detail += f"; unexpected chains {', '.join(extra[:3])}"
        if unknown:
            detail += f"; interfaces not dispatched {', '.join(unknown[:3])}"
        out.append(CheckResult(f"policy table {node}", ok, detail))
    return out


def compiled(store: Store, nodes: Sequence[str]) -> dict[str, NodeRuleset]:
    """What every node should hold for the store's current objects."""
    return compile_all(nodes, store.policies(), store.namespace_labels(), store.pod_infos())
