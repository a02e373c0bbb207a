#!/usr/bin/env bash
# dcpp metrics cost: scrape latency of GET /metrics at N containers (client-side p50/p99 over
# back-to-back scrapes, and the daemon's own dcpp_metrics_scrape_duration_seconds), the
# daemon's RSS and CPU with N containers idle and while scraped once a second, and the time
# to apply N replicas with and without a scraper running. Runs its own daemon (own data dir,
# socket, ports, cgroup parent, bridge prefix, nft table, pool) and removes everything at the end.
# DCPP=path/to/dcpp picks the binary (default: target/release/dcpp, built if missing).
# CONTAINERS=100 replicas; SCRAPES=200 back-to-back scrapes; WINDOW=10 seconds per CPU window.
set -euo pipefail
cd "$(dirname "$0")/.."
DCPP=${DCPP:-$PWD/target/release/dcpp}
[[ -x "$DCPP" ]] || cargo build --release --locked -p dcpp

CONTAINERS=${CONTAINERS:-100}
SCRAPES=${SCRAPES:-200}
WINDOW=${WINDOW:-10}
METRICS=127.0.0.1:27492
WORK=$(mktemp -d /tmp/dcpp-bench-metrics.XXXXXX)
export DCPP_DATA_DIR="$WORK/data" DCPP_HOST="unix://$WORK/dcpp.sock" DCPP_CGROUP_PARENT=dcpp-bench-metrics
DAEMON_PID=
SCRAPER_PID=
cleanup() {
  set +e
  [[ -n "$SCRAPER_PID" ]] && kill "$SCRAPER_PID" 2>/dev/null
  if [[ -n "$DAEMON_PID" ]]; then
    "$DCPP" down -p benchm --timeout 120s >/dev/null 2>&1
    kill "$DAEMON_PID"; wait "$DAEMON_PID" 2>/dev/null
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# shellcheck source=bench/lib.sh
source bench/lib.sh
import_busybox dcpp.local/busybox:bench

DCPP_LOG=warn,dcpp::cmd::metrics=debug "$DCPP" daemon --listen 127.0.0.1:27491 --socket "$WORK/dcpp.sock" --bridge-prefix dcbm \
  --nft-table dcpp_bench_metrics --network-pool 10.250.0.0/16 --metrics-addr "$METRICS" \
  2>"$WORK/daemon.log" &
DAEMON_PID=$!
for _ in $(seq 100); do "$DCPP" cluster status >/dev/null 2>&1 && break; sleep 0.1; done
kill -0 "$DAEMON_PID" 2>/dev/null || { echo "the daemon did not start:" >&2; cat "$WORK/daemon.log" >&2; DAEMON_PID=; exit 1; }

cat >"$WORK/compose.yml" <<YAML
name: benchm
services:
  app:
    image: dcpp.local/busybox:bench
    command: ["sleep", "3600"]
    stop_signal: SIGKILL
    deploy:
      replicas: $CONTAINERS
YAML
now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc -l | xargs printf '%.3f'; }
rss() { awk '/VmRSS/ {printf "%.1f MiB", $2/1024}' "/proc/$DAEMON_PID/status"; }
# utime + stime of the daemon, in clock ticks.
ticks() { awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$DAEMON_PID/stat"; }
cpu_pct() { echo "($2 - $1) * 100 / $(getconf CLK_TCK) / $WINDOW" | bc -l | xargs printf '%.1f%%'; }
scrape() { curl -sf -o /dev/null -w '%{time_total}\n' "http://$METRICS/metrics"; }
scraper() { while :; do scrape >/dev/null; sleep 1; done; }
server_side() { # sum count of the daemon's own scrape histogram
  curl -sf "http://$METRICS/metrics" | awk '
    /^dcpp_metrics_scrape_duration_seconds_sum/ {s=$2}
    /^dcpp_metrics_scrape_duration_seconds_count/ {c=$2}
    END {print s, c}'
}

sleep 1
echo "daemon RSS idle, no containers: $(rss)"
t0=$(now); "$DCPP" apply -f "$WORK/compose.yml" >/dev/null 2>&1; t1=$(now)
echo "apply $CONTAINERS replicas -> all running, no scraper: $(secs "$t0" "$t1") s"
running=$("$DCPP" ps --format json | grep -c '"state": "running"' || true)
[[ "$running" == "$CONTAINERS" ]] || { echo "only $running of $CONTAINERS running" >&2; exit 1; }
sleep 2

c0=$(ticks); sleep "$WINDOW"; c1=$(ticks)
echo "$CONTAINERS containers, not scraped: RSS $(rss), CPU $(cpu_pct "$c0" "$c1") over ${WINDOW} s"
c0=$(ticks); for _ in $(seq "$WINDOW"); do scrape >/dev/null; sleep 1; done; c1=$(ticks)
echo "$CONTAINERS containers, scraped once a second: RSS $(rss), CPU $(cpu_pct "$c0" "$c1") over ${WINDOW} s"

samples=$(curl -sf "http://$METRICS/metrics" | grep -c '^container_cpu_usage_seconds_total{' || true)
[[ "$samples" == "$CONTAINERS" ]] || { echo "$samples container series, want $CONTAINERS" >&2; exit 1; }
read -r s0 n0 < <(server_side)
c0=$(ticks)
for _ in $(seq "$SCRAPES"); do scrape; done | sort -n >"$WORK/took"
c1=$(ticks)
read -r s1 n1 < <(server_side)
python3 - "$WORK/took" "$s0" "$n0" "$s1" "$n1" "$c0" "$c1" "$(getconf CLK_TCK)" "$CONTAINERS" <<'PY'
import sys
took = [float(l) * 1000 for l in open(sys.argv[1])]
s0, n0, s1, n1, c0, c1, hz = map(float, sys.argv[2:9])
pick = lambda q: took[min(len(took) - 1, int(q * len(took)))]
print("%d back-to-back scrapes at %s containers: client p50 %.2f ms, p99 %.2f ms, max %.2f ms; "
      "server-side mean %.2f ms; daemon CPU per scrape %.2f ms"
      % (len(took), sys.argv[9], pick(0.5), pick(0.99), took[-1],
         (s1 - s0) / max(n1 - n0, 1) * 1000, (c1 - c0) / hz / len(took) * 1000))
PY
echo "scrape body: $(curl -sf "http://$METRICS/metrics" | wc -c) bytes"
echo "the daemon's split of its last scrape: $(grep 'metrics read' "$WORK/daemon.log" | tail -1 | sed -e 's/\x1b\[[0-9;]*m//g' -e 's/.*metrics read//')"

"$DCPP" down -p benchm >/dev/null
scraper & SCRAPER_PID=$!
t0=$(now); "$DCPP" apply -f "$WORK/compose.yml" >/dev/null 2>&1; t1=$(now)
echo "apply $CONTAINERS replicas -> all running, scraped once a second: $(secs "$t0" "$t1") s"
kill "$SCRAPER_PID"; SCRAPER_PID=
