"""The lab's BGP speakers: one set of FRR daemons per node or router whose plan has one,
started once the underlay passes traffic and considered up when every session is
Established and every node that installs routes has the others' blocks in its kernel."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from labctl import bgp, frr
from labctl.nsutil import nsenter_argv
from labctl.plan import Plan

SESSION_TIMEOUT = 60.0
START_WORKERS = 8
# A design can leave a speaker without some block (that is what verify is for): bounded.
ROUTES_TIMEOUT = 10.0


class Speakers:
    """FRR daemons of one lab, keyed by namespace name."""

    def __init__(self) -> None:
        self.daemons: dict[str, tuple[int, list[int]]] = {}
        self.warnings: list[str] = []

    def start(
        self, plan: Plan, pids: dict[str, int], progress: Callable[[str], None]
    ) -> dict[str, list[int]]:
        """Start every speaker and wait for its sessions; return daemon pids per namespace."""
        speakers = {n.name: n.bgp for n in plan.namespaces.values() if n.bgp is not None}
        if not speakers:
            return {}
        progress("waiting for the underlay")
        # A session's first SYN can be lost to a cold ARP cache on a fresh bridge, and bgpd
        # then waits a whole connect-retry interval: warm the path first.
        reach_all({name: [str(nb.ip) for nb in s.neighbors] for name, s in speakers.items()}, pids)
        progress(f"starting FRR on {len(speakers)} speakers")
        # FRR's dry runs (four processes per config) cost more than the start itself: run
        # them once per shape of config, which is what a template error would show in.
        shapes: set[tuple[object, ...]] = set()
        dry_run = {}
        for name, s in speakers.items():
            dry_run[name] = _shape(s) not in shapes
            shapes.add(_shape(s))
        with ThreadPoolExecutor(max_workers=START_WORKERS) as pool:
            futures = {
                name: pool.submit(frr.start, pids[name], s, dry_run=dry_run[name])
                for name, s in speakers.items()
            }
        failed = None
        for name, future in futures.items():
            try:
                self.daemons[name] = (pids[name], future.result())
            except Exception as e:  # the others started: keep them for stop(), then raise
                failed = failed or e
        if failed is not None:
            raise failed
        progress("waiting for BGP sessions")
        for name, speaker in speakers.items():
            frr.wait_established(pids[name], len(speaker.neighbors), SESSION_TIMEOUT)
        # UPDATEs follow Established by a coalesce interval: wait for them, so that a verify
        # right after up sees the converged tables.
        progress("waiting for BGP routes")
        late = wait_routes(speakers, pids, ROUTES_TIMEOUT)
        if late:
            self.warnings.append(
                f"BGP routes incomplete after {ROUTES_TIMEOUT:.0f} s on {', '.join(sorted(late))}"
                ": 'labctl verify' says which blocks are missing"
            )
        return {name: d for name, (_, d) in self.daemons.items()}

    def stop(self) -> None:
        """Stop every speaker cleanly (zebra then withdraws its routes)."""
        for pid, daemon_pids in self.daemons.values():
            frr.stop(pid, daemon_pids)
        self.daemons.clear()


def _shape(s: bgp.BgpSpeaker) -> tuple[object, ...]:
    """What a speaker's config is made of, addresses and counts aside: the template renders
    each of these features, so one config per shape exercises all of them."""
    sessions = {(n.rr_client, n.passive, n.as_override, n.remote_asn == s.asn) for n in s.neighbors}
    return (
        s.asn is None,
        s.rr_cluster_id is not None,
        bool(s.networks),
        bool(s.static_routes),
        s.redistribute_connected,
        s.install_routes,
        s.update_source is not None,
        s.profile,
        frozenset(sessions),
    )


def reach_all(targets: dict[str, list[str]], pids: dict[str, int], timeout: float = 10.0) -> None:
    """Ping every neighbour from each speaker until all answer (or `timeout`)."""
    pending = {(name, ip) for name, ips in targets.items() for ip in ips}
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        procs = {
            key: subprocess.Popen(
                nsenter_argv(
                    pids[key[0]], ["ping", "-n", "-q", "-c", "1", "-W", "1", key[1]], mount=False
                ),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for key in pending
        }
        pending = {key for key, p in procs.items() if p.wait() != 0}


def wait_routes(
    speakers: dict[str, bgp.BgpSpeaker], pids: dict[str, int], timeout: float
) -> set[str]:
    """Wait until each speaker that originates blocks and installs routes has every other
    speaker's blocks as kernel bgp routes; return the speakers still missing some."""
    blocks = {name: {str(n) for n in s.networks} for name, s in speakers.items()}
    everything = set().union(*blocks.values())
    pending = {name for name, s in speakers.items() if s.networks and s.install_routes}
    deadline = time.monotonic() + timeout
    while True:
        pending = {
            name
            for name in pending
            if not everything - blocks[name] <= set(frr.kernel_bgp_routes(pids[name]))
        }
        if not pending or time.monotonic() > deadline:
            return pending
        time.sleep(0.05)
