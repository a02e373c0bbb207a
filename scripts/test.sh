#!/usr/bin/env bash
# The one command that sets up and runs every test: formatting, lints, unit, property, simulation
# and privileged integration tests (real kernel, real registry, real nftables). Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

# Doc tests first: nextest does not run them, and the suite's summary should be the last word.
cargo test --workspace --locked --doc
if command -v cargo-nextest >/dev/null; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
