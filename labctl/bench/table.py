"""The answer table for people (rich): one line per row, medians with their spread, ratios
to the underlay and whether a mode is within 10% of the hand-built reference."""

from __future__ import annotations

from rich.table import Table

from labctl.bench.model import REFERENCE_TOLERANCE, Report, Row, Stat

COLUMNS = (
    "row",
    "datapath",
    "wire +bytes, pod MTU",
    "Gbit/s 1 stream",
    "Gbit/s 4 streams",
    "1 stream x underlay",
    "req/resp per s",
    "p50 / p99 us",
    "CPU cores per Gbit/s",
    "vs reference 1 / 4 streams",
)


def cell(stat: Stat, digits: int = 2) -> str:
    """ "median ±spread%"; the spread is (max - min) / median over the repeats."""
    return f"{stat.median:.{digits}f} ±{stat.spread * 100:.0f}%"


def reference_cell(row: Row) -> str:
    """ "0.97 / 1.02 yes" (within the tolerance) or "0.80 / 0.85 NO", or "-" without one."""
    if row.withinReference is None:
        return "-"
    one, four = row.vsReference.get("tcp1"), row.vsReference.get("tcp4")
    verdict = "yes" if row.withinReference else "[red]NO[/red]"
    return f"{one:.2f} / {four:.2f} {verdict}"


def render(report: Report) -> Table:
    """The rich Table of a finished report."""
    t = Table(
        *COLUMNS,
        title=(
            f"labctl bench: pod to pod on two-node.yaml, median of {report.repeats} x "
            f"{report.duration:g} s (machine shared: load {report.loadavg.split()[0]} at start)"
        ),
        caption=(
            f"reference = the same datapath hand-built with ip commands; 'yes' = within "
            f"{REFERENCE_TOLERANCE:.0%} of it. Files: {', '.join(report.files.values()) or '-'}"
        ),
    )
    for r in report.rows:
        f = r.figures
        vs = r.vsUnderlay.get("tcp1")
        t.add_row(
            r.name,
            r.datapath,
            f"{r.wire} +{r.overheadBytes}, {r.podMtu}",
            cell(f["tcp1"]),
            cell(f["tcp4"]),
            f"{vs:.2f}" if vs is not None else "-",
            cell(f["rr"], 0),
            f"{f['p50'].median:.0f} / {f['p99'].median:.0f}",
            cell(f["cpuPerGbps"], 3),
            reference_cell(r),
        )
    return t
