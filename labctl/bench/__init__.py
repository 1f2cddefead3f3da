"""`labctl bench`: figures, not pass/fail (speed is measured here, never in timed tests).

answer: the answer table (throughput, round trips, CPU per mode, against the underlay and a
hand-built reference), with model (results, statistics), runners (iperf3, rr, CPU),
reference (the hand-built datapath), table and chart; cluster: `--lifecycle`, `--policy` and
`--services` (up/verify/down times, NetworkPolicy and Service figures); scale: `--scale`;
controlplane: `--control-plane` (join, leave and dead-node convergence per mode)."""
