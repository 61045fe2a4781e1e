#!/bin/sh
# HTTP server benchmark: wrk -t2 -c64 -d10s --latency against http.serve with a
# handler returning a small JSON body, versus a baseline measured in the same run:
# a minimal C program answering the same body with libmicrohttpd alone (its own
# polling thread, no Lua, no libuv). Prints requests/s, p99 and the ratio, and
# writes bench/results/http.json.
# usage: [SPGB_BIN=path] bench/http.sh [duration_s=10] [connections=64]
set -eu
cd "$(dirname "$0")/.."
DUR=${1:-10}
CONNS=${2:-64}
# SPGB_BIN: a binary built elsewhere (e.g. make BUILD=b BIN=b/spgb); default: make's.
BIN=${SPGB_BIN:-./stolon-pgbouncer}
[ -n "${SPGB_BIN:-}" ] || make -s >/dev/null
TMP=$(mktemp -d)
BASE_PID=
cleanup() { [ -n "$BASE_PID" ] && kill "$BASE_PID" 2>/dev/null; rm -rf "$TMP"; }
trap cleanup EXIT

cat >"$TMP/base.c" <<'C'
#include <microhttpd.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
static const char body[] = "{\"ok\":true,\"node\":\"bench\",\"paused\":false}";
static enum MHD_Result h(void *c, struct MHD_Connection *conn, const char *u, const char *m,
                         const char *v, const char *d, size_t *s, void **p)
{
    static int marker;
    (void)c; (void)u; (void)m; (void)v; (void)d; (void)s;
    if (*p == NULL) { *p = &marker; return MHD_YES; } /* head first, as MHD expects */
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(body), (void *)body,
                                                             MHD_RESPMEM_PERSISTENT);
    MHD_add_response_header(r, "Content-Type", "application/json");
    enum MHD_Result rc = MHD_queue_response(conn, 200, r);
    MHD_destroy_response(r);
    return rc;
}
int main(void)
{
    struct MHD_Daemon *d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL,
        0, NULL, NULL, h, NULL, MHD_OPTION_CONNECTION_LIMIT, 4096u, MHD_OPTION_END);
    if (!d) return 1;
    printf("%u\n", (unsigned)MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT)->port);
    fflush(stdout);
    pause();
    return 0;
}
C
cc -O2 -o "$TMP/base" "$TMP/base.c" $(pkg-config --cflags --libs libmicrohttpd)
"$TMP/base" >"$TMP/port" &
BASE_PID=$!
for _ in 1 2 3 4 5 6 7 8 9 10; do [ -s "$TMP/port" ] && break; sleep 0.2; done
PORT=$(cat "$TMP/port")

wrk -t2 -c"$CONNS" -d"${DUR}s" --latency "http://127.0.0.1:$PORT/" >"$TMP/base.txt"
kill "$BASE_PID"; BASE_PID=

# wrk's latency like 1.23ms / 456.78us / 1.02s -> milliseconds
p99_ms() { awk '$1 == "99%" { v = $2; u = v; sub(/[0-9.]+/, "", u); sub(/[a-z]+$/, "", v);
  if (u == "us") v /= 1000; else if (u == "s") v *= 1000; printf "%.3f", v }' "$1"; }
BASE_RPS=$(awk '/Requests\/sec/ { print $2 }' "$TMP/base.txt")
BASE_P99=$(p99_ms "$TMP/base.txt")

LINE=$(SPGB_LUA_DIR="$PWD" "$BIN" run bench/http_server.lua "$DUR" "$CONNS" 2>"$TMP/ours.txt")
RPS=$(echo "$LINE" | sed -n 's/.*rps=\([0-9.]*\).*/\1/p')
P99=$(echo "$LINE" | sed -n 's/.*p99_ms=\([0-9.]*\).*/\1/p')
RATIO=$(awk -v a="$RPS" -v b="$BASE_RPS" 'BEGIN { printf "%.3f", a / b }')

echo "http.serve (Lua handler, JSON body): ${RPS} req/s, p99 ${P99} ms"
echo "baseline (C, libmicrohttpd alone):    ${BASE_RPS} req/s, p99 ${BASE_P99} ms"
echo "ratio (ours / baseline req/s):        ${RATIO}"
mkdir -p bench/results
cat >bench/results/http.json <<JSON
{
  "command": "wrk -t2 -c${CONNS} -d${DUR}s --latency",
  "ours": {"requests_per_s": ${RPS}, "p99_ms": ${P99}},
  "baseline_c_libmicrohttpd": {"requests_per_s": ${BASE_RPS}, "p99_ms": ${BASE_P99}},
  "ratio_rps": ${RATIO}
}
JSON
