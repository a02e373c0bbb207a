#!/usr/bin/env bash
# Image pull benchmark: a 3-layer ~200 MB image (gzip layers, part incompressible) served by a
# local docker-registry on 127.0.0.1, pulled into an empty store by `dcpp image pull` (download,
# verify, unpack), by the library without unpacking, and by `skopeo copy docker://… oci:…`
# (download, verify, no unpack), in the same run. Prints the mean times and the ratios.
# Run as root from the repo: bench/image-pull.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}

# DCPP=/path/to/dcpp measures an already built binary instead of building one.
if [[ -z ${DCPP:-} ]]; then
  cargo build --release -p dcpp --quiet
  DCPP=$PWD/target/release/dcpp
fi
# The library's pull without unpacking (download + verify + store blobs, as skopeo does),
# through runtime/examples/image_pull.rs. PULL_LIB=/path/to/image_pull to reuse a build.
if [[ -z ${PULL_LIB:-} ]]; then
  cargo build --release -p dcpp-runtime --example image_pull --quiet
  PULL_LIB=$PWD/target/release/examples/image_pull
fi

# BENCH_DIR picks the filesystem both tools write to (default /tmp).
WORK=$(mktemp -d "${BENCH_DIR:-/tmp}/dcpp-bench-pull-XXXXXX")
REG_PID=
cleanup() {
  if [[ -n $REG_PID ]]; then
    kill "$REG_PID" 2>/dev/null || true
    wait "$REG_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
ADDR=127.0.0.1:$PORT
mkdir -p "$WORK/registry"
cat >"$WORK/registry.yml" <<YML
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $WORK/registry
http:
  addr: $ADDR
  secret: bench
YML
/usr/bin/docker-registry serve "$WORK/registry.yml" >"$WORK/registry.log" 2>&1 &
REG_PID=$!
for _ in $(seq 100); do curl -sf "http://$ADDR/v2/" >/dev/null && break; sleep 0.1; done

# --- build the image as an OCI layout -------------------------------------------------------
L=$WORK/layout
mkdir -p "$L/blobs/sha256" "$WORK/src"
sha() { sha256sum "$1" | cut -d' ' -f1; }
put() { local h; h=$(sha "$1"); mv "$1" "$L/blobs/sha256/$h"; echo "$h"; }

# layer 1: busybox system + ~60 MB of compressible text
mkdir -p "$WORK/src/l1/bin" "$WORK/src/l1/usr/share/doc"
cp /bin/busybox "$WORK/src/l1/bin/busybox"
for a in $(/bin/busybox --list); do ln -sf busybox "$WORK/src/l1/bin/$a"; done
for i in $(seq 60); do
  seq -f "line %g of a compressible text file used by the dcpp pull benchmark" 1 15000 \
    >"$WORK/src/l1/usr/share/doc/f$i.txt"
done
# layer 2: ~70 MB incompressible in a few files
mkdir -p "$WORK/src/l2/data"
for i in 1 2 3 4 5 6 7; do head -c 10M /dev/urandom >"$WORK/src/l2/data/r$i.bin"; done
# layer 3: ~70 MB mixed: 35 MB random + 35 MB of many small text files
mkdir -p "$WORK/src/l3/app/small"
head -c 35M /dev/urandom >"$WORK/src/l3/app/blob.bin"
for i in $(seq 2000); do seq -f "small %g" 1 2000 >"$WORK/src/l3/app/small/s$i.txt"; done

LAYERS_JSON=""
DIFFS_JSON=""
for l in l1 l2 l3; do
  tar -C "$WORK/src/$l" -cf "$WORK/$l.tar" .
  diff=$(sha "$WORK/$l.tar")
  gzip -1 -c "$WORK/$l.tar" >"$WORK/$l.tar.gz"
  size=$(stat -c %s "$WORK/$l.tar.gz")
  h=$(put "$WORK/$l.tar.gz")
  rm "$WORK/$l.tar"
  LAYERS_JSON+="${LAYERS_JSON:+,}{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"sha256:$h\",\"size\":$size}"
  DIFFS_JSON+="${DIFFS_JSON:+,}\"sha256:$diff\""
done
ARCH=$(case $(uname -m) in x86_64) echo amd64;; aarch64) echo arm64;; *) uname -m;; esac)
printf '{"architecture":"%s","os":"linux","config":{"Cmd":["sh"]},"rootfs":{"type":"layers","diff_ids":[%s]}}' \
  "$ARCH" "$DIFFS_JSON" >"$WORK/config.json"
csize=$(stat -c %s "$WORK/config.json"); ch=$(put "$WORK/config.json")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[%s]}' \
  "$ch" "$csize" "$LAYERS_JSON" >"$WORK/manifest.json"
msize=$(stat -c %s "$WORK/manifest.json"); mh=$(put "$WORK/manifest.json")
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"bench"}}]}' \
  "$mh" "$msize" >"$L/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' >"$L/oci-layout"
rm -rf "$WORK/src"

skopeo copy --quiet --dest-tls-verify=false "oci:$L:bench" "docker://$ADDR/bench/big:1"
COMPRESSED=$(du -cb "$L"/blobs/sha256/* | tail -1 | cut -f1)
echo "image: 3 gzip layers, $((COMPRESSED / 1000000)) MB compressed, registry $ADDR"

# --- measure ----------------------------------------------------------------------------------
hyperfine --runs "$RUNS" --warmup 1 --export-json "$WORK/result.json" \
  --prepare "rm -rf $WORK/dcpp $WORK/nounpack $WORK/skopeo; sync" \
  -n dcpp "$DCPP --data-dir $WORK/dcpp image pull $ADDR/bench/big:1 >/dev/null" \
  -n nounpack "$PULL_LIB $WORK/nounpack $ADDR/bench/big:1 --no-unpack >/dev/null" \
  -n skopeo "skopeo copy --quiet --src-tls-verify=false docker://$ADDR/bench/big:1 oci:$WORK/skopeo:big"

python3 - "$WORK/result.json" <<'PY'
import json, sys
r = {x["command"]: x for x in json.load(open(sys.argv[1]))["results"]}
d, n, s = r["dcpp"]["mean"], r["nounpack"]["mean"], r["skopeo"]["mean"]
print(f"dcpp   pull (download+verify+unpack):  {d:.3f} s ± {r['dcpp']['stddev']:.3f}")
print(f"dcpp   pull, no unpack (download+verify): {n:.3f} s ± {r['nounpack']['stddev']:.3f}")
print(f"skopeo copy (download+verify):         {s:.3f} s ± {r['skopeo']['stddev']:.3f}")
print(f"ratio dcpp/skopeo: {d/s:.2f}  ({'dcpp no slower' if d <= s else 'dcpp slower'}); "
      f"without unpacking: {n/s:.2f}")
PY
