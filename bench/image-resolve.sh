#!/usr/bin/env bash
# First-call cost of `ImageStore::resolve` in a fresh process (what `dcpp container run` pays):
# `dcpp image inspect --format table NAME` (open + resolve + print) against `dcpp image ls -q`
# (open + list, no reference parsing) on a store of 8 small images. The difference of the two
# means is the resolve cost. Warm per-call figures: `cargo bench -p dcpp-runtime --bench image_resolve`.
# Run from the repo: bench/image-resolve.sh  (DCPP=/path/to/dcpp to measure a built binary)
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z ${DCPP:-} ]]; then
  cargo build --release -p dcpp --quiet
  DCPP=$PWD/target/release/dcpp
fi
WORK=$(mktemp -d /tmp/dcpp-bench-resolve-XXXXXX)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/rootfs/etc"
for i in $(seq 8); do
  echo "image $i" >"$WORK/rootfs/etc/which"
  "$DCPP" --data-dir "$WORK/d" image import "$WORK/rootfs" "127.0.0.1:5000/bench/app$i:v$i" >/dev/null
done
hyperfine -N --runs "${RUNS:-200}" --warmup 5 --export-json "$WORK/r.json" \
  -n inspect "$DCPP --data-dir $WORK/d image inspect --format table 127.0.0.1:5000/bench/app3:v3" \
  -n ls "$DCPP --data-dir $WORK/d image ls -q" >/dev/null
python3 - "$WORK/r.json" <<'PY'
import json, sys
r = {x["command"]: x for x in json.load(open(sys.argv[1]))["results"]}
i, l = r["inspect"]["mean"] * 1e3, r["ls"]["mean"] * 1e3
print(f"dcpp image inspect (open+resolve): {i:.2f} ms")
print(f"dcpp image ls -q   (open+list):    {l:.2f} ms")
print(f"resolve in a fresh process ~ {i - l:.2f} ms")
PY
