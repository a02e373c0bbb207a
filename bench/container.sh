#!/usr/bin/env bash
# Container benchmarks (run as root, not part of CI):
#  1. create-start-exit latency of `true` in a fully isolated container (pid, mount, uts, ipc,
#     net, cgroup namespaces; cgroup; seccomp; caps) — `dcpp container run --rm` against
#     `crun run` and `runc run` on an equivalent OCI bundle (the config.json dcpp generated),
#     measured with hyperfine in the same run;
#  2. per-container monitor memory with N `sleep` containers running (RSS and PSS).
# Usage: bench/container.sh [N_SLEEPERS=100] [RUNS=50]
# Env: NO_BUILD=1 (use the built binaries), ONLY=latency|memory (one part only),
#      BASELINE=DIR (also time DIR/dcpp, e.g. an older build with its dcpp-shim beside it).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-100}
RUNS=${2:-50}

PROFILE=${PROFILE:-release}
[ -n "${NO_BUILD:-}" ] || cargo build --profile "$PROFILE" -q -p dcpp -p dcpp-runtime --bins
DIR=$PWD/target/$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")
DCPP=$DIR/dcpp
SHIM=$DIR/dcpp-shim
WORK=$(mktemp -d /tmp/dcpp-bench-XXXXXX)
export DCPP_DATA_DIR=$WORK/data DCPP_CGROUP_PARENT=dcpp-bench-$$
cleanup() {
  for id in $("$DCPP" container ls -a -q 2>/dev/null); do "$DCPP" container rm -f "$id" >/dev/null 2>&1 || true; done
  runc delete -f bench-runc >/dev/null 2>&1 || true
  crun delete -f bench-crun >/dev/null 2>&1 || true
  for d in /sys/fs/cgroup/*/"$DCPP_CGROUP_PARENT"; do [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null; done
  rm -rf "$WORK"
}
trap cleanup EXIT

# A busybox image.
ROOTFS=$WORK/rootfs
mkdir -p "$ROOTFS"/{bin,etc,proc,sys,dev,tmp}
cp /bin/busybox "$ROOTFS/bin/"
for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -s busybox "$ROOTFS/bin/$a"; done
echo 'root:x:0:0:root:/root:/bin/sh' >"$ROOTFS/etc/passwd"
echo 'root:x:0:' >"$ROOTFS/etc/group"
"$DCPP" image import "$ROOTFS" bench:1 >/dev/null

# The equivalent bundle: dcpp's own config.json for `true`, with a plain copy of the rootfs.
ID=$("$DCPP" container create --name bundle-src bench:1 true)
SRC=$DCPP_DATA_DIR/containers/$ID
for rt in runc crun; do
  B=$WORK/bundle-$rt
  mkdir -p "$B"
  cp -a "$ROOTFS" "$B/rootfs"
  cp "$SRC"/{hosts,hostname,resolv.conf} "$B/"
  sed -e "s#$SRC#$B#g" -e "s#/$DCPP_CGROUP_PARENT/$ID#/$DCPP_CGROUP_PARENT/bench-$rt#" "$SRC/config.json" >"$B/config.json"
done
"$DCPP" container rm -f "$ID" >/dev/null

if [ "${ONLY:-latency}" = latency ]; then
echo "== create-start-exit latency of 'true' (fully isolated, netns included), $RUNS runs"
CMDS=("$DCPP container run --rm bench:1 true"
      "runc --root $WORK/runc-root run --bundle $WORK/bundle-runc bench-runc")
[ -z "${BASELINE:-}" ] || CMDS+=("$BASELINE/dcpp container run --rm bench:1 true")
if crun --root "$WORK/crun-root" run --bundle "$WORK/bundle-crun" bench-crun >/dev/null 2>"$WORK/crun.err"; then
  CMDS+=("crun --root $WORK/crun-root run --bundle $WORK/bundle-crun bench-crun")
else
  echo "crun refuses this machine's cgroup layout: $(tr '\n' ' ' <"$WORK/crun.err")"
  crun --root "$WORK/crun-root" delete -f bench-crun >/dev/null 2>&1 || true
fi
hyperfine -N --warmup 3 --runs "$RUNS" --export-json "$WORK/latency.json" "${CMDS[@]}"
fi
[ "${ONLY:-memory}" = memory ] || exit 0

measure_monitors() {
  local label=$1
  for i in $(seq 1 "$N"); do "$DCPP" container run -d --name "s$i" bench:1 sleep 3600 >/dev/null; done
  local rss=0 pss=0 count=0 r p
  for pid in $(pgrep -f -- "(create|monitor) $DCPP_DATA_DIR/containers/" || true); do
    r=$(awk '/^Rss:/{print $2}' /proc/"$pid"/smaps_rollup)
    p=$(awk '/^Pss:/{print $2}' /proc/"$pid"/smaps_rollup)
    rss=$((rss + r)) pss=$((pss + p)) count=$((count + 1))
  done
  echo "$label: $count monitors, RSS avg $((rss / count)) KiB, PSS avg $((pss / count)) KiB"
  for i in $(seq 1 "$N"); do "$DCPP" container rm -f "s$i" >/dev/null; done
}
echo "== per-container monitor memory, $N sleep containers"
DCPP_SHIM=$SHIM measure_monitors "dcpp-shim binary as monitor (default when installed next to dcpp)"
DCPP_SHIM=self measure_monitors "dcpp binary re-executed as monitor (dcpp __shim)"
