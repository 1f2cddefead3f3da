#!/usr/bin/env bash
# The soak and fault pass (opt-in; CI runs a short one in tests/integration/test_soak.py):
# 100 up/down cycles, SIGKILLs of up, the supervisor, a userspace datapath and bgpd, two and
# three labs at once, 10 minutes of iperf3 through each userspace datapath; the host namespace
# is compared after every step. Options: --cycles N --kills N --iperf-seconds S --seed N.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
[ -x .venv/bin/labctl ] || bash scripts/install.sh
export LABCTL_TEST_RUN="${LABCTL_TEST_RUN:-s$(printf '%03x' $(($$ % 4096)))}"
exec .venv/bin/python -m tests.soak "$@"
