#!/usr/bin/env bash
# Installs everything dcpp's build, demo and tests need on a fresh Debian machine (run as root).
# Idempotent: packages already present are not reinstalled.
set -euo pipefail

PKGS=(
  docker-registry   # the CNCF distribution registry the image tests push to and pull from (127.0.0.1 only)
  skopeo            # the peer in the image-pull benchmark
  busybox-static    # source of every test and example image; nothing is downloaded from a public registry
  nftables          # published ports
  iptables          # dcpp's accept rules next to a docker-style FORWARD DROP policy; the firewall test sets one
  runc crun         # peer OCI runtimes: benchmark and `--runtime` backend tests
  iproute2          # `ip` to inspect links/addresses in tests (dcpp itself uses netlink)
  hyperfine curl procps psmisc
)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

command -v cargo >/dev/null || { echo "setup: cargo not found (install the Rust toolchain with rustup)" >&2; exit 1; }
rustup component add rustfmt clippy >/dev/null 2>&1 || true
