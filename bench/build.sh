#!/usr/bin/env bash
# dcpp image build benchmark: a 6-step Dockerfile (FROM, WORKDIR, COPY of a 100-file dir, RUN
# writing 200 files, COPY of one file, CMD) built cold (--no-cache), fully cached, and with the
# one copied file changed; the median of RUNS builds each. No daemon: `dcpp image build` works
# on its data dir, as the other image commands do. With DOCKER=1 the same Dockerfile and context
# are built by `docker build` (classic builder, DOCKER_BUILDKIT=0) from the same busybox rootfs
# imported into docker, when docker runs on this machine.
# DCPP=path/to/dcpp picks the binary (default: target/release/dcpp, built if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
DCPP=${DCPP:-$PWD/target/release/dcpp}
[[ -x "$DCPP" ]] || cargo build --release --locked -p dcpp
RUNS=${RUNS:-5}

WORK=$(mktemp -d /tmp/dcpp-bench-build.XXXXXX)
export DCPP_DATA_DIR="$WORK/data" DCPP_CGROUP_PARENT=dcpp-bench-build
DOCKER_IMAGES=()
cleanup() {
  set +e
  for i in "${DOCKER_IMAGES[@]}"; do docker rmi -f "$i" >/dev/null 2>&1; done
  rm -rf "$WORK"
  # The build containers are gone; their parent cgroup, made by the first of them, is not.
  for d in /sys/fs/cgroup/*/"$DCPP_CGROUP_PARENT" /sys/fs/cgroup/"$DCPP_CGROUP_PARENT"; do
    [[ -d "$d" ]] && rmdir "$d"
  done
}
trap cleanup EXIT

# shellcheck source=bench/lib.sh
source bench/lib.sh
import_busybox dcpp.local/busybox:bench

CTX="$WORK/ctx"
mkdir -p "$CTX/data"
for i in $(seq 1 100); do head -c 4096 /dev/urandom >"$CTX/data/f$i"; done
echo v0 >"$CTX/main.txt"
cat >"$CTX/Dockerfile" <<'DOCKERFILE'
FROM dcpp.local/busybox:bench
WORKDIR /app
COPY data/ ./data/
RUN for i in $(seq 1 200); do echo $i > /app/gen$i; done
COPY main.txt ./
CMD ["cat", "/app/main.txt"]
DOCKERFILE

now() { date +%s%N; }
# median of the millisecond figures on stdin
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# time_ms CMD…: runs it quietly, prints its wall time in ms (fails the script if it fails)
time_ms() {
  local t0 t1
  t0=$(now)
  "$@" >"$WORK/last.log" 2>&1 || { cat "$WORK/last.log" >&2; return 1; }
  t1=$(now)
  echo $(((t1 - t0) / 1000000))
}

# bench_builder NAME BUILD…: BUILD is the build command without its context argument.
bench_builder() {
  local name=$1
  shift
  local cold=() cached=() changed=()
  "$@" "$CTX" >/dev/null 2>&1 # warm the base image (unpacked layers, page cache)
  for r in $(seq 1 "$RUNS"); do
    cold+=("$(time_ms "$@" --no-cache "$CTX")")
    cached+=("$(time_ms "$@" "$CTX")")
    echo "v$r" >"$CTX/main.txt"
    changed+=("$(time_ms "$@" "$CTX")")
  done
  printf '%-8s cold %6s ms   cached %6s ms   one copied file changed %6s ms   (median of %s)\n' \
    "$name" \
    "$(printf '%s\n' "${cold[@]}" | median)" \
    "$(printf '%s\n' "${cached[@]}" | median)" \
    "$(printf '%s\n' "${changed[@]}" | median)" "$RUNS"
}

# Checks once that the cached rebuild really executes nothing.
"$DCPP" image build -t bench/app:1 "$CTX" >/dev/null
hits=$("$DCPP" image build -t bench/app:1 "$CTX" | grep -c -- '---> Using cache' || true)
[[ "$hits" == 5 ]] || { echo "expected 5 cached steps, got $hits" >&2; exit 1; }

bench_builder dcpp "$DCPP" image build -t bench/app:1

if [[ "${DOCKER:-0}" == 1 ]]; then
  if ! command -v docker >/dev/null || ! docker info >/dev/null 2>&1; then
    echo "docker: not running on this machine, skipped"
  else
    tar -C "$WORK/rootfs" -c . | docker import - dcpp.local/busybox:bench >/dev/null
    DOCKER_IMAGES+=(dcpp.local/busybox:bench bench/app:1)
    echo "docker: $(docker version --format '{{.Server.Version}}') classic builder"
    bench_builder docker env DOCKER_BUILDKIT=0 docker build -q -t bench/app:1
  fi
fi
