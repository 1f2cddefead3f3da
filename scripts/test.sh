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
run="$(printf '%04x' $(($$ % 65536)))"
status=0
LABCTL_TEST_RUN="$run" "$venv/pytest" -q -p no:cacheprovider --durations=15 "$@" tests || status=$?
for dir in /run/labctl/*-"$run" /run/netns/labctl-*-"$run"; do
    [ -e "$dir" ] || continue
    name="$(basename "$dir")"
    # A test that leaks its lab is a defect: remove it, and fail the run.
    echo "test lab ${name#labctl-} was left behind by this run; removing it" >&2
    "$venv/labctl" down -n "${name#labctl-}" >/dev/null || true
    status=1
done
exit $status
