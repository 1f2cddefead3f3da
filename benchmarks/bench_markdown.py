"""Markdown for docs/performance.md from a `labctl bench` JSON file: the answer table and the
seed claims with the measured ratios, so re-running is one command and one paste.

Usage: ``python benchmarks/bench_markdown.py captures/<lab>/bench/<time>.json``
(or ``labctl bench -o json | python benchmarks/bench_markdown.py -``)
"""

from __future__ import annotations

import json
import sys
from typing import Any


def _med(rows: dict[str, Any], name: str, metric: str = "tcp1") -> float | None:
    row = rows.get(name)
    return row["figures"][metric]["median"] if row else None


def _ratio(rows: dict[str, Any], a: str, b: str, metric: str = "tcp1") -> str:
    x, y = _med(rows, a, metric), _med(rows, b, metric)
    return f"{x / y:.2f}" if x and y else "not measured"


def table(doc: dict[str, Any]) -> str:
    """The answer table, one line per row."""
    lines = [
        "| row | datapath | wire +bytes, pod MTU | Gbit/s 1 / 4 streams (spread) | x underlay "
        "| req/resp per s | p50 / p99 us | CPU cores per Gbit/s | vs reference |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["rows"]:
        f = r["figures"]
        ref = r["vsReference"]
        verdict = (
            "-"
            if r["withinReference"] is None
            else f"{ref['tcp1']:.2f} / {ref['tcp4']:.2f} {'yes' if r['withinReference'] else 'no'}"
        )
        lines.append(
            f"| {r['name']} | {r['datapath']} | {r['wire']} +{r['overheadBytes']}, {r['podMtu']} "
            f"| {f['tcp1']['median']:.2f} / {f['tcp4']['median']:.2f} "
            f"(±{f['tcp1']['spread'] * 100:.0f}% / ±{f['tcp4']['spread'] * 100:.0f}%) "
            f"| {r['vsUnderlay']['tcp1']:.2f} | {f['rr']['median']:.0f} "
            f"| {f['p50']['median']:.0f} / {f['p99']['median']:.0f} "
            f"| {f['cpuPerGbps']['median']:.3f} | {verdict} |"
        )
    return "\n".join(lines)


def claims(doc: dict[str, Any]) -> str:
    """Each seed claim next to the ratio this run measured (1-stream medians)."""
    rows = {r["name"]: r for r in doc["rows"]}
    vx, hg = "flannel-vxlan", "flannel-host-gw"
    ipip_dp = rows.get("calico-ipip", {}).get("datapath")
    lines = [
        "| seed claim | measured ratio (1-stream throughput medians) |",
        "|---|---|",
        f"| host-gw / BGP near line rate | flannel-host-gw {_ratio(rows, hg, 'underlay')}"
        f"x underlay, calico-bgp {_ratio(rows, 'calico-bgp', 'underlay')}x |",
        f"| VXLAN loses 10-15% | flannel-vxlan / flannel-host-gw "
        f"{_ratio(rows, vx, hg)}; calico-vxlan / calico-bgp "
        f"{_ratio(rows, 'calico-vxlan', 'calico-bgp')}; reference vxlan / reference host-gw "
        f"{_ratio(rows, 'reference vxlan', 'reference host-gw')} |",
        f"| IPIP lighter than VXLAN | calico-ipip ({ipip_dp}) / "
        f"calico-vxlan {_ratio(rows, 'calico-ipip', 'calico-vxlan')}; flannel-ipip / "
        f"flannel-vxlan {_ratio(rows, 'flannel-ipip', vx)} |",
        f"| UDP (userspace) costs up to 30% | flannel-udp / flannel-vxlan "
        f"{_ratio(rows, 'flannel-udp', vx)}; CPU per Gbit/s "
        f"{_ratio(rows, 'flannel-udp', vx, 'cpuPerGbps')}x flannel-vxlan's |",
    ]
    return "\n".join(lines)


def main() -> int:
    """Print both tables for the JSON file named on the command line ('-': stdin)."""
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    src = sys.stdin if sys.argv[1] == "-" else open(sys.argv[1])  # noqa: SIM115
    doc = json.load(src)
    print(
        f"{doc['started']}, {doc['repeats']} x {doc['duration']} s per test, {doc['cpus']} "
        f"cores, kernel {doc['kernel']}, load average at start {doc['loadavg'].split()[0]}\n"
    )
    print(table(doc) + "\n\n" + claims(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
