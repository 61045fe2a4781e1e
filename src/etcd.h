/*
 * etcd: the etcd v3 client (module `etcd`), talking to etcd's JSON gateway
 * (/v3/kv/..., /v3/watch, /v3/lease/...) over the shared libcurl multi.
 *
 * Provides: luaopen_etcd_core (`etcd.core`: post, stream, b64enc, b64dec,
 * prefix_end, under lua/etcd.lua's etcd.connect and client methods get/put/delete/
 * txn/compact/watch/lease/lock), and the pure helpers below (base64, key-range end, framing of
 * the watch stream's JSON messages), public so the C tests can reach them.
 * Uses: curlm (transfers), sched (tasks, ops), lua-cjson (`cjson.safe`, decoding
 * responses from Lua), task and log modules (lease keep-alive task).
 *
 * Layering: C does transport (POST with failover-friendly error codes, the
 * streaming watch connection and its message framing) and byte work (base64);
 * the API above it is lua/etcd.lua, so protocol logic (JSON
 * shapes, failover, resume-after-reconnect, the lock algorithm) reads as
 * straight-line code.
 */
#ifndef SPGB_ETCD_H
#define SPGB_ETCD_H

#include <lua.h>
#include <stdbool.h>
#include <stddef.h>

/* The module's C core, preloaded as "etcd.core"; its Lua half is lua/etcd.lua. */
int luaopen_etcd_core(lua_State *L);

/* Base64 (standard alphabet, padded). encode writes 4*ceil(n/3) bytes to out and
 * returns that length. decode accepts padded or unpadded input, writes at most
 * 3*len/4 bytes, returns the decoded length or -1 on invalid input. */
size_t spgb_etcd_b64_encode(const unsigned char *in, size_t n, char *out);
long spgb_etcd_b64_decode(const char *in, size_t len, unsigned char *out);

/* The end of the key range covering every key that starts with prefix: the prefix
 * with its last byte below 0xff incremented and what follows dropped; "\0" (one
 * zero byte, meaning "all keys") when there is no such byte. Writes to out (at
 * least max(len,1) bytes), returns the length. */
size_t spgb_etcd_prefix_end(const char *prefix, size_t len, char *out);

/* Incremental framing of a stream of concatenated JSON objects (the watch stream:
 * "{...}\n{...}\n", split anywhere by the network). Zero-initialise; call with the
 * whole buffered data each time more arrives. Returns 1 and sets [*start, *end)
 * when a complete top-level object is buffered, 0 when more data is needed, -1
 * when the data cannot be a JSON object stream (garbage). After consuming a
 * message (dropping the first *end bytes), zero the framer again. */
typedef struct spgb_etcd_framer {
    size_t pos, start;
    int depth;
    bool in_str, esc;
} spgb_etcd_framer;

int spgb_etcd_frame(spgb_etcd_framer *f, const char *buf, size_t len, size_t *start, size_t *end);

#endif
