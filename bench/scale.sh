#!/usr/bin/env bash
# dcpp one-node scale benchmark: `dcpp apply` of REPLICAS (default 1000) replicas of one service
# (time to all running, daemon RSS, the latency of `ps`, `service ls` and `logs` while it runs),
# the per-container monitor cost (RSS/PSS from /proc/PID/smaps_rollup of the monitors, which are
# re-parented to init, sampled 3-20 s after an apply of MONITORS (default 50) `sleep` replicas
# without init), `down` of the REPLICAS (time) and the daemon RSS after it, against the idle
# figure. Runs its own daemon (own data dir, socket, port, cgroup parent, bridge prefix, nft
# table, address pool) and removes everything at the end.
#
# With SWARM=1 and dockerd available (`apt-get install docker.io`), the same apply/down runs on
# a one-node docker swarm in the same run: SWARM_SIZES (default "100 300 1000"; a size that does
# not converge within 10 minutes ends the swarm part). The iptables FORWARD policy is recorded
# before docker starts and restored after, docker's bridges are removed and docker is stopped.
#
# DCPP=path/to/dcpp picks the binary (default: target/release/dcpp with dcpp-shim beside it,
# built if missing). CYCLES=2 repeats the large apply/down to show RSS coming back each time.
set -euo pipefail
cd "$(dirname "$0")/.."
DCPP=${DCPP:-$PWD/target/release/dcpp}
if [[ ! -x "$DCPP" ]]; then
  cargo build --release --locked -p dcpp -p dcpp-runtime --bin dcpp --bin dcpp-shim
fi

REPLICAS=${REPLICAS:-1000}
MONITORS=${MONITORS:-50}
CYCLES=${CYCLES:-1}
SWARM=${SWARM:-0}
SWARM_SIZES=${SWARM_SIZES:-100 300 1000}
WORK=$(mktemp -d /tmp/dcpp-bench-scale.XXXXXX)
export DCPP_DATA_DIR="$WORK/data" DCPP_HOST="unix://$WORK/dcpp.sock" DCPP_CGROUP_PARENT=dcpp-bench-scale
DAEMON_PID=
cleanup() {
  set +e
  if [[ -n "$DAEMON_PID" ]]; then
    "$DCPP" down -p scale --timeout 120s >/dev/null 2>&1
    kill "$DAEMON_PID"; wait "$DAEMON_PID" 2>/dev/null
  fi
  [[ -n "${KEEP_LOG:-}" ]] && cp "$WORK/daemon.log" "$KEEP_LOG"
  rm -rf "$WORK"
}
trap cleanup EXIT

# shellcheck source=bench/lib.sh
source bench/lib.sh
import_busybox dcpp.local/busybox:scale

"$DCPP" daemon --listen 127.0.0.1:27478 --socket "$WORK/dcpp.sock" --bridge-prefix dcsc \
  --nft-table dcpp_bench_scale --network-pool 10.253.0.0/16/20 2>"$WORK/daemon.log" &
DAEMON_PID=$!
for _ in $(seq 100); do "$DCPP" cluster status >/dev/null 2>&1 && break; sleep 0.1; done

compose() { # replicas
  cat >"$WORK/compose.yml" <<YAML
name: scale
services:
  app:
    image: dcpp.local/busybox:scale
    command: ["sleep", "3600"]
    stop_signal: SIGKILL
    deploy:
      replicas: $1
YAML
}
now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc -l | xargs printf '%.3f'; }
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
threads() { awk '/^Threads:/ {print $2}' "/proc/$1/status"; }
mib() { echo "$1" | awk '{printf "%.1f MiB", $1/1024}'; }
running() { "$DCPP" ps --format json | grep -c '"state": "running"' || true; }

# The monitors of this daemon's containers: processes whose parent is init and whose command
# line names this run's data dir.
monitor_cost() {
  local n=0 rss=0 pss=0 pid
  for pid in $(pgrep -P 1 -f "$WORK/data/containers/" || true); do
    [[ -r /proc/$pid/smaps_rollup ]] || continue
    read -r r p < <(awk '/^Rss:/ {r=$2} /^Pss:/ {p=$2} END {print r, p}' "/proc/$pid/smaps_rollup")
    n=$((n + 1)); rss=$((rss + r)); pss=$((pss + p))
  done
  if ((n == 0)); then echo "no monitors found"; return; fi
  echo "$n monitors: RSS $(echo "$rss $n" | awk '{printf "%.2f", $1/$2/1024}') MiB, PSS $(echo "$pss $n" | awk '{printf "%.2f", $1/$2/1024}') MiB on average"
}

# Latency of the everyday commands while an apply runs: the slowest of each over the apply.
probe() {
  local out=$1 ps=0 ls=0 lg=0 t0 t1 d
  : >"$out"
  while [[ -e "$WORK/applying" ]]; do
    t0=$(now); "$DCPP" ps >/dev/null 2>&1 || true; t1=$(now); d=$(secs "$t0" "$t1")
    ps=$(echo "$d $ps" | awk '{print ($1 > $2) ? $1 : $2}')
    t0=$(now); "$DCPP" service ls >/dev/null 2>&1 || true; t1=$(now); d=$(secs "$t0" "$t1")
    ls=$(echo "$d $ls" | awk '{print ($1 > $2) ? $1 : $2}')
    t0=$(now); "$DCPP" logs --tail 1 app >/dev/null 2>&1 || true; t1=$(now); d=$(secs "$t0" "$t1")
    lg=$(echo "$d $lg" | awk '{print ($1 > $2) ? $1 : $2}')
    sleep 0.2
  done
  echo "during the apply, slowest: ps $ps s, service ls $ls s, logs $lg s" >"$out"
}

