#!/usr/bin/env bash
# The demo: set up, build, prepare a local busybox image (no internet), start a daemon with its
# own data dir, apply examples/web/compose.yml, show it working, apply examples/build (built by
# dcpp apply from its Dockerfile), tear everything down.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# DCPP_PROFILE=debug reuses a debug build (faster on a machine that already has one).
if [[ "${DCPP_PROFILE:-release}" == debug ]]; then
  cargo build --locked
  DCPP="$PWD/target/debug/dcpp"
else
  cargo build --release --locked
  DCPP="$PWD/target/release/dcpp"
fi

WORK=$(mktemp -d /tmp/dcpp-demo.XXXXXX)
export DCPP_DATA_DIR="$WORK/data"
export DCPP_HOST="unix://$WORK/dcpp.sock"
export DCPP_CGROUP_PARENT=dcpp-demo
DAEMON_PID=
cleanup() {
  set +e
  if [[ -n "$DAEMON_PID" ]] && kill -0 "$DAEMON_PID" 2>/dev/null; then
    "$DCPP" down -p web --timeout 60s >/dev/null 2>&1
    "$DCPP" down -p build --timeout 60s >/dev/null 2>&1
    kill "$DAEMON_PID"
    wait "$DAEMON_PID" 2>/dev/null
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "== preparing image dcpp.local/busybox:latest from busybox-static"
ROOTFS="$WORK/rootfs"
mkdir -p "$ROOTFS"/{bin,etc,tmp,www}
cp /bin/busybox "$ROOTFS/bin/busybox"
for a in $(/bin/busybox --list); do [[ "$a" == busybox ]] || ln -s busybox "$ROOTFS/bin/$a"; done
echo 'root:x:0:0:root:/root:/bin/sh' >"$ROOTFS/etc/passwd"
echo "hello from dcpp" >"$ROOTFS/www/index.html"
"$DCPP" image import "$ROOTFS" dcpp.local/busybox:latest

echo "== starting a daemon (data dir $DCPP_DATA_DIR)"
"$DCPP" daemon --listen 127.0.0.1:27377 --socket "$WORK/dcpp.sock" \
  --bridge-prefix dcdem --nft-table dcpp_demo --network-pool 10.251.0.0/16 \
  2>"$WORK/daemon.log" &
DAEMON_PID=$!
for _ in $(seq 100); do "$DCPP" cluster status >/dev/null 2>&1 && break; sleep 0.1; done

echo "== dcpp apply -f examples/web/compose.yml"
"$DCPP" apply -f examples/web/compose.yml
echo "== dcpp ps"
"$DCPP" ps
echo "== curl http://127.0.0.1:18080/"
curl -fsS http://127.0.0.1:18080/
sleep 2
CLIENT=$("$DCPP" container ls | awk '/web_client\.1\./ {print $1}')
echo "== the client's log (it reaches web by service name)"
"$DCPP" logs "$CLIENT" | tail -n 3
echo "== dcpp service scale web=3"
"$DCPP" service scale web=3
echo "== dcpp down"
"$DCPP" down -p web
echo "== dcpp apply -f examples/build/compose.yml (the image built from examples/build/site)"
"$DCPP" apply -f examples/build/compose.yml
echo "== curl http://127.0.0.1:18081/"
curl -fsS http://127.0.0.1:18081/
"$DCPP" down -p build
kill "$DAEMON_PID"
wait "$DAEMON_PID" 2>/dev/null || true
DAEMON_PID=
if ip -o link | grep -q dcdem || nft list table ip dcpp_demo >/dev/null 2>&1; then
  echo "leftovers found" >&2
  exit 1
fi
echo "== done: no containers, bridges or nft rules left"
