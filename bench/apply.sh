#!/usr/bin/env bash
# dcpp apply benchmark: time from `dcpp apply` to all running for 1/10/100 replicas, scale
# 1→100, rolling update of 50 replicas at parallelism 1, replacement of a killed container,
# unchanged apply, daemon RSS idle and with 100 containers. Runs its own daemon (own data dir,
# socket, port, cgroup parent, bridge prefix, nft table) and removes everything at the end.
# DCPP=path/to/dcpp picks the binary (default: target/release/dcpp, built if missing).
# ONLY=scale,update,replace runs only those sections after the applies (default all);
# APPLY_SIZES="1 10 100" the replica counts applied; REPLACE_RUNS=10 kills (one per slot).
set -euo pipefail
cd "$(dirname "$0")/.."
DCPP=${DCPP:-$PWD/target/release/dcpp}
[[ -x "$DCPP" ]] || cargo build --release --locked -p dcpp

ONLY=${ONLY:-all}
APPLY_SIZES=${APPLY_SIZES-1 10 100}
REPLACE_RUNS=${REPLACE_RUNS:-10}
WORK=$(mktemp -d /tmp/dcpp-bench-apply.XXXXXX)
export DCPP_DATA_DIR="$WORK/data" DCPP_HOST="unix://$WORK/dcpp.sock" DCPP_CGROUP_PARENT=dcpp-bench-apply
DAEMON_PID=
cleanup() {
  set +e
  if [[ -n "$DAEMON_PID" ]]; then
    "$DCPP" down -p bench --timeout 120s >/dev/null 2>&1
    kill "$DAEMON_PID"; wait "$DAEMON_PID" 2>/dev/null
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# shellcheck source=bench/lib.sh
source bench/lib.sh
import_busybox dcpp.local/busybox:bench

"$DCPP" daemon --listen 127.0.0.1:27477 --socket "$WORK/dcpp.sock" --bridge-prefix dcbn \
  --nft-table dcpp_bench --network-pool 10.252.0.0/16 2>"$WORK/daemon.log" &
DAEMON_PID=$!
for _ in $(seq 100); do "$DCPP" cluster status >/dev/null 2>&1 && break; sleep 0.1; done

compose() { # replicas version parallelism
  cat >"$WORK/compose.yml" <<YAML
name: bench
services:
  app:
    image: dcpp.local/busybox:bench
    command: ["sleep", "3600"]
    stop_signal: SIGKILL
    environment:
      VERSION: "$2"
    deploy:
      replicas: $1
      update_config:
        parallelism: ${3:-0}
        monitor: 0s
YAML
}
now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc -l | xargs printf '%.3f'; }
rss() { awk '/VmRSS/ {printf "%.1f MiB", $2/1024}' "/proc/$DAEMON_PID/status"; }

want() { [[ ",$ONLY," == *",$1,"* || "$ONLY" == all ]]; }

sleep 1
echo "daemon RSS idle: $(rss)"
for n in $APPLY_SIZES; do
  compose "$n" 1
  t0=$(now); "$DCPP" apply -f "$WORK/compose.yml" >/dev/null 2>&1; t1=$(now)
  echo "apply $n replicas -> all running: $(secs "$t0" "$t1") s"
  if [[ $n == 100 ]]; then echo "daemon RSS with 100 containers: $(rss)"; fi
  "$DCPP" down -p bench >/dev/null
done

if want scale; then
compose 1 1
"$DCPP" apply -f "$WORK/compose.yml" >/dev/null 2>&1
t0=$(now); "$DCPP" service scale app=100 >/dev/null 2>&1; t1=$(now)
echo "scale 1 -> 100: $(secs "$t0" "$t1") s"
"$DCPP" down -p bench >/dev/null
fi

if want update; then
compose 50 1 1
"$DCPP" apply -f "$WORK/compose.yml" >/dev/null 2>&1
compose 50 2 1
t0=$(now); "$DCPP" apply -f "$WORK/compose.yml" >/dev/null 2>&1; t1=$(now)
echo "rolling update of 50 replicas at parallelism 1: $(secs "$t0" "$t1") s"

t0=$(now); for _ in 1 2 3 4 5 6 7 8 9 10; do "$DCPP" apply -f "$WORK/compose.yml" >/dev/null 2>&1; done; t1=$(now)
echo "unchanged apply (mean of 10): $(echo "($t1 - $t0) / 10" | bc -l | xargs printf '%.3f') s"
"$DCPP" down -p bench >/dev/null
fi

if want replace; then
  # One kill per slot (a slot's second death within 10 s would add crash-loop backoff), 1 s
  # apart; each replacement is timed from just before the kill to the successor task's
  # started_at as the agent recorded it (no CLI polling in the figure).
  compose "$REPLACE_RUNS" 1
  "$DCPP" apply -f "$WORK/compose.yml" >/dev/null 2>&1
  : >"$WORK/kills"
  for slot in $(seq "$REPLACE_RUNS"); do
    id=$("$DCPP" ps --format json | python3 -c '
import json, sys
slot = int(sys.argv[1])
for t in json.load(sys.stdin):
    if t["slot"] == {"replica": slot} and t["state"] == "running":
        print(t["id"], t["container_id"])
' "$slot")
    read -r task ctr <<<"$id"
    echo "$task $(date +%s%3N)" >>"$WORK/kills"
    "$DCPP" container kill "$ctr" >/dev/null
    sleep 1
  done
  for _ in $(seq 100); do
    [[ $("$DCPP" ps --format json | grep -c '"state": "running"') == "$REPLACE_RUNS" ]] && break
    sleep 0.1
  done
  "$DCPP" ps -a --format json | python3 -c '
import json, sys
tasks = json.load(sys.stdin)
kills = dict(tuple(map(int, l.split())) for l in open(sys.argv[1]))
by_id = {t["id"]: t for t in tasks}
out = []
for tid, t0 in kills.items():
    old = by_id.get(tid)
    nxt = [t for t in tasks if old and t["slot"] == old["slot"] and t["id"] > tid and t.get("started_at")]
    if nxt:
        out.append(min(nxt, key=lambda t: t["id"])["started_at"] - t0)
out.sort()
if out:
    med = out[len(out) // 2]
    print("killed container replaced (kill -> successor running), %d runs: min %d ms, median %d ms, max %d ms; all: %s"
          % (len(out), out[0], med, out[-1], " ".join(map(str, out))))
else:
    print("killed container replaced: no replacement observed")
' "$WORK/kills"
  "$DCPP" down -p bench >/dev/null
fi
