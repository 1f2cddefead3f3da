"""`labctl bench`: the answer table. Every mode on two-node.yaml, pod to pod across the two
nodes, next to the underlay (node to node) and to hand-built references of the host-gw and
VXLAN datapaths; each target measured `repeats` times, then summarised (labctl.bench.model).

Order matters on a shared machine: each reference is measured just before the modes that
are compared with it, so a reference and its labs see similar background load."""

from __future__ import annotations

import contextlib
import os
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from labctl import lifecycle, state, store
from labctl.bench import chart
from labctl.bench.model import ENCAP_OVERHEAD, Report, Row, finish
from labctl.bench.reference import POD_MTU, Reference
from labctl.bench.runners import Pair, netns_argv, sample
from labctl.capture import CAPTURE_ROOT
from labctl.daemons import USERSPACE_DATAPATHS
from labctl.features import resolve_datapath
from labctl.modes import get_mode
from labctl.state import LAB_ENV, LabError
from labctl.topology import load_topology, resolve_path

TOPOLOGY = "two-node"
CLIENT, SERVER = "default/pod-a", "default/pod-b"

#: progress(what is being measured, steps done, steps in all)
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class ModeInfo:
    """What the plan says about a mode between the two measured pods."""

    name: str
    datapath: str  # what `up` will choose: kernel | userspace | bpf ...
    userspace: bool  # a userspace process moves the measured packets (TUN proxy)
    wire: str
    overhead: int
    pod_mtu: int

    def moved_by(self, lab_datapath: str) -> str:
        """What moved the measured packets: the lab's datapath applies to its tunnel only;
        a bare path (a cross-subnet mode on one subnet) is the kernel's routing."""
        if self.userspace:
            return "userspace"
        return "kernel" if self.wire == "bare" else lab_datapath

    @property
    def reference(self) -> str | None:
        """The reference row of the same datapath, if one is built for it."""
        kind = {"bare": "host-gw", "vxlan": "vxlan"}.get(self.wire)
        return f"reference {kind}" if kind else None


def mode_info(name: str) -> ModeInfo:
    """The mode's plan on two-node.yaml: encapsulation host1 -> host2, pod MTU, datapath."""
    mode = get_mode(name)
    topo = load_topology(resolve_path(TOPOLOGY))
    datapath = resolve_datapath(mode.kernel_feature, "auto")[0]
    plan = mode.plan(topo, datapath)
    src, dst = (topo.pods[0].node, topo.pods[1].node)
    encap = plan.path(src, dst)["encap"]
    kinds = {d.kind for ns in plan.namespaces.values() for d in ns.daemons}
    return ModeInfo(
        name=name,
        datapath=datapath,
        # A cross-subnet mode runs its tunnel daemon, but same-subnet packets skip the tunnel.
        userspace=bool(kinds & USERSPACE_DATAPATHS) and encap != "bare",
        wire=encap,
        overhead=ENCAP_OVERHEAD[encap],
        pod_mtu=plan.pod_mtu,
    )


def ordered(infos: list[ModeInfo]) -> list[ModeInfo]:
    """Modes grouped by reference (host-gw's, then VXLAN's, then those without one), so each
    reference is measured right before its modes; the given order is kept within a group."""
    rank = {"reference host-gw": 0, "reference vxlan": 1, None: 2}
    return sorted(infos, key=lambda i: rank[i.reference])


def steps(infos: list[ModeInfo], repeats: int) -> int:
    """Samples in the whole run: underlay, references used, modes."""
    refs = {i.reference for i in infos} - {None}
    return (1 + len(refs) + len(infos)) * repeats


def run(lab: str, modes: list[str], duration: int, repeats: int, progress: Progress) -> Report:
    """Measure everything, in one run; the lab and the reference namespaces are always
    removed. `lab` names the lab each mode is brought up as, in turn."""
    if lab in state.list_labs():
        raise LabError(f"a lab named {lab!r} is up; 'labctl down -n {lab}' first, or pick -n NAME")
    infos = ordered([mode_info(m) for m in modes])
    total, done = steps(infos, repeats), 0
    rows: list[Row] = []

    def measure(row: Row, pair: Pair) -> None:
        nonlocal done
        for i in range(repeats):
            progress(f"{row.name}: repeat {i + 1}/{repeats}", done, total)
            row.samples.append(sample(pair, duration))
            done += 1
        rows.append(row)

    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    loadavg = Path("/proc/loadavg").read_text().strip()
    with contextlib.ExitStack() as refs:
        built: dict[str, Reference] = {}

        def reference(kind: str) -> Reference:
            if kind not in built:
                progress(f"building reference {kind}", done, total)
                built[kind] = refs.enter_context(Reference(kind, f"{lab}-ref"))  # type: ignore[arg-type]
            return built[kind]

        under = reference("host-gw")
        measure(Row(name="underlay", kind="underlay", datapath="kernel", wire="bare",
                    overheadBytes=0, podMtu=1500), under.nodes())  # fmt: skip
        for info in infos:
            ref_name = info.reference
            if ref_name and all(r.name != ref_name for r in rows):
                kind = ref_name.split()[1]
                measure(
                    Row(name=ref_name, kind="reference", datapath="kernel", wire=info.wire,
                        overheadBytes=info.overhead, podMtu=POD_MTU[kind]),
                    reference(kind).pods(),
                )  # fmt: skip
            progress(f"{info.name}: up", done, total)
            with _lab(lab, info) as (pair, datapath):
                measure(
                    Row(name=info.name, kind="mode", datapath=datapath, wire=info.wire,
                        overheadBytes=info.overhead, podMtu=info.pod_mtu, reference=ref_name),
                    pair,
                )  # fmt: skip
    progress("done", total, total)
    return Report(
        lab=lab,
        started=started,
        duration=duration,
        repeats=repeats,
        cpus=os.cpu_count() or 0,
        kernel=platform.release(),
        loadavg=loadavg,
        rows=finish(rows),
    )


@contextlib.contextmanager
def _lab(lab: str, info: ModeInfo) -> Iterator[tuple[Pair, str]]:
    """The mode's lab on two-node.yaml, and the pod pair to measure; removed afterwards."""
    path = resolve_path(TOPOLOGY)
    # up removes what it built when it fails, and refuses a lab that exists: only a lab this
    # call brought up is taken down.
    st = lifecycle.up(
        lab, get_mode(info.name), path, load_topology(path), lambda _: None, info.datapath
    )
    try:
        server_ip = store.load(lab).pods[SERVER].ip
        pids = list(st.processes.values())
        pair = Pair(
            name=info.name,
            client=netns_argv(pid=st.pid_of(CLIENT)),
            server=netns_argv(pid=st.pid_of(SERVER)),
            server_ip=server_ip,
            datapath_pids=lambda: pids,
            # Marked as the lab's, so `labctl down` also ends a client left behind.
            env=dict(os.environ, **{LAB_ENV: lab}),
        )
        yield pair, info.moved_by(st.datapath)
    finally:
        lifecycle.down(lab)


def save(report: Report, root: Path = CAPTURE_ROOT) -> Report:
    """Write the JSON and the chart under captures/<lab>/bench/, named by the start time."""
    out = root / report.lab / "bench"
    out.mkdir(parents=True, exist_ok=True)
    stem = report.started.replace(":", "")
    png = out / f"{stem}.png"
    js = out / f"{stem}.json"
    chart.write(report, png)
    report.files = {"json": str(js), "png": str(png)}
    js.write_text(report.model_dump_json(indent=1) + "\n")
    return report
