"""The `labctl` command line: one file per verb group, each only parsing, calling the
package and printing (rich for people, `-o json` for machines). Exit codes: 0 ok, 1 a check or
probe did not hold, 2 bad usage or input, 3 the machine lacks something."""

from __future__ import annotations

import click

from labctl.cli import access, bench, check, exercise, graph, lab, node, objects, trace


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="labctl")
def main() -> None:
    """Build Kubernetes CNI dataplanes (Flannel, Calico, Canal) in network namespaces and
    prove on the wire how they move packets."""


for verb in (
    lab.modes,
    lab.up,
    lab.down,
    lab.status,
    access.exec_,
    access.capture,
    check.verify,
    check.probe,
    objects.apply,
    objects.delete,
    objects.get,
    objects.label,
    objects.scale,
    bench.bench,
    graph.graph_,
    trace.trace,
    exercise.exercise,
    node.node,
    node.config,
    node.restart,
):
    main.add_command(verb)
