#!/bin/sh
# PAUSE+RESUME round trip: the Lua API versus plain blocking libpq, same run.
# usage: bench/pgbouncer.sh [N]    (default 500; BIN=path to the stolon-pgbouncer binary)
# Prints a table and writes bench/results/pgbouncer.json.
set -eu
cd "$(dirname "$0")/.."
N=${1:-500}
BIN=${BIN:-./stolon-pgbouncer}
OUT=${BUILD:-build}/bench
mkdir -p "$OUT" bench/results
cc -std=c11 -O2 -Wall -Wextra -Werror $(pkg-config --cflags libpq) \
  -o "$OUT/pause_baseline" bench/pause_baseline.c $(pkg-config --libs libpq)
[ -x "$BIN" ] || make
exec "$BIN" run bench/pgbouncer_pause.lua "$OUT/pause_baseline" "$N" bench/results/pgbouncer.json
