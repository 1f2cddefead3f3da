"""flannel-udp's proxy, the parts that need no root: the route-table message the launcher sends
to the C loops, and building the C library (tests/integration/test_datapath.py runs it)."""

from __future__ import annotations

import os
import shutil
import struct
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from labctl.datapath import Route, udpproxy


def _route(subnet: str, node: str) -> Route:
    return Route(IPv4Network(subnet), IPv4Address(node))


def test_encode_routes_longest_prefix_first() -> None:
    """The C lookup takes the first match, so the launcher sends the longest prefixes first."""
    message = udpproxy.encode_routes(
        [
            _route("10.244.0.0/16", "10.0.0.9"),
            _route("10.244.2.0/24", "10.0.0.2"),
            _route("10.244.2.128/25", "10.0.0.3"),
        ]
    )
    assert struct.unpack_from("!I", message) == (3,)
    assert len(message) == 4 + 3 * 12
    entries = [struct.unpack_from("!4sB3x4s", message, 4 + 12 * i) for i in range(3)]
    assert entries == [
        (bytes([10, 244, 2, 128]), 25, bytes([10, 0, 0, 3])),
        (bytes([10, 244, 2, 0]), 24, bytes([10, 0, 0, 2])),
        (bytes([10, 244, 0, 0]), 16, bytes([10, 0, 0, 9])),
    ]


def test_encode_no_routes() -> None:
    """An empty table is a message too (a count of 0), not an empty one (which reads as EOF)."""
    assert udpproxy.encode_routes([]) == b"\0\0\0\0"


needs_cc = pytest.mark.skipif(
    not any(shutil.which(c) for c in udpproxy.COMPILERS), reason="no C compiler"
)


@needs_cc
def test_library_built_and_rebuilt_when_stale(tmp_path: Path) -> None:
    """Missing: built; up to date: kept; source newer: rebuilt."""
    lib = tmp_path / "udpproxy.so"
    assert udpproxy.ensure_library(udpproxy.SOURCE, lib) == lib
    built = lib.stat().st_mtime_ns
    udpproxy.ensure_library(udpproxy.SOURCE, lib)
    assert lib.stat().st_mtime_ns == built
    os.utime(lib, ns=(0, 0))
    udpproxy.ensure_library(udpproxy.SOURCE, lib)
    assert lib.stat().st_mtime_ns > 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temp file left"


@needs_cc
def test_library_build_failure_names_the_source(tmp_path: Path) -> None:
    """A source that does not compile: ProxyBuildError with the compiler's message, no file."""
    source = tmp_path / "broken.c"
    source.write_text("int f(void) { return missing; }\n")
    lib = tmp_path / "broken.so"
    with pytest.raises(udpproxy.ProxyBuildError, match=r"could not build broken\.c: .*missing"):
        udpproxy.ensure_library(source, lib)
    assert list(tmp_path.iterdir()) == [source]


def test_library_without_compiler_says_how_to_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(udpproxy.shutil, "which", lambda _name: None)
    with pytest.raises(udpproxy.ProxyBuildError, match=r"scripts/install\.sh"):
        udpproxy.ensure_library(udpproxy.SOURCE, tmp_path / "x.so")
