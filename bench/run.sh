#!/bin/sh
# bench/run.sh: every benchmark, one table. POSIX sh; about 11-13 minutes on 2 cores.
#   etcd.sh, pgbouncer.sh, http.sh   the primitives against plain C baselines
#   convergence.lua                  etcd put -> supervised PgBouncer routes (200 changes)
#   fanout.lua                       pause/resume 1, 3, 16 PgBouncers via pausers, 64 with fakes
#   failover.lua                     5 failovers each at 1s and 250ms, aligned and not, under load
#   killed_failover.lua              a SIGKILLed failover's stall: pause lease vs expiry only
#   patroni.lua                      real Patroni: plain patronictl switchovers vs ours, under load
#   footprint.lua                    RSS/PSS/CPU idle (60 s), start-up, `run` start-up
# Prints benchmark | figure | value | floor/baseline | ratio | goal | met? with the
# machine and date; writes bench/results/all.json (and one JSON + log per script).
# Exits 1 when a script failed (failover.lua does when a failover fails a transaction).
# Addresses 127.0.2.x only (patroni.lua: 127.0.12.x); etcd on port $BENCH_ETCD_PORT
# (default 22570, +1 peer).
# usage: bench/run.sh [--quick]   (--quick: fewer rounds, 10 s idle; for trying it out)
set -u
cd "$(dirname "$0")/.." || exit 1
BIN=${SPGB_BIN:-./stolon-pgbouncer}
[ -n "${SPGB_BIN:-}" ] || make -s >/dev/null || exit 1
R=bench/results
mkdir -p "$R"
STATUS="$R/status.txt"
: >"$STATUS"
QUICK=${1:-}
if [ "$QUICK" = "--quick" ]; then
  CONV=60 FAN=10 RUNS=1 IDLE=10 HTTP_S=3 KILLED=1 PATRONI=1
else
  CONV=200 FAN=40 RUNS=5 IDLE=60 HTTP_S=5 KILLED=2 PATRONI=3
fi

run() { # run NAME COMMAND...: output to $R/NAME.log, one status line
  name=$1; shift
  printf '%-12s ... ' "$name"
  t0=$(date +%s)
  "$@" >"$R/$name.log" 2>&1
  code=$?
  t1=$(date +%s)
  echo "$name $code $((t1 - t0))" >>"$STATUS"
  if [ "$code" -eq 0 ]; then echo "ok ($((t1 - t0)) s)"; else echo "FAILED (exit $code, see $R/$name.log)"; fi
}

echo "stolon-pgbouncer benchmarks: logs and JSON in $R/"
rm -f "$R/convergence.json" "$R/fanout.json" "$R/failover.json" "$R/killed_failover.json" "$R/footprint.json" \
  "$R/patroni.json" "$R/all.json"
ETCD_BENCH_PORT=${ETCD_BENCH_PORT:-22574} run etcd sh bench/etcd.sh
run pgbouncer sh bench/pgbouncer.sh
SPGB_BIN=$BIN run http sh bench/http.sh "$HTTP_S" 64
run convergence "$BIN" run bench/convergence.lua "$CONV"
run fanout "$BIN" run bench/fanout.lua "$FAN"
run failover "$BIN" run bench/failover.lua "$RUNS"
run killed_failover "$BIN" run bench/killed_failover.lua "$KILLED"
run patroni "$BIN" run bench/patroni.lua "$PATRONI"
run footprint "$BIN" run bench/footprint.lua "$IDLE"
echo
"$BIN" run bench/report.lua "$STATUS" | tee "$R/table.md"
# Exit non-zero when a script failed: failover.lua exits 3 when a failover itself
# failed a transaction or lost a row (after writing its figures).
failed=$(awk '$2 != 0 { printf "%s%s (exit %s)", sep, $1, $2; sep = ", " }' "$STATUS")
if [ -n "$failed" ]; then
  echo "bench/run.sh: failed: $failed" >&2
  exit 1
fi
