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
# Any leftover from an earlier crashed run would make tests collide; remove it first.
"$venv/labctl" down --all >/dev/null
"$venv/pytest" -q -p no:cacheprovider "$@" tests
status=0
"$venv/labctl" down --all >/dev/null || status=$?
exit $status
