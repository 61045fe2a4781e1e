/*
 * fuzz/etcd.c: libFuzzer target for decoding what the etcd JSON gateway sends
 * (src/etcd.c), inside a host Lua state.
 *
 * Each input is used three ways:
 *  1. As a watch stream: fed to spgb_etcd_frame in chunks (sizes from the
 *     first byte), as libcurl would deliver it. Checked: every message starts
 *     with '{' and ends with '}' or ']', lies inside the buffer, and chunked
 *     framing finds the same messages as framing the whole input at once. Each
 *     message then goes through what Watcher:next does with it: cjson.decode,
 *     then Watcher:handle under pcall, where only a {bad=...} error (a "bad
 *     message", dropped) may be raised.
 *  2. As the body of a gateway reply (status from the input's length: mostly
 *     200, else 404, 500 or 503) to get, put, delete, txn and compact, through the real
 *     Client:call with core.post replaced by a function returning it. Checked:
 *     each returns a table or nil, err, code and never raises.
 *  3. As base64: core.b64dec never writes out of bounds, and decoding what
 *     b64enc produced gives the bytes back; prefix_end of the input.
 * Uses: host, etcd module (its C core, etcd.core), lua-cjson.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "etcd.h"
#include "luaharness.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int check_ref = LUA_NOREF;

/* Frame buf (len bytes) delivering it `step` bytes at a time, as the stream does:
 * push each message onto the Lua table at the top of L. Returns the number of
 * messages, or -1 on garbage. */
static int frame_all(lua_State *L, const char *buf, size_t len, size_t step)
{
    spgb_etcd_framer f;
    memset(&f, 0, sizeof f);
    size_t off = 0;   /* consumed (messages dropped from the front) */
    size_t avail = 0; /* delivered so far */
    int n = 0;
    while (avail < len || off < avail) {
        size_t s, e;
        int rc = spgb_etcd_frame(&f, buf + off, avail - off, &s, &e);
        if (rc < 0)
            return -1;
        if (rc == 0) {
            if (avail == len)
                break; /* an incomplete message at the end */
            avail = avail + step < len ? avail + step : len;
            continue;
        }
        if (!(s < e && e <= avail - off) || buf[off + s] != '{' ||
            (buf[off + e - 1] != '}' && buf[off + e - 1] != ']')) {
            fprintf(stderr, "fuzz_etcd: framer returned [%zu, %zu) of %zu\n", s, e,
                    avail - off);
            abort();
        }
        if (L) {
            lua_pushlstring(L, buf + off + s, e - s);
            lua_rawseti(L, -2, ++n);
        } else {
            n++;
        }
        off += e;
        memset(&f, 0, sizeof f);
    }
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (check_ref == LUA_NOREF)
        check_ref = fz_load("fuzz/etcd.lua");
    lua_State *L = fz_L;
    const char *buf = (const char *)data;
    size_t step = size ? (size_t)(data[0] % 17) + 1 : 1;
    lua_newtable(L);
    int n = frame_all(L, buf, size, step);
    int whole = frame_all(NULL, buf, size, size ? size : 1);
    /* Garbage ends framing where it starts, whatever the chunking: the message
     * counts before it agree. */
    if ((n < 0) != (whole < 0) || (n >= 0 && n != whole)) {
        fprintf(stderr, "fuzz_etcd: chunked framing (step %zu) found %d messages, whole %d\n",
                step, n, whole);
        abort();
    }
    fz_call(check_ref, buf, size, 1);
    return 0;
}
