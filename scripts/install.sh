#!/usr/bin/env bash
# One install path for a fresh Debian 12 / Ubuntu 22.04+ machine, the Vagrant VM and CI.
# Idempotent: system packages are installed only when missing, the venv only when stale.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo/.venv"

if [ "$(id -u)" -ne 0 ]; then
  echo "install.sh: run as root (bash scripts/install.sh): it installs apt packages" >&2
  exit 3
fi

pkgs=(mininet frr tcpdump iperf3 iproute2 bridge-utils iptables nftables iputils-ping
      python3 python3-venv python3-pip procps psmisc util-linux ethtool curl conntrack
      graphviz etcd-server etcd-client clang llvm libbpf-dev linux-libc-dev bpftool)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "install.sh: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian starts FRR's own service in the host namespace on install; labs run their own
# daemons, and the host must stay untouched, so keep the packaged service off.
# The same for etcd: every flannel lab runs its own etcd inside the lab's namespace.
for svc in frr etcd; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-enabled "$svc" >/dev/null 2>&1; then
    systemctl disable --now "$svc" >/dev/null 2>&1 || true
  fi
done

# Debian's mininet module exists only for /usr/bin/python3, so the venv must see system
# site-packages.
stamp="$venv/.labctl-installed"
want="$(cat "$repo/setup.cfg" "$repo/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "install.sh: creating $venv"
  /usr/bin/python3 -m venv --system-site-packages "$venv"
  "$venv/bin/pip" install -q --upgrade pip >/dev/null
  "$venv/bin/pip" install -q -e "$repo[dev]"
  echo "$want" > "$stamp"
fi
"$venv/bin/python" -c "import mininet.net, pyroute2, scapy" || {
  echo "install.sh: the venv cannot import mininet/pyroute2/scapy" >&2; exit 3; }
# The TC-BPF IPIP datapath (labctl/datapath/bpf): its object is built here with clang into
# build/bpf/ (gitignored); `labctl up` rebuilds it when the source is newer.
"$venv/bin/python" -c "from labctl.datapath.bpf import ensure_object; ensure_object()" || {
  echo "install.sh: could not build the BPF datapath (labctl/datapath/bpf/ipip.bpf.c)" >&2; exit 3; }
# flannel-udp's proxy loops (labctl/datapath/udpproxy.c): a shared library built here with the
# system C compiler into build/udpproxy/ (gitignored); the proxy rebuilds it when the source is newer.
"$venv/bin/python" -c "from labctl.datapath.udpproxy import ensure_library; ensure_library()" || {
  echo "install.sh: could not build the UDP proxy (labctl/datapath/udpproxy.c)" >&2; exit 3; }
echo "install.sh: ready ($venv/bin/labctl)"
