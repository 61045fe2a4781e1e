/*
 * curlm: one libcurl multi handle driven by the libuv loop, shared by every unit
 * that speaks HTTP (httpc, etcd, later http's client side).
 *
 * Provides: spgb_xfer, a buffered HTTP transfer (request body copied, response
 * status, raw header lines and body collected in memory), started and stopped on
 * the shared multi; and a yielding helper (spgb_curlm_call) that runs one transfer
 * under the scheduler's pending-operation protocol. Connections are kept alive in
 * the multi's connection cache and reused by later transfers to the same host.
 * Uses: libcurl (multi socket interface), libuv (one uv_poll per socket, one
 * uv_timer), sched (spgb_op, spgb_loop).
 *
 * Re-entry rules: libcurl callbacks (socket, timer, write, header) only record
 * data and call the transfer's hooks, which may only record and call
 * spgb_op_done. Finished transfers are collected with curl_multi_info_read after
 * curl_multi_socket_action has returned, removed from the multi there, and their
 * on_done hook is called (still never Lua). spgb_curlm_stop may be called from any
 * context except a libcurl callback (op->push/op->cancel, __gc, Lua functions).
 *
 * Lifetime: spgb_curlm_open(L) creates the multi once per Lua state and anchors a
 * userdata in the registry whose __gc (at lua_close) detaches every running
 * transfer, cleans the multi up and closes the libuv handles. Transfers are owned
 * by their creator, who frees them with spgb_xfer_free (also after shutdown).
 */
#ifndef SPGB_CURLM_H
#define SPGB_CURLM_H

#include <curl/curl.h>
#include <lua.h>
#include <stdbool.h>
#include <stddef.h>

#include "sched.h"

typedef struct spgb_buf {
    char *p;
    size_t len, cap;
} spgb_buf;

/* Append n bytes (keeps a NUL after the data); false on allocation failure. */
bool spgb_buf_append(spgb_buf *b, const void *data, size_t n);
/* Drop the first n bytes. */
void spgb_buf_consume(spgb_buf *b, size_t n);
void spgb_buf_free(spgb_buf *b);

typedef struct spgb_xfer spgb_xfer;

struct spgb_xfer {
    CURL *easy;                 /* configure freely before spgb_curlm_start */
    struct curl_slist *headers; /* freed with the transfer */
    spgb_buf body;              /* response body (appended as it arrives) */
    spgb_buf head;              /* raw response header lines of the last response */
    size_t max_body;            /* 0: 64 MiB; larger bodies fail the transfer */
    bool oom;                   /* an append failed or max_body passed */
    bool finished;              /* set before on_done */
    CURLcode result;
    long status; /* HTTP status, 0 if none */
    char err[CURL_ERROR_SIZE];
    /* Hooks (optional). on_data runs INSIDE the write callback after an append:
     * record and spgb_op_done only. on_done runs after the transfer left the
     * multi, outside libcurl callbacks, but still must not touch Lua. */
    void (*on_data)(spgb_xfer *x);
    void (*on_done)(spgb_xfer *x);
    void *data;
    /* Private. */
    bool active;
    spgb_xfer *next, *prev;
};

/* Create the shared multi for L's state (idempotent). Raises on failure. */
void spgb_curlm_open(lua_State *L);

/* A new transfer for url with an easy handle set up for buffering (write and
 * header functions, error buffer, no signals, TCP keep-alive). NULL when out of
 * memory. Caller owns it: spgb_xfer_free. */
spgb_xfer *spgb_xfer_new(const char *url);
/* Add a request header "Name: value" (false when out of memory). */
bool spgb_xfer_header(spgb_xfer *x, const char *line);
/* Set a request body (copied) and method POST unless method is given. */
bool spgb_xfer_body(spgb_xfer *x, const char *data, size_t len);
/* TLS options; NULL strings are left unset. */
void spgb_xfer_tls(spgb_xfer *x, const char *ca_file, const char *cert_file, const char *key_file,
                   bool skip_verify);
/* Stop (if running) and free everything the transfer owns. Not from libcurl callbacks. */
void spgb_xfer_free(spgb_xfer *x);

/* Start x on the shared multi. 0, or a CURLMcode (also when the multi is gone). */
int spgb_curlm_start(spgb_xfer *x);
/* Remove x from the multi if it runs. Idempotent; never calls on_done. */
void spgb_curlm_stop(spgb_xfer *x);

/* Short machine-readable code for a failed transfer: "timeout", "connect",
 * "resolve", "tls", "io", "too_large", "curl". */
const char *spgb_xfer_code(const spgb_xfer *x);
/* True when the request was never (even partly) sent: retrying elsewhere is safe. */
bool spgb_xfer_unsent(const spgb_xfer *x);

/* Yielding helper: run x to completion in the calling task (raises "<name> needs
 * a task" outside one). push(L, x, ud) pushes the primitive's results after
 * success or transport failure; x is freed after push or on cancel/timeout. The
 * op lives in a userdata left on the task's stack below the results
 * (timeout <= 0: none; the scheduler then returns nil, "<name>: timeout",
 * "timeout"). Must be the C function's return expression. */
typedef int (*spgb_xfer_push)(lua_State *L, spgb_xfer *x, void *ud);
int spgb_curlm_call(lua_State *L, spgb_xfer *x, const char *name, double timeout,
                    spgb_xfer_push push, void *ud);

/* Push nil, message, code for a failed transfer x (message prefixed by what). */
int spgb_xfer_push_error(lua_State *L, const spgb_xfer *x, const char *what);

#endif
