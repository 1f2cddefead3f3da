"""Programming the compiled policy into the nodes: one `nft -f` transaction per node.

Every node's ruleset is first checked with `nft -c` (nothing changes), then loaded; each load
replaces the node's `ip calico` table in one kernel transaction, so no packet ever sees a
half-written table. Nodes are programmed in parallel, as each node's Felix works on its own.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from labctl.errors import LabctlError
from labctl.nsutil import nsenter_argv
from labctl.policy.compile import NodeRuleset, compile_all
from labctl.store import Store


class PolicyApplyError(RuntimeError, LabctlError):
    """nft refused a ruleset; names the node and nft's complaint."""

    exit_code = 1


@dataclass(frozen=True)
class SyncResult:
    """What one sync programmed, and how long from start to enforced on every node."""

    rulesets: dict[str, NodeRuleset]
    seconds: float

    @property
    def rules(self) -> int:
        """Rules over all nodes."""
        return sum(r.rules for r in self.rulesets.values())


def _nft(pid: int, text: str, check: bool) -> subprocess.Popen[str]:
    argv = ["nft", "-c", "-f", "-"] if check else ["nft", "-f", "-"]
    proc = subprocess.Popen(
        nsenter_argv(pid, argv, mount=False),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None
    proc.stdin.write(text)
    proc.stdin.close()
    return proc


def _run_all(rulesets: Mapping[str, NodeRuleset], pids: Mapping[str, int], check: bool) -> None:
    procs = {node: _nft(pids[node], rs.text, check) for node, rs in rulesets.items()}
    errors = []
    for node, proc in procs.items():
        assert proc.stderr is not None
        err = proc.stderr.read().strip()
        if proc.wait() != 0:
            first = err.splitlines()[0] if err else f"exit {proc.returncode}"
            errors.append(f"{node}: nft {'-c ' if check else ''}-f: {first}")
    if errors:
        raise PolicyApplyError("; ".join(errors))


def program(rulesets: Mapping[str, NodeRuleset], pids: Mapping[str, int]) -> None:
    """Check every node's ruleset, then load them all (nothing is loaded if one is refused)."""
    _run_all(rulesets, pids, check=True)
    _run_all(rulesets, pids, check=False)


def sync(store: Store, pids: Mapping[str, int], nodes: Sequence[str]) -> SyncResult:
    """Compile the store's policies for every node and program them."""
    started = time.monotonic()
    rulesets = compile_all(nodes, store.policies(), store.namespace_labels(), store.pod_infos())
    program(rulesets, pids)
    return SyncResult(rulesets, round(time.monotonic() - started, 4))
