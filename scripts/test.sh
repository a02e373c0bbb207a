#!/usr/bin/env bash
# The one command that sets up and runs every test: formatting, lints, unit, property, simulation
# and privileged integration tests (real kernel, real registry, real nftables). Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

if command -v cargo-nextest >/dev/null; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
# Doc tests are not run by nextest.
cargo test --workspace --locked --doc
