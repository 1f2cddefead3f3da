"""What the policy dataplane should do, and whether the nodes do it: the expected truth table
from the reference evaluator (or all-open where the mode enforces nothing), a probe's truth
table compared with it, and a check that each node's kernel table is the compiled one."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from labctl.nsutil import nsenter_argv
from labctl.policy.compile import TABLE, NodeRuleset, compile_all
from labctl.policy.evaluate import allowed
from labctl.probe import Result, default_port
from labctl.store import PodRecord, Store
from labctl.wire import CheckResult

if TYPE_CHECKING:
    from labctl.modes import Mode

Pair = tuple[str, str]
#: Differences a failed table check names before it says how many more there are.
SHOWN = 3
#: nft processes the table check runs at once.
PARALLEL = 16


def expected(
    store: Store,
    enforced: bool,
    protocol: str,
    port: int | None,
    pairs: Iterable[tuple[PodRecord, PodRecord]] | None = None,
) -> dict[Pair, bool]:
    """Per ordered pod pair (every pair, or `pairs`): does Kubernetes allow a `protocol`
    connection to `port` (default: the destination's first port of that protocol)? All True
    where nothing enforces policy."""
    policies = store.policies()
    namespaces = store.namespace_labels()
    pods = list(store.pods.values())
    infos = {p.key: p.info() for p in pods}
    proto = protocol.upper()
    out: dict[Pair, bool] = {}
    if pairs is None:
        pairs = ((s, d) for s in pods for d in pods if s.key != d.key)
    for src, dst in pairs:
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


def probe_timeout(expect: Mapping[Pair, bool]) -> float:
    """Seconds a probe waits for an answer: a policy drop gives none, so with blocked pairs
    expected it gives up after 1 s instead of 2."""
    return 2.0 if all(expect.values()) else 1.0


@dataclass(frozen=True)
class Difference:
    """A pod pair the probe saw otherwise than Kubernetes says."""

    src: str
    dst: str
    expected: bool
    observed: bool
    detail: str  # the probe's account: "ok", or why not (refused, timeout, ...)


@dataclass(frozen=True)
class TruthTable:
    """What a probe of every pod pair saw, against Kubernetes' answer."""

    mode: str
    enforced: bool  # whether the mode enforces NetworkPolicy
    protocol: str
    port: int | None  # the port asked for, else the first pod's default (what `-o json` shows)
    pods: tuple[str, ...]  # pod keys: the rows (from) and the columns (to), in this order
    observed: dict[str, dict[str, bool]]  # [src][dst]: answered
    expected: dict[str, dict[str, bool]]  # [src][dst]: Kubernetes allows it
    differences: tuple[Difference, ...]
    would_block: int  # pairs Kubernetes would block that this mode leaves open
    seconds: float  # how long the probe took

    @property
    def pairs(self) -> int:
        """Pod pairs probed."""
        return sum(len(row) for row in self.observed.values())

    @property
    def passed(self) -> bool:
        """True when every pair did what Kubernetes says."""
        return not self.differences

    @property
    def note(self) -> str:
        """What Kubernetes would have blocked where the mode enforces nothing ("" if nothing)."""
        if not self.would_block:
            return ""
        return (
            f"{self.mode} does not enforce NetworkPolicy: Kubernetes would block "
            f"{self.would_block} of these {self.pairs} pairs"
        )

    def rows(self) -> list[tuple[str, list[str]]]:
        """Per source pod, a cell per destination: '-' itself, '.' reachable, 'X' blocked, and
        a '!' after the cells that differ from Kubernetes' answer."""
        out = []
        for src in self.pods:
            cells = []
            for dst in self.pods:
                if src == dst:
                    cells.append("-")
                    continue
                seen = self.observed[src][dst]
                cells.append(
                    ("." if seen else "X") + ("" if seen == self.expected[src][dst] else "!")
                )
            out.append((src, cells))
        return out

    def to_dict(self) -> dict[str, Any]:
        """The `probe -o json` document."""
        return {
            "protocol": self.protocol,
            "port": self.port,
            "matrix": self.observed,
            "expected": self.expected,
            "enforcesPolicy": self.enforced,
            "seconds": self.seconds,
            "mismatches": [
                {"src": d.src, "dst": d.dst, "observed": d.observed, "detail": d.detail}
                for d in self.differences
            ],
        }


def truth_table(
    store: Store,
    mode: Mode,
    protocol: str,
    port: int | None,
    expect: Mapping[Pair, bool],
    results: Sequence[Result],
    seconds: float,
) -> TruthTable:
    """Compare a probe's `results` with `expect` (what `expected` said for the same store,
    mode, protocol and port; the probe needed it first)."""
    pods = list(store.pods.values())
    observed: dict[str, dict[str, bool]] = {p.key: {} for p in pods}
    for r in results:
        observed[r.src][r.dst] = r.ok
    differences = tuple(
        Difference(r.src, r.dst, expect[(r.src, r.dst)], r.ok, r.detail)
        for r in results
        if r.ok != expect[(r.src, r.dst)]
    )
    return TruthTable(
        mode=mode.name,
        enforced=mode.enforces_policy,
        protocol=protocol,
        port=port or (default_port(pods[0], protocol) if pods else None),
        pods=tuple(p.key for p in pods),
        observed=observed,
        expected={
            p.key: {q.key: expect[(p.key, q.key)] for q in pods if q.key != p.key} for p in pods
        },
        differences=differences,
        would_block=0 if mode.enforces_policy else blocked_by_kubernetes(store, protocol, port),
        seconds=round(seconds, 3),
    )


# --- the kernel's table against the compiled one ---------------------------------------------


def _nft_objects(listing: str) -> dict[tuple[str, str], dict[str, Any]]:
    """Sets, maps and chains (each with its rules, in order) of an `nft -j list table`,
    keyed by kind and name, without the kernel's handles and with elements sorted (a hash
    set lists them in no fixed order)."""
    items = json.loads(listing).get("nftables", [])
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for item in items:
        for kind in ("set", "map", "chain"):
            if kind in item:
                obj = {k: v for k, v in item[kind].items() if k != "handle"}
                if "elem" in obj:
                    obj["elem"] = sorted(obj["elem"], key=lambda e: json.dumps(e, sort_keys=True))
                if kind == "chain":
                    obj["rules"] = []
                out[(kind, obj["name"])] = obj
    for item in items:
        if "rule" in item:
            rule = {k: v for k, v in item["rule"].items() if k != "handle"}
            out[("chain", rule["chain"])]["rules"].append(rule)
    return out


def _element(elem: Any) -> str:
    """One set or map element, short: a map's key, a plain value, else its JSON."""
    if isinstance(elem, list):
        return str(elem[0])
    return elem if isinstance(elem, str) else json.dumps(elem, sort_keys=True)


def table_differences(live: str, compiled: str) -> list[str]:
    """How the node's table (`nft -j list table`) differs from the compiled one loaded into an
    empty namespace (same listing): one line per set, map or chain that is missing,
    unexpected or changed. Both sides are the kernel's own rendering, so nothing is lost or
    misread in translation."""
    have, want = _nft_objects(live), _nft_objects(compiled)
    out = []
    for (kind, name), obj in want.items():
        seen = have.get((kind, name))
        if seen is None:
            out.append(f"missing {kind} {name}")
        elif kind == "chain" and seen["rules"] != obj["rules"]:
            n, m = len(seen["rules"]), len(obj["rules"])
            if n != m:
                out.append(f"chain {name} has {n} rules, compiled {m}")
            else:
                i = next(
                    i
                    for i, (a, b) in enumerate(zip(seen["rules"], obj["rules"], strict=True))
                    if a != b
                )
                out.append(f"chain {name} rule {i + 1} differs from the compiled one")
        elif seen != obj:
            elems, wanted = seen.get("elem", []), obj.get("elem", [])
            lost = [_element(e) for e in wanted if e not in elems]
            added = [_element(e) for e in elems if e not in wanted]
            what = "; ".join(
                f"{label} {', '.join(xs[:SHOWN])}{' ...' if len(xs) > SHOWN else ''}"
                for label, xs in (("missing", lost), ("unexpected", added))
                if xs
            )
            out.append(f"{kind} {name} differs" + (f": {what}" if what else ""))
    out += [f"unexpected {kind} {name}" for kind, name in have if (kind, name) not in want]
    return out


def _nft_listing(argv: list[str], text: str | None = None) -> tuple[str, str]:
    """(stdout, "") of an nft listing, or ("", its complaint)."""
    try:
        proc = subprocess.run(argv, input=text, capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "", "nft did not answer within 30 s"
    if proc.returncode != 0:
        return "", proc.stderr.strip() or f"exit {proc.returncode}"
    return proc.stdout, ""


def table_checks(rulesets: Mapping[str, NodeRuleset], pids: Mapping[str, int]) -> list[CheckResult]:
    """Each node's kernel holds exactly the compiled table: every set, map, chain and rule.

    The compiled text is loaded into a throwaway network namespace (`unshare --net`, gone
    when nft exits) so that the kernel renders both sides alike; all nodes at once."""
    listing = ["nft", "-j", "list", "table", "ip", TABLE]
    # Load, then list, in one shell so that both see the same new namespace.
    scratch = ["unshare", "--net", "--", "sh", "-ec", f"nft -f -; {' '.join(listing)}"]
    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        live = {
            node: pool.submit(_nft_listing, nsenter_argv(pids[node], listing, mount=False))
            for node in rulesets
        }
        want = {node: pool.submit(_nft_listing, scratch, rs.text) for node, rs in rulesets.items()}
    out = []
    for node, rs in sorted(rulesets.items()):
        name = f"policy table {node}"
        (have_text, have_err), (want_text, want_err) = live[node].result(), want[node].result()
        if have_err:
            out.append(CheckResult(name, False, f"no table ip {TABLE}: {have_err}"))
            continue
        if want_err:
            out.append(CheckResult(name, False, f"the compiled table does not load: {want_err}"))
            continue
        problems = table_differences(have_text, want_text)
        detail = f"{len(rs.chains)} chains, {len(rs.endpoints)} endpoints, {rs.rules} rules"
        if problems:
            more = f" (+{len(problems) - SHOWN} more)" if len(problems) > SHOWN else ""
            detail += "; differs from the compiled table: " + "; ".join(problems[:SHOWN]) + more
        else:
            detail += ", as compiled"
        out.append(CheckResult(name, not problems, detail))
    return out


def compiled(store: Store, nodes: Sequence[str]) -> dict[str, NodeRuleset]:
    """What every node should hold for the store's current objects."""
    return compile_all(nodes, store.policies(), store.namespace_labels(), store.pod_infos())
