#!/usr/bin/env bash
# Overlay benchmark (run as root): TCP throughput and round trip container -> container across
# two test hosts over the VXLAN overlay versus host -> host on the underlay (same tool, the
# host's python3 in each network namespace), and the time from a new replica running on one
# node to its name answering on the other. Figures go to stdout.
#   bench/overlay.sh
set -euo pipefail
cd "$(dirname "$0")/.."
command -v python3 >/dev/null || apt-get install -y python3
cargo test --release --test e2e_overlay bench_overlay -- --ignored --nocapture --test-threads 1 2>&1 |
  grep -oE 'FIGURES.*|test result.*|panicked.*'