sleep 2
IDLE=$(rss_kib "$DAEMON_PID")
echo "dcpp daemon RSS idle: $(mib "$IDLE")"

compose "$MONITORS"
"$DCPP" apply -f "$WORK/compose.yml" >/dev/null 2>&1
sleep 3
echo "dcpp monitor cost, $MONITORS replicas of sleep, 3 s after apply: $(monitor_cost)"
"$DCPP" down -p scale >/dev/null

for cycle in $(seq "$CYCLES"); do
  compose "$REPLICAS"
  touch "$WORK/applying"
  probe "$WORK/probe" &
  PROBE=$!
  t0=$(now)
  "$DCPP" apply -f "$WORK/compose.yml" --timeout 600s >/dev/null 2>"$WORK/apply.err"
  t1=$(now)
  rm -f "$WORK/applying"; wait "$PROBE"
  echo "[$cycle] dcpp apply $REPLICAS replicas -> all running: $(secs "$t0" "$t1") s ($(running) running)"
  cat "$WORK/probe" | sed "s/^/[$cycle] dcpp /"
  echo "[$cycle] dcpp daemon RSS with $REPLICAS containers: $(mib "$(rss_kib "$DAEMON_PID")") ($(threads "$DAEMON_PID") threads)"
  echo "[$cycle] dcpp monitor cost with $REPLICAS containers: $(monitor_cost)"
  t0=$(now); "$DCPP" down -p scale --timeout 120s >/dev/null; t1=$(now)
  echo "[$cycle] dcpp down of $REPLICAS: $(secs "$t0" "$t1") s"
  for wait in 2 15; do
    sleep $((wait == 2 ? 2 : 13))
    after=$(rss_kib "$DAEMON_PID")
    echo "[$cycle] dcpp daemon RSS $wait s after down: $(mib "$after") (idle $(mib "$IDLE"), +$(mib $((after - IDLE))); $(threads "$DAEMON_PID") threads)"
  done
done

if [[ "$SWARM" == 1 ]]; then
  if ! command -v dockerd >/dev/null; then
    echo "docker swarm: dockerd not installed (apt-get install docker.io), skipped"
    exit 0
  fi
  FORWARD=$(iptables -S FORWARD | awk '/^-P FORWARD/ {print $3}')
  DOCKER_WAS_UP=0
  docker info >/dev/null 2>&1 && DOCKER_WAS_UP=1
  swarm_cleanup() {
    set +e
    docker service rm scale_app >/dev/null 2>&1
    # Swarm removes a service's containers well after they stop running; stopping dockerd
    # before they are gone leaves their shims, overlay mounts and netns behind.
    for _ in $(seq 600); do
      [[ -z "$(docker ps -aq --filter label=com.docker.swarm.service.name=scale_app)" ]] && break
      sleep 0.5
    done
    docker swarm leave --force >/dev/null 2>&1
    if [[ $DOCKER_WAS_UP == 0 ]]; then
      systemctl stop docker docker.socket >/dev/null 2>&1 || {
        pkill -x dockerd
        for _ in $(seq 120); do pgrep -x dockerd >/dev/null || break; sleep 0.5; done
      }
      for br in docker0 docker_gwbridge; do ip link del "$br" 2>/dev/null; done
    fi
    iptables -P FORWARD "$FORWARD"
    cleanup
  }
  trap swarm_cleanup EXIT
  if [[ $DOCKER_WAS_UP == 0 ]]; then
    (systemctl start docker 2>/dev/null || (dockerd >"$WORK/dockerd.log" 2>&1 &))
    for _ in $(seq 100); do docker info >/dev/null 2>&1 && break; sleep 0.3; done
  fi
  docker swarm init --advertise-addr 127.0.0.1 >/dev/null 2>&1 || true
  docker image inspect busybox:latest >/dev/null 2>&1 || tar -C "$WORK/rootfs" -c . | docker import - busybox:latest >/dev/null
  for n in $SWARM_SIZES; do
    t0=$(now)
    docker service create --detach --name scale_app --replicas "$n" --stop-signal SIGKILL \
      busybox:latest sleep 3600 >/dev/null
    ok=0
    for _ in $(seq 1200); do
      r=$(docker service ls --filter name=scale_app --format '{{.Replicas}}')
      [[ "$r" == "$n/$n" ]] && { ok=1; break; }
      sleep 0.5
    done
    t1=$(now)
    if [[ $ok == 1 ]]; then
      echo "docker swarm $n replicas -> all running: $(secs "$t0" "$t1") s"
    else
      echo "docker swarm $n replicas: not all running after 10 minutes ($r)"
    fi
    dpid=$(pgrep -xo dockerd)
    echo "docker swarm dockerd RSS with $n containers: $(mib "$(rss_kib "$dpid")")"
    t0=$(now); docker service rm scale_app >/dev/null
    while [[ -n "$(docker ps -q --filter label=com.docker.swarm.service.name=scale_app)" ]]; do sleep 0.5; done
    t1=$(now)
    echo "docker swarm remove of $n: $(secs "$t0" "$t1") s"
    [[ $ok == 1 ]] || break
  done
fi
