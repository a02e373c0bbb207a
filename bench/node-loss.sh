#!/usr/bin/env bash
# Node-loss benchmark (run as root): five test hosts (three managers, two workers) in network
# namespaces; the worker that runs a service's replicas loses its link and its daemon is
# killed -9, ten times, alternating; the time until the leader marks it down and until all its
# replicas run on the other worker. Figures go to stdout.
#   bench/node-loss.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release --test e2e_partition bench_node_loss -- --ignored --nocapture --test-threads 1 2>&1 |
  grep -oE 'FIGURES.*|test result.*|panicked.*'
