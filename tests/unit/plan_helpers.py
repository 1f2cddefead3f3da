"""Lookups into a NamespacePlan that the planner tests share."""

from __future__ import annotations

from labctl.plan import Link, NamespacePlan, Route


def link(ns: NamespacePlan, name: str) -> Link:
    """The one link called `name` (fails if there are none or several)."""
    (found,) = [x for x in ns.links if x.name == name]
    return found


def addrs(ns: NamespacePlan, dev: str) -> list[str]:
    """Addresses (CIDR strings) planned on `dev`."""
    return [a.cidr for a in ns.addresses if a.dev == dev]


def route_to(ns: NamespacePlan, dst: str) -> Route:
    """The one route to `dst` (fails if there are none or several)."""
    (found,) = [r for r in ns.routes if r.dst == dst]
    return found
