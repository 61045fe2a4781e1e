/*
 * hc: a small HTTP/1.1 client of our own on the libuv loop, for plain http:// to a
 * numeric address (pausers, Patroni's REST API, etcd's gateway on loopback). It
 * keeps one idle connection per request in flight to each address and reuses it,
 * writes a request in one send and parses the response in place: a pause fan-out to
 * N pausers costs N small writes and reads, not N libcurl transfers (issue 15).
 *
 * Provides: spgb_hc_parse_url (is this URL for us?) and spgb_hc_request (the yielding
 * request, under the scheduler's pending-operation protocol). httpc.request uses it
 * for what it can take and libcurl (curlm) for the rest: https, host names, user
 * info in the URL. Uses: libuv (uv_tcp, uv_timer), sched, curlm's spgb_buf.
 *
 * Lifetime: idle connections live in one pool per process (by address), are closed by the
 * server's EOF (noticed while idle), when unused for 30 s (at their next use), and
 * at spgb_sched_close_loop. A connection carrying a request belongs to that request;
 * the request's op (in a userdata on the task's stack) points at it and closes it
 * when cancelled.
 */
#ifndef SPGB_HC_H
#define SPGB_HC_H

#include <lua.h>
#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

typedef struct spgb_hc_url {
    struct sockaddr_storage addr;
    char key[64];     /* "ip:port", the pool's key */
    char host[72];    /* the Host header's value */
    const char *path; /* into the URL: path and query ("" means "/") */
    size_t path_len;
} spgb_hc_url;

/* True when url is http://<IPv4 or [IPv6]>[:port][/path] with nothing hc does not
 * take (user info, control characters or spaces); fills u. */
bool spgb_hc_parse_url(const char *url, spgb_hc_url *u);

/* One request on u, from a task (httpc.request checked). body: NULL for none. headers: "Name:
 * value\r\n" lines (may be empty). timeout bounds the whole request (<= 0: none), ctimeout the
 * connection set-up (<= 0 or >= timeout: only the whole), max_body the response body (0: no limit).
 * Returns what httpc.request returns: {status=, headers=, body=} | nil, err, code. */
int spgb_hc_request(lua_State *L, const spgb_hc_url *u, const char *method, const char *headers,
                    size_t hlen, const char *body, size_t blen, double timeout, double ctimeout,
                    size_t max_body);

/* Idle connections now (for specs and benches). */
int spgb_hc_idle_count(void);

#endif
