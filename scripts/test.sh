#!/usr/bin/env bash
# The whole test suite, as CI runs it: install if needed, lint, type-check, unit and
# integration tests (integration tests need root; they build real labs).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
bash scripts/install.sh
venv="$repo/.venv/bin"
"$venv/ruff" check labctl tests benchmarks
"$venv/ruff" format --check labctl tests benchmarks
"$venv/mypy" labctl tests
# Test labs are named <name>-<run>, so they never collide with the user's labs or an earlier
# run's; afterwards only this run's labs are removed (if a crash left any), nothing else.
run="$(printf '%03x' $(($$ % 4096)))"
status=0
# Two workers (pytest-xdist), whole files per worker so a module's shared lab stays on one:
# most of a lab test is waiting on timers and daemons, so two side by side took 869 s where
# one took 1,664 s (2 cores). Each worker's labs end in <run><worker number>.
LABCTL_TEST_RUN="$run" "$venv/pytest" -q -p no:cacheprovider --durations=15 -n 2 --dist loadfile \
    "$@" tests || status=$?
for dir in /run/labctl/*-"$run"[0-9] /run/netns/labctl-*-"$run"[0-9]; do
    [ -e "$dir" ] || continue
    name="$(basename "$dir")"
    # A test that leaks its lab is a defect: remove it, and fail the run.
    echo "test lab ${name#labctl-} was left behind by this run; removing it" >&2
    "$venv/labctl" down -n "${name#labctl-}" >/dev/null || true
    status=1
done
exit $status
