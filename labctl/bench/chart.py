"""The answer table as a picture: throughput (1 and 4 streams) and round-trip latency
(p50, p99) per row, medians with the repeats' min..max as error bars."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from labctl.bench.model import Report, Row


def _bars(ax: Any, rows: list[Row], metrics: tuple[str, str], labels: tuple[str, str]) -> None:
    height = 0.4
    for k, (metric, label) in enumerate(zip(metrics, labels, strict=True)):
        ys = [i + (k - 0.5) * height for i in range(len(rows))]
        stats = [r.figures[metric] for r in rows]
        meds = [s.median for s in stats]
        err = [[s.median - s.min for s in stats], [s.max - s.median for s in stats]]
        ax.barh(ys, meds, height, xerr=err, label=label, capsize=2)
    ax.set_yticks(range(len(rows)), [f"{r.name} ({r.datapath})" for r in rows])
    ax.legend(loc="lower right", fontsize="small")
    ax.grid(axis="x", alpha=0.3)


def write(report: Report, path: Path) -> Path:
    """Draw the report's rows into a PNG at `path` (matplotlib, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report.rows
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(12, 1.2 + 0.45 * len(rows)), sharey=True, layout="constrained"
    )
    _bars(left, rows, ("tcp1", "tcp4"), ("TCP, 1 stream", "TCP, 4 streams"))
    left.set_xlabel("Gbit/s (median; bars: min..max of repeats)")
    _bars(right, rows, ("p50", "p99"), ("p50", "p99"))
    right.set_xscale("log")  # p99 can be 100x p50 on a loaded machine
    right.set_xlabel("request/response round trip, microseconds (log scale)")
    left.invert_yaxis()  # first row on top (the axes share y: invert once)
    fig.suptitle(
        f"labctl bench, pod to pod on two-node.yaml: {report.repeats} x {report.duration:g} s "
        f"per test, {report.cpus} shared cores, kernel {report.kernel}",
        fontsize="medium",
    )
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
