#!/usr/bin/env bash
# Networking benchmark (run as root): time to attach an endpoint (veth pair + address + routes +
# DNS record) and TCP throughput host -> container through a published port (nftables DNAT from
# 127.0.0.1) versus directly to the container's address. Figures go to stdout.
#   bench/network.sh            # release build
#   PROFILE=dev bench/network.sh
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${PROFILE:-release}"
args=()
[ "$profile" = release ] && args+=(--release)
cargo test "${args[@]}" -p dcpp-runtime --test network_bench -- --ignored --nocapture --test-threads 1 2>&1 |
  grep -oE '(attach \(|detach:|TCP host).*|test result.*|panicked.*'
