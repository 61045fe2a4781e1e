#!/bin/sh
# bench/etcd.sh: build the plain-libcurl baseline, start a throwaway etcd on
# loopback (data in /dev/shm when available), run bench/etcd_watch.lua inside our
# host, print the table, write bench/results/etcd.json. Usage: bench/etcd.sh [N_LATENCY N_GETS]
set -eu
cd "$(dirname "$0")/.."
BIN=${SPGB_BIN:-./stolon-pgbouncer}
base=/tmp; [ -d /dev/shm ] && base=/dev/shm
dir=$(mktemp -d "$base/spgb-etcd-bench.XXXXXX")
port=${ETCD_BENCH_PORT:-24990}
etcd_pid=
cleanup() { [ -n "$etcd_pid" ] && kill "$etcd_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT INT TERM
cc -O2 -o "$dir/etcd_watch_baseline" bench/etcd_watch_baseline.c $(pkg-config --cflags --libs libcurl)
etcd --name bench --data-dir "$dir/data" \
  --listen-client-urls "http://127.0.0.1:$port" --advertise-client-urls "http://127.0.0.1:$port" \
  --listen-peer-urls "http://127.0.0.1:$((port + 1))" \
  --initial-advertise-peer-urls "http://127.0.0.1:$((port + 1))" \
  --initial-cluster "bench=http://127.0.0.1:$((port + 1))" --log-level error --logger zap \
  >"$dir/etcd.log" 2>&1 &
etcd_pid=$!
i=0
until curl -sf "http://127.0.0.1:$port/health" >/dev/null; do
  i=$((i + 1)); [ $i -gt 100 ] && { echo "etcd did not start" >&2; cat "$dir/etcd.log" >&2; exit 1; }
  sleep 0.1
done
"$BIN" run bench/etcd_watch.lua "http://127.0.0.1:$port" "$dir/etcd_watch_baseline" "${1:-1000}" "${2:-3000}"
