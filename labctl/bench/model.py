"""The answer table's results as data: one Sample per repeat and target, summarised into
Rows (median, spread, ratios to the underlay and to the hand-built reference). Pure: no
processes, so percentiles, ratios and the JSON shape are unit-tested without root."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, Field

#: Figures of one sample, in table order, with their units and whether more is better.
METRICS: dict[str, tuple[str, bool]] = {
    "tcp1": ("Gbit/s, TCP 1 stream", True),
    "tcp4": ("Gbit/s, TCP 4 streams", True),
    "rr": ("request/response per s (1 byte, one outstanding)", True),
    "p50": ("round-trip p50 (us)", False),
    "p99": ("round-trip p99 (us)", False),
    "cpuPerGbps": ("CPU cores busy per Gbit/s (1 stream)", False),
}

#: How far the lab may be from the hand-built reference of its datapath and still count as
#: costing nothing (reported, not asserted).
REFERENCE_TOLERANCE = 0.10

#: Bytes each encapsulation adds to every packet (outer headers; bare adds none).
ENCAP_OVERHEAD = {"bare": 0, "vxlan": 50, "udp": 28, "ipip": 20}

Kind = Literal["underlay", "reference", "mode"]


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between closest ranks, as
    numpy's default; raises ValueError on no values or q outside 0..100."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q={q}: must be within 0..100")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def ratio(value: float | None, base: float | None) -> float | None:
    """value / base rounded to 3 places; None when either is missing or base is 0."""
    if value is None or not base:
        return None
    return round(value / base, 3)


class Sample(BaseModel):
    """One repeat on one target: what iperf3 and the round-trip client measured."""

    tcp1: float  # Gbit/s received
    tcp4: float
    rr: float  # transactions per second
    p50: float  # microseconds
    p99: float
    cpuPerGbps: float  # cores busy during the 1-stream run / its Gbit/s
    hostBusyCores: float  # the whole machine during the 1-stream run (others' load included)


class Stat(BaseModel):
    """Median and spread of one figure over the repeats."""

    median: float
    min: float
    max: float
    spread: float  # (max - min) / median: 0.05 = the repeats lie within 5% of the median
    samples: list[float]


def summarise(values: Sequence[float]) -> Stat:
    """Median, min, max and relative spread of `values` (at least one)."""
    if not values:
        raise ValueError("no samples to summarise")
    med = statistics.median(values)
    spread = (max(values) - min(values)) / med if med else 0.0
    return Stat(
        median=round(med, 4),
        min=round(min(values), 4),
        max=round(max(values), 4),
        spread=round(spread, 3),
        samples=[round(v, 4) for v in values],
    )


class Row(BaseModel):
    """One line of the answer table: the underlay, a hand-built reference or a lab mode."""

    name: str
    kind: Kind
    datapath: str  # kernel | userspace | bpf: what moved the packets
    wire: str  # bare | vxlan | ipip | udp, between the two measured pods' nodes
    overheadBytes: int
    podMtu: int
    reference: str | None = None  # the reference row of the same datapath, if any
    samples: list[Sample] = Field(default_factory=list)
    figures: dict[str, Stat] = Field(default_factory=dict)
    vsUnderlay: dict[str, float | None] = Field(default_factory=dict)
    vsReference: dict[str, float | None] = Field(default_factory=dict)
    withinReference: bool | None = None  # both throughputs within REFERENCE_TOLERANCE

    def median(self, metric: str) -> float | None:
        """The median of `metric`, None before summarising."""
        stat = self.figures.get(metric)
        return stat.median if stat else None


class Report(BaseModel):
    """A whole `labctl bench` run: settings, the machine, every row."""

    lab: str
    started: str
    duration: float  # seconds per throughput and round-trip test
    repeats: int
    cpus: int
    kernel: str
    loadavg: str  # /proc/loadavg at the start: the machine is shared
    rows: list[Row]
    files: dict[str, str] = Field(default_factory=dict)  # json, png


def finish(rows: list[Row]) -> list[Row]:
    """Summarise every row's samples and fill the ratios (to the underlay, and to the
    reference row a mode names). Rows without samples are an error."""
    by_name = {r.name: r for r in rows}
    for row in rows:
        if not row.samples:
            raise ValueError(f"row {row.name!r} has no samples")
        row.figures = {m: summarise([getattr(s, m) for s in row.samples]) for m in METRICS}
    base = next((r for r in rows if r.kind == "underlay"), None)
    for row in rows:
        if base is not None:
            row.vsUnderlay = {m: ratio(row.median(m), base.median(m)) for m in METRICS}
        ref = by_name.get(row.reference or "")
        if row.reference and ref is None:
            raise ValueError(f"row {row.name!r} names reference {row.reference!r}, not in the run")
        if ref is not None:
            row.vsReference = {m: ratio(row.median(m), ref.median(m)) for m in METRICS}
            row.withinReference = all(
                abs((row.vsReference[m] or 0) - 1) <= REFERENCE_TOLERANCE for m in ("tcp1", "tcp4")
            )
    return rows
