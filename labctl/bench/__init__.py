"""`labctl bench`: figures, not pass/fail (speed is measured here, never in timed tests).

answer: the answer table (throughput, round trips, CPU per mode, against the underlay and a
hand-built reference), with model (results, statistics), runners (iperf3, rr, CPU),
reference (the hand-built datapath), table and chart; cluster: `--lifecycle`, `--policy` and
`--services` (up/verify/down times, NetworkPolicy and Service figures); scale: `--scale`;
controlplane: `--control-plane` (join, leave and dead-node convergence per mode)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from labctl.capture import CAPTURE_ROOT


def save_figures(lab: str, kind: str, data: Any, root: Path = CAPTURE_ROOT) -> Path:
    """Write a bench's figures as JSON under captures/<lab>/bench/<kind>-<time>.json."""
    out = root / lab / "bench"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{kind}-{time.strftime('%Y-%m-%dT%H%M%S')}.json"
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path
