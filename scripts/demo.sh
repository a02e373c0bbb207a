#!/usr/bin/env bash
# The demo: set up, build, and show what dcpp does today on the example stack.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --locked
DCPP=target/release/dcpp
echo "== dcpp config -f examples/web/compose.yml"
"$DCPP" config -f examples/web/compose.yml
