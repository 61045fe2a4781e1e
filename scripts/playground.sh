#!/bin/sh
# playground.sh up|status|down: the demo's loopback cluster, kept up to be explored
# (make playground, make playground-status, make playground-down).
#
# up      starts examples/playground.lua in a session of its own (it outlives this
#         shell), waits until the cluster answers, and prints the commands to try.
# status  the holder, the processes it recorded, and `stolon-pgbouncer status`.
# down    TERMs the holder, which stops everything it started; if the holder is
#         gone (killed, machine rebooted halfway), stops the processes it recorded,
#         each only if its pid still runs the same program.
#
# State: $PLAYGROUND_STATE (default /tmp/stolon-pgbouncer-playground-<uid>): holder.pid,
# holder.log, and what the holder writes (pids, env, try, ready).
set -eu
cd "$(dirname "$0")/.."
BIN=./stolon-pgbouncer
STATE=${PLAYGROUND_STATE:-/tmp/stolon-pgbouncer-playground-$(id -u)}
export SPGB_LUA_DIR="$PWD"

holder_pid() { # the holder's pid when it is alive and is ours, else nothing
  [ -f "$STATE/holder.pid" ] || return 0
  pid=$(cat "$STATE/holder.pid")
  if [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "examples/playground.lua $STATE"; then
    echo "$pid"
  fi
}

# A process's start time (field 22 of /proc/PID/stat): with the pid, one process.
# Nothing for a zombie (it has exited; only its parent has not reaped it yet).
start_time() {
  sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | awk '$1 != "Z" { print $20 }'
}

# The recorded processes that still run: same pid and same start time.
recorded() {
  file=$STATE/pids
  [ -f "$file" ] || file=$STATE/pids.last
  [ -f "$file" ] || return 0
  while read -r pid st what; do
    [ -n "$pid" ] || continue
    if [ "$(start_time "$pid")" = "$st" ]; then echo "$pid $what"; fi
  done <"$file"
}

up() {
  pid=$(holder_pid)
  if [ -n "$pid" ] && [ -f "$STATE/ready" ]; then
    echo "playground: already up (holder pid $pid)"
    cat "$STATE/try"
    return 0
  fi
  if [ -n "$pid" ]; then
    echo "playground: a holder (pid $pid) is still starting or stopping; try again, or make playground-down" >&2
    return 1
  fi
  mkdir -p "$STATE"
  rm -f "$STATE/ready" "$STATE/try" "$STATE/env" "$STATE/pids" "$STATE/pids.last"
  echo "playground: booting etcd, 3 PostgreSQL nodes, a PgBouncer + pauser per node, a proxy PgBouncer ..."
  setsid "$BIN" run examples/playground.lua "$STATE" </dev/null >"$STATE/holder.log" 2>&1 &
  holder=$!
  echo "$holder" >"$STATE/holder.pid"
  i=0
  while [ ! -f "$STATE/ready" ]; do
    # our own child, so alive is enough (not holder_pid's cmdline test: until the
    # child has exec'd, its cmdline is still this shell's, and a loaded machine
    # showed that as "exited")
    if [ -z "$(start_time "$holder")" ]; then
      echo "playground: the holder exited before the cluster was up; its log:" >&2
      tail -30 "$STATE/holder.log" >&2
      return 1
    fi
    i=$((i + 1))
    if [ "$i" -gt 240 ]; then
      echo "playground: not up after 120 s; stopping it (log: $STATE/holder.log)" >&2
      down
      return 1
    fi
    sleep 0.5
  done
  cat "$STATE/try"
}

status() {
  pid=$(holder_pid)
  if [ -z "$pid" ]; then
    left=$(recorded)
    if [ -n "$left" ]; then
      echo "playground: the holder is gone but these processes it started still run (make playground-down):"
      echo "$left" | sed 's/^/  /'
      return 1
    fi
    echo "playground: down"
    return 3
  fi
  if [ ! -f "$STATE/ready" ]; then
    echo "playground: starting (holder pid $pid)"
    return 0
  fi
  echo "playground: up (holder pid $pid, since $(cat "$STATE/ready"))"
  recorded | sed 's/^/  /'
  echo
  # shellcheck disable=SC1091
  . "$STATE/env"
  export STOLONCTL_CLUSTER_NAME STOLONCTL_STORE_ENDPOINTS STBOUNCER_FAILOVER_TOKEN_FILE
  "$BIN" status --pauser-port "$PLAYGROUND_PAUSER_PORT" --extra-pauser "$PLAYGROUND_EXTRA_PAUSER" \
    --metrics-port 0 || true
}

down() {
  pid=$(holder_pid)
  [ -f "$STATE/pids" ] && cp "$STATE/pids" "$STATE/pids.last"
  if [ -n "$pid" ]; then
    echo "playground: stopping (holder pid $pid) ..."
    kill -TERM "$pid" 2>/dev/null || true
    i=0
    while [ -n "$(holder_pid)" ] && [ "$i" -lt 120 ]; do
      sleep 0.5
      i=$((i + 1))
    done
    if [ -n "$(holder_pid)" ]; then
      echo "playground: the holder did not stop in 60 s; killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  left=$(recorded)
  if [ -n "$left" ]; then
    echo "playground: stopping what the holder left running:"
    echo "$left" | sed 's/^/  /'
    echo "$left" | while read -r p _; do kill -TERM "$p" 2>/dev/null || true; done
    i=0
    while [ -n "$(recorded)" ] && [ "$i" -lt 20 ]; do
      sleep 0.5
      i=$((i + 1))
    done
    recorded | while read -r p _; do kill -KILL "$p" 2>/dev/null || true; done
    # its folder: from the env file the holder wrote
    if [ -f "$STATE/env" ]; then
      base=$(sed -n "s/^PLAYGROUND_BASE='\(.*\)'$/\1/p" "$STATE/env")
      case "$base" in /tmp/spgb-playground.*) rm -rf "$base" ;; esac
    fi
  fi
  rm -f "$STATE/ready" "$STATE/try" "$STATE/env" "$STATE/pids" "$STATE/pids.last" "$STATE/holder.pid"
  echo "playground: down"
}

case "${1:-}" in
  up) up ;;
  status) status ;;
  down) down ;;
  *)
    echo "usage: $0 up|status|down" >&2
    exit 2
    ;;
esac
