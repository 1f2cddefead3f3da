#!/usr/bin/env bash
# Quick start: install if needed, bring up the default lab in flannel-vxlan mode, verify it.
# The lab stays up for you to explore; remove it with: .venv/bin/labctl down
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$repo/scripts/install.sh"
labctl="$repo/.venv/bin/labctl"
mode="${1:-flannel-vxlan}"
if "$labctl" status -n default >/dev/null 2>&1; then
  "$labctl" down -n default
fi
"$labctl" up "$mode" -t default
"$labctl" verify -n default
echo "The lab is up. Try: $labctl status; $labctl exec node1 -- ip route; $labctl down"
