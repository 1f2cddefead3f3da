"""The walk's state reader for a running lab: iproute2, bridge, nft and iptables-save run
inside each namespace with nsenter, their JSON handed to the walk unchanged.

Answers are cached per namespace and command: one trace asks each question once, and the
state cannot be half-read while the walk moves on.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from typing import Any

from labctl.nsutil import nsenter_argv, sysctl_path
from labctl.state import LabError
from labctl.trace.walk import Json, NoRoute

TIMEOUT = 10.0


class LiveReader:
    """Reads kernel state of the namespaces `pids` names (lab namespace -> a PID in it)."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.pids = pids
        self._cache: dict[tuple[str, tuple[str, ...]], subprocess.CompletedProcess[str]] = {}

    def _run(self, ns: str, *argv: str) -> subprocess.CompletedProcess[str]:
        key = (ns, argv)
        if key not in self._cache:
            pid = self.pids.get(ns)
            if pid is None:
                raise LabError(f"{ns!r} is not a namespace of this lab")
            # Only the network namespace: these tools read nothing from the node's files.
            self._cache[key] = subprocess.run(
                nsenter_argv(pid, list(argv), mount=False),
                capture_output=True,
                text=True,
                timeout=TIMEOUT,
            )
        return self._cache[key]

    def _json(self, ns: str, *argv: str) -> Any:
        proc = self._run(ns, *argv)
        if proc.returncode != 0:
            raise LabError(f"{ns}: {' '.join(argv)} failed: {proc.stderr.strip()}")
        return json.loads(proc.stdout or "[]")

    def links(self, ns: str) -> list[Json]:
        """`ip -j -d addr show`."""
        return list(self._json(ns, "ip", "-j", "-d", "addr", "show"))

    def neighbours(self, ns: str) -> list[Json]:
        """`ip -j neigh show`."""
        return list(self._json(ns, "ip", "-j", "neigh", "show"))

    def fdb(self, ns: str) -> list[Json]:
        """`bridge -j fdb show`."""
        return list(self._json(ns, "bridge", "-j", "fdb", "show"))

    def routes(self, ns: str) -> list[Json]:
        """`ip -j -d route show table main`."""
        return list(self._json(ns, "ip", "-j", "-d", "route", "show", "table", "main"))

    def route_get(self, ns: str, dst: str, src: str | None, iif: str | None) -> Json:
        """The FIB entry `ip route get fibmatch` matches (it carries the protocol), plus the
        source the kernel picks when the packet starts here (no iif)."""
        args = [dst, *(["from", src] if src else []), *(["iif", iif] if iif else [])]
        proc = self._run(ns, "ip", "-j", "-d", "route", "get", "fibmatch", *args)
        if proc.returncode != 0:
            raise NoRoute(proc.stderr.strip().removeprefix("RTNETLINK answers: "))
        entry: Json = json.loads(proc.stdout)[0]
        if iif is None:
            chosen = self._run(ns, "ip", "-j", "route", "get", *args)
            if chosen.returncode == 0:
                entry["prefsrc"] = json.loads(chosen.stdout)[0].get("prefsrc", src)
        return entry

    def nft_table(self, ns: str, table: str) -> list[Json] | None:
        """`nft -j list table ip TABLE`; None when the namespace has no such table."""
        proc = self._run(ns, "nft", "-j", "list", "table", "ip", table)
        if proc.returncode != 0:
            return None
        return list(json.loads(proc.stdout).get("nftables", []))

    def sysctl(self, ns: str, key: str) -> str | None:
        """The namespace's value of sysctl `key`; None if the kernel has no such key."""
        proc = self._run(ns, "cat", sysctl_path(key))
        return proc.stdout.strip() if proc.returncode == 0 else None

    def iptables_nat(self, ns: str) -> str:
        """`iptables-save -t nat` ("" where iptables has no nat table)."""
        proc = self._run(ns, "iptables-save", "-t", "nat")
        return proc.stdout if proc.returncode == 0 else ""
