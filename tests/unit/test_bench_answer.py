"""The answer table's pure parts: percentiles, summaries, ratios, the JSON shape, the table,
the chart file and the mode facts read from the plans (no root, no labs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from labctl.bench import answer, chart, table
from labctl.bench.model import (
    METRICS,
    Report,
    Row,
    Sample,
    finish,
    percentile,
    ratio,
    summarise,
)
from labctl.bench.runners import host_stat, proc_cpu


def _sample(scale: float = 1.0, **over: float) -> Sample:
    base = dict(
        tcp1=10 * scale,
        tcp4=12 * scale,
        rr=20000 * scale,
        p50=20 / scale,
        p99=80 / scale,
        cpuPerGbps=0.1,
        hostBusyCores=1.5,
    )
    return Sample(**{**base, **over})


def _row(
    name: str,
    kind: str = "mode",
    scales: tuple[float, ...] = (1.0,),
    reference: str | None = None,
) -> Row:
    return Row.model_validate(
        {
            "name": name,
            "kind": kind,
            "datapath": "kernel",
            "wire": "bare",
            "overheadBytes": 0,
            "podMtu": 1500,
            "reference": reference,
            "samples": [_sample(s) for s in scales],
        }
    )


def _report(rows: list[Row]) -> Report:
    return Report(
        lab="bn-u",
        started="2026-01-01T00:00:00",
        duration=1,
        repeats=3,
        cpus=2,
        kernel="6.1",
        loadavg="1.0 1.0 1.0 1/1 1",
        rows=finish(rows),
    )


def test_percentile_interpolates_like_numpy() -> None:
    values = [1.0, 2.0, 3.0, 4.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile(values, 50) == 2.5
    assert percentile(values, 99) == pytest.approx(3.97)
    assert percentile([7.0], 99) == 7.0
    # Order of input does not matter.
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5


@pytest.mark.parametrize("values,q", [([], 50), ([1.0], -1), ([1.0], 101)])
def test_percentile_refuses_nonsense(values: list[float], q: float) -> None:
    with pytest.raises(ValueError):
        percentile(values, q)


def test_summarise_median_and_spread() -> None:
    stat = summarise([9.0, 10.0, 12.0])
    assert (stat.median, stat.min, stat.max) == (10.0, 9.0, 12.0)
    assert stat.spread == 0.3
    assert summarise([5.0]).spread == 0
    with pytest.raises(ValueError):
        summarise([])


def test_ratio() -> None:
    assert ratio(9, 10) == 0.9
    assert ratio(None, 10) is None
    assert ratio(1, 0) is None
    assert ratio(1, None) is None


def test_finish_fills_ratios_to_underlay_and_reference() -> None:
    rows = finish(
        [
            _row("underlay", "underlay", (2.0, 2.0, 2.0)),
            _row("reference host-gw", "reference", (1.0, 1.0, 1.0)),
            _row("near", scales=(0.95, 0.97, 0.99), reference="reference host-gw"),
            _row("far", scales=(0.5, 0.6, 0.7), reference="reference host-gw"),
            _row("alone", scales=(0.1,)),
        ]
    )
    under, _, near, far, alone = rows
    assert under.vsUnderlay["tcp1"] == 1.0
    assert near.vsUnderlay["tcp1"] == pytest.approx(0.485, abs=1e-3)
    assert near.vsReference["tcp1"] == 0.97
    assert near.withinReference is True
    assert far.withinReference is False  # negative: 0.6x of the reference is not "within"
    assert alone.withinReference is None and alone.vsReference == {}
    # latency ratio > 1 means slower than the underlay
    assert (far.vsUnderlay["p50"] or 0) > 1


def test_finish_rejects_empty_rows_and_unknown_reference() -> None:
    with pytest.raises(ValueError, match="no samples"):
        finish(
            [
                Row(
                    name="x",
                    kind="mode",
                    datapath="kernel",
                    wire="bare",
                    overheadBytes=0,
                    podMtu=1500,
                )
            ]
        )
    with pytest.raises(ValueError, match="reference"):
        finish([_row("x", reference="reference vxlan")])


def test_lab_faster_than_reference_beyond_tolerance_is_not_within() -> None:
    rows = finish(
        [
            _row("reference vxlan", "reference"),
            _row("m", scales=(1.2,), reference="reference vxlan"),
        ]
    )
    assert rows[1].withinReference is False


def test_json_shape() -> None:
    report = _report([_row("underlay", "underlay", (1.0, 1.1, 0.9)), _row("flannel-vxlan")])
    doc = json.loads(report.model_dump_json())
    assert set(doc) >= {"lab", "started", "duration", "repeats", "cpus", "kernel", "rows"}
    row = doc["rows"][1]
    assert set(row) >= {
        "name",
        "kind",
        "datapath",
        "wire",
        "overheadBytes",
        "podMtu",
        "samples",
        "figures",
        "vsUnderlay",
        "vsReference",
        "withinReference",
    }
    assert set(row["figures"]) == set(METRICS)
    assert set(row["figures"]["tcp1"]) == {"median", "min", "max", "spread", "samples"}
    assert doc["rows"][0]["figures"]["tcp1"]["samples"] == [10.0, 11.0, 9.0]


def test_table_renders_every_row_and_the_reference_verdict() -> None:
    report = _report(
        [
            _row("underlay", "underlay"),
            _row("reference host-gw", "reference"),
            _row("flannel-host-gw", reference="reference host-gw"),
            _row("slow-mode", scales=(0.5,), reference="reference host-gw"),
        ]
    )
    console = Console(width=250, record=True)
    console.print(table.render(report))
    text = console.export_text()
    for name in ("underlay", "reference host-gw", "flannel-host-gw", "slow-mode"):
        assert name in text
    assert "1.00 / 1.00 yes" in text
    assert "0.50 / 0.50 NO" in text
    assert "10.00 ±0%" in text


def test_chart_written(tmp_path: Path) -> None:
    report = _report([_row("underlay", "underlay", (1.0, 1.2)), _row("m", scales=(0.5, 0.6))])
    path = chart.write(report, tmp_path / "c.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 10_000


def test_save_writes_json_and_png(tmp_path: Path) -> None:
    report = answer.save(_report([_row("underlay", "underlay")]), root=tmp_path)
    out = tmp_path / "bn-u" / "bench"
    assert sorted(p.suffix for p in out.iterdir()) == [".json", ".png"]
    assert json.loads((out / "2026-01-01T000000.json").read_text())["files"] == report.files


@pytest.mark.parametrize(
    "mode,wire,overhead,mtu,reference",
    [
        ("flannel-host-gw", "bare", 0, 1500, "reference host-gw"),
        ("calico-bgp", "bare", 0, 1500, "reference host-gw"),
        ("flannel-vxlan", "vxlan", 50, 1450, "reference vxlan"),
        ("calico-vxlan", "vxlan", 50, 1450, "reference vxlan"),
        ("flannel-udp", "udp", 28, 1472, None),
        ("calico-ipip", "ipip", 20, 1480, None),
        # same subnet: no tunnel, but the pod MTU is still the tunnel's
        ("calico-ipip-crosssubnet", "bare", 0, 1480, "reference host-gw"),
    ],
)
def test_mode_info_from_the_plan(
    mode: str,
    wire: str,
    overhead: int,
    mtu: int,
    reference: str | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    datapath = "userspace" if mode.startswith("calico-ipip") else "kernel"
    monkeypatch.setattr(answer, "resolve_datapath", lambda feature, wanted: (datapath, None))
    info = answer.mode_info(mode)
    assert (info.wire, info.overhead, info.pod_mtu, info.reference) == (
        wire,
        overhead,
        mtu,
        reference,
    )
    # userspace only where a proxy moves the measured packets: not calico-ipip-crosssubnet's
    # same-subnet path, though its tunnel daemon runs
    assert info.userspace is (mode in ("flannel-udp", "calico-ipip"))


def test_modes_ordered_by_reference_and_step_count() -> None:
    infos = [
        answer.ModeInfo("u", "kernel", True, "udp", 28, 1472),
        answer.ModeInfo("v", "kernel", False, "vxlan", 50, 1450),
        answer.ModeInfo("h", "kernel", False, "bare", 0, 1500),
    ]
    assert [i.name for i in answer.ordered(infos)] == ["h", "v", "u"]
    assert answer.steps(infos, 3) == (1 + 2 + 3) * 3
    assert answer.steps(infos[:1], 2) == (1 + 0 + 1) * 2


def test_cpu_readers() -> None:
    import os

    assert proc_cpu([os.getpid()]) >= 0
    assert proc_cpu([2**22 + 7]) == 0  # a gone process counts nothing
    busy, total = host_stat()
    assert 0 <= busy <= total


def test_datapath_label_is_what_moved_the_measured_packets() -> None:
    cross = answer.ModeInfo("calico-ipip-crosssubnet", "userspace", False, "bare", 0, 1480)
    assert cross.moved_by("userspace") == "kernel"
    ipip = answer.ModeInfo("calico-ipip", "bpf", False, "ipip", 20, 1480)
    assert ipip.moved_by("bpf") == "bpf"
    udp = answer.ModeInfo("flannel-udp", "kernel", True, "udp", 28, 1472)
    assert udp.moved_by("kernel") == "userspace"
