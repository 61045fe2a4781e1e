/*
 * etcd: transport and byte helpers in C; the API is lua/etcd.lua (see etcd.h for
 * the layering and docs/etcd.md for the Lua API).
 *
 * The module `etcd.core` holds:
 *   core.post(conf, url, body, timeout) -> status, body | nil, err, code, unsent
 *   core.stream(conf, url, body) -> stream; stream:next(timeout) -> message |
 *     nil, err, code; stream:close()
 *   core.b64enc(s), core.b64dec(s) -> s | nil, core.prefix_end(key)
 * conf is the client's table {ca_file=, cert_file=, key_file=, skip_tls_verify=,
 * dial_timeout=}.
 */
#include "etcd.h"

#include <lauxlib.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "curlm.h"
#include "sched.h"

#define STREAM_MT "spgb.etcd.stream"
#define MAX_DEPTH 512

/* ---- pure helpers ------------------------------------------------------------ */

static const char b64chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

size_t spgb_etcd_b64_encode(const unsigned char *in, size_t n, char *out)
{
    size_t o = 0, i = 0;
    for (; i + 2 < n; i += 3) {
        unsigned v = (unsigned)in[i] << 16 | (unsigned)in[i + 1] << 8 | in[i + 2];
        out[o++] = b64chars[v >> 18 & 63];
        out[o++] = b64chars[v >> 12 & 63];
        out[o++] = b64chars[v >> 6 & 63];
        out[o++] = b64chars[v & 63];
    }
    if (i < n) {
        unsigned v = (unsigned)in[i] << 16 | (i + 1 < n ? (unsigned)in[i + 1] << 8 : 0);
        out[o++] = b64chars[v >> 18 & 63];
        out[o++] = b64chars[v >> 12 & 63];
        out[o++] = i + 1 < n ? b64chars[v >> 6 & 63] : '=';
        out[o++] = '=';
    }
    return o;
}

static int b64val(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+' || c == '-')
        return 62;
    if (c == '/' || c == '_')
        return 63;
    return -1;
}

long spgb_etcd_b64_decode(const char *in, size_t len, unsigned char *out)
{
    while (len > 0 && in[len - 1] == '=')
        len--;
    if (len % 4 == 1)
        return -1;
    size_t o = 0;
    unsigned acc = 0;
    int bits = 0;
    for (size_t i = 0; i < len; i++) {
        int v = b64val((unsigned char)in[i]);
        if (v < 0)
            return -1;
        acc = (acc << 6 | (unsigned)v) & 0xffffff;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(acc >> bits & 0xff);
        }
    }
    return (long)o;
}

size_t spgb_etcd_prefix_end(const char *prefix, size_t len, char *out)
{
    for (size_t i = len; i > 0; i--) {
        if ((unsigned char)prefix[i - 1] < 0xff) {
            memcpy(out, prefix, i);
            out[i - 1] = (char)((unsigned char)prefix[i - 1] + 1);
            return i;
        }
    }
    out[0] = 0;
    return 1;
}

int spgb_etcd_frame(spgb_etcd_framer *f, const char *buf, size_t len, size_t *start, size_t *end)
{
    while (f->pos < len) {
        char c = buf[f->pos];
        if (f->depth == 0) {
            if (c == ' ' || c == '\n' || c == '\r' || c == '\t') {
                f->pos++;
                continue;
            }
            if (c != '{')
                return -1;
            f->start = f->pos++;
            f->depth = 1;
            continue;
        }
        f->pos++;
        if (f->in_str) {
            if (f->esc)
                f->esc = false;
            else if (c == '\\')
                f->esc = true;
            else if (c == '"')
                f->in_str = false;
        } else if (c == '"') {
            f->in_str = true;
        } else if (c == '{' || c == '[') {
            if (++f->depth > MAX_DEPTH)
                return -1;
        } else if (c == '}' || c == ']') {
            if (--f->depth == 0) {
                *start = f->start;
                *end = f->pos;
                return 1;
            }
        }
    }
    return 0;
}

/* ---- Lua byte helpers ---------------------------------------------------------- */

/* core.b64enc(s) -> base64 string. */
static int l_b64enc(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    luaL_Buffer b;
    char *out = luaL_buffinitsize(L, &b, (n + 2) / 3 * 4 + 1);
    luaL_pushresultsize(&b, spgb_etcd_b64_encode((const unsigned char *)s, n, out));
    return 1;
}

/* core.b64dec(s) -> bytes | nil when s is not base64. */
static int l_b64dec(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    luaL_Buffer b;
    unsigned char *out = (unsigned char *)luaL_buffinitsize(L, &b, n / 4 * 3 + 3);
    long m = spgb_etcd_b64_decode(s, n, out);
    if (m < 0) {
        luaL_pushresultsize(&b, 0);
        lua_pushnil(L);
        return 1;
    }
    luaL_pushresultsize(&b, (size_t)m);
    return 1;
}

/* core.prefix_end(key) -> the range end covering every key with that prefix. */
static int l_prefix_end(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    luaL_Buffer b;
    char *out = luaL_buffinitsize(L, &b, n + 1);
    luaL_pushresultsize(&b, spgb_etcd_prefix_end(s, n, out));
    return 1;
}

/* ---- transport ----------------------------------------------------------------- */

static long ms(double s)
{
    if (!(s > 0))
        return 0;
    if (s > 1e6)
        s = 1e6;
    return (long)ceil(s * 1000.0);
}

static const char *conf_str(lua_State *L, int conf, const char *k)
{
    lua_getfield(L, conf, k);
    const char *s = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
    lua_pop(L, 1); /* anchored by conf */
    return s;
}

/* A POST of a JSON body to url with the client's TLS options and dial timeout.
 * Returns a started-ready transfer or raises (out of memory). */
static spgb_xfer *new_post(lua_State *L, int conf, const char *url, const char *body, size_t blen)
{
    luaL_checktype(L, conf, LUA_TTABLE);
    spgb_xfer *x = spgb_xfer_new(url);
    if (!x)
        luaL_error(L, "etcd: out of memory (or bad endpoint URL %s)", url);
    if (!spgb_xfer_header(x, "Content-Type: application/json") || !spgb_xfer_body(x, body, blen)) {
        spgb_xfer_free(x);
        luaL_error(L, "etcd: out of memory");
    }
    lua_getfield(L, conf, "skip_tls_verify");
    bool skip = lua_toboolean(L, -1);
    lua_getfield(L, conf, "dial_timeout");
    double dial = lua_isnumber(L, -1) ? lua_tonumber(L, -1) : 2.0;
    lua_pop(L, 2);
    spgb_xfer_tls(x, conf_str(L, conf, "ca_file"), conf_str(L, conf, "cert_file"),
                  conf_str(L, conf, "key_file"), skip);
    curl_easy_setopt(x->easy, CURLOPT_CONNECTTIMEOUT_MS, ms(dial));
    return x;
}

static int post_push(lua_State *L, spgb_xfer *x, void *ud)
{
    (void)ud;
    if (x->result != CURLE_OK || x->oom) {
        int n = spgb_xfer_push_error(L, x, "etcd");
        lua_pushboolean(L, spgb_xfer_unsent(x));
        return n + 1;
    }
    lua_pushinteger(L, x->status);
    lua_pushlstring(L, x->body.p ? x->body.p : "", x->body.len);
    return 2;
}

/* core.post(conf, url, body, timeout) -> status, body | nil, err, code, unsent.
 * Task only; yields. timeout bounds the whole attempt (curl's own timer, so a
 * timeout is reported as a transport failure with code "timeout"). */
static int l_post(lua_State *L)
{
    size_t blen;
    const char *url = luaL_checkstring(L, 2);
    const char *body = luaL_checklstring(L, 3, &blen);
    double timeout = luaL_checknumber(L, 4);
    spgb_task_current(L, "etcd");
    spgb_xfer *x = new_post(L, 1, url, body, blen);
    curl_easy_setopt(x->easy, CURLOPT_TIMEOUT_MS, ms(timeout));
    return spgb_curlm_call(L, x, "etcd", timeout + 1.0, post_push, NULL);
}

/* A watch stream: one long POST whose response is a sequence of JSON objects. The
 * struct lives in the userdata (a waiting task keeps it on its stack). */
typedef struct stream {
    spgb_xfer *x; /* NULL once closed */
    spgb_op op;
    bool waiting;
    int ready; /* 1: message at [ms, me); -1: garbage */
    size_t ms, me;
    spgb_etcd_framer fr;
} stream;

static void stream_scan(stream *s)
{
    if (s->ready == 0 && s->x)
        s->ready = spgb_etcd_frame(&s->fr, s->x->body.p, s->x->body.len, &s->ms, &s->me);
}

/* Inside libcurl's write callback: frame, and wake the reader. Nothing else. */
static void stream_on_data(spgb_xfer *x)
{
    stream *s = x->data;
    stream_scan(s);
    if (s->ready != 0 && s->waiting) {
        s->waiting = false;
        spgb_op_done(&s->op);
    }
}

static void stream_on_done(spgb_xfer *x)
{
    stream *s = x->data;
    if (s->waiting) {
        s->waiting = false;
        spgb_op_done(&s->op);
    }
}

/* Push what the stream has for a reader (1 or 3 values), or 0 when nothing yet. */
static int stream_result(lua_State *L, stream *s)
{
    if (!s->x) {
        lua_pushnil(L);
        lua_pushliteral(L, "etcd.watch: stream closed");
        lua_pushliteral(L, "closed");
        return 3;
    }
    stream_scan(s);
    spgb_xfer *x = s->x;
    if (s->ready == 1) {
        lua_pushlstring(L, x->body.p + s->ms, s->me - s->ms);
        spgb_buf_consume(&x->body, s->me);
        memset(&s->fr, 0, sizeof s->fr);
        s->ready = 0;
        return 1;
    }
    if (s->ready < 0) {
        spgb_curlm_stop(x);
        lua_pushnil(L);
        lua_pushliteral(L, "etcd.watch: garbage in the watch stream");
        lua_pushliteral(L, "bad_response");
        return 3;
    }
    if (!x->finished)
        return 0;
    if (x->result != CURLE_OK || x->oom)
        return spgb_xfer_push_error(L, x, "etcd.watch");
    lua_pushnil(L);
    if (s->fr.depth > 0)
        lua_pushliteral(L, "etcd.watch: stream ended inside a message");
    else if (x->status != 200)
        lua_pushfstring(L, "etcd.watch: HTTP %d", (int)x->status);
    else
        lua_pushliteral(L, "etcd.watch: stream ended");
    if (s->fr.depth > 0)
        lua_pushliteral(L, "io");
    else
        lua_pushliteral(L, "eof");
    return 3;
}

static int stream_push(lua_State *L, spgb_op *op)
{
    stream *s = (stream *)((char *)op - offsetof(stream, op));
    int n = stream_result(L, s);
    if (n == 0) {
        lua_pushnil(L);
        lua_pushliteral(L, "etcd.watch: woken without data");
        lua_pushliteral(L, "io");
        n = 3;
    }
    return n;
}

static void stream_cancel(spgb_op *op)
{
    stream *s = (stream *)((char *)op - offsetof(stream, op));
    s->waiting = false; /* the stream goes on; the Lua side closes it on cancel */
}

static stream *check_stream(lua_State *L)
{
    return luaL_checkudata(L, 1, STREAM_MT);
}

/* core.stream(conf, url, body) -> stream. Any context; does not yield: the
 * transfer starts on the loop at once. No total timeout: a dead peer is noticed by
 * the connection closing or TCP keep-alive. Raises only when out of memory; a
 * transfer that cannot start reports its error from stream:next. */
static int l_stream(lua_State *L)
{
    size_t blen;
    const char *url = luaL_checkstring(L, 2);
    const char *body = luaL_checklstring(L, 3, &blen);
    stream *s = lua_newuserdatauv(L, sizeof *s, 0);
    memset(s, 0, sizeof *s);
    luaL_setmetatable(L, STREAM_MT);
    spgb_xfer *x = new_post(L, 1, url, body, blen);
    x->data = s;
    x->on_data = stream_on_data;
    x->on_done = stream_on_done;
    s->x = x;
    if (spgb_curlm_start(x) != 0) {
        x->finished = true;
        x->result = CURLE_FAILED_INIT;
        snprintf(x->err, sizeof x->err, "cannot start the watch transfer");
    }
    return 1;
}

/* stream:next(timeout) -> message | nil, err, code. Task only; yields until a
 * whole JSON object has arrived, the stream ends ("eof", "io", a transport code),
 * garbage arrives ("bad_response") or the timeout passes (timeout <= 0: none). */
static int l_stream_next(lua_State *L)
{
    stream *s = check_stream(L);
    double timeout = luaL_optnumber(L, 2, 0);
    spgb_task_current(L, "etcd.watch");
    int n = stream_result(L, s);
    if (n > 0)
        return n;
    if (s->waiting)
        return luaL_error(L, "etcd.watch: another task is already reading this watcher");
    memset(&s->op, 0, sizeof s->op);
    s->op.name = "etcd.watch";
    s->op.push = stream_push;
    s->op.cancel = stream_cancel;
    s->waiting = true;
    return spgb_op_wait(L, &s->op, timeout);
}

/* stream:close(): stop the transfer and free it. Idempotent; never yields. */
static int l_stream_close(lua_State *L)
{
    stream *s = check_stream(L);
    if (s->x) {
        spgb_xfer_free(s->x);
        s->x = NULL;
    }
    if (s->waiting) { /* a reader in another task: wake it with "closed" */
        s->waiting = false;
        spgb_op_done(&s->op);
    }
    return 0;
}

static int l_stream_gc(lua_State *L)
{
    stream *s = check_stream(L);
    if (s->x) {
        spgb_xfer_free(s->x);
        s->x = NULL;
    }
    return 0;
}

/* etcd module: connect (and the Client/Watcher/Lease/Lock classes) from the Lua
 * chunk above; needs lua-cjson (`cjson.safe`). */
/* The C core of the etcd module (transport, base64, prefix ends); lua/etcd.lua is
 * the client built on it. */
int luaopen_etcd_core(lua_State *L)
{
    spgb_curlm_open(L);
    if (luaL_newmetatable(L, STREAM_MT)) {
        static const luaL_Reg methods[] = {
            {"next", l_stream_next}, {"close", l_stream_close}, {NULL, NULL}};
        luaL_newlib(L, methods);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, l_stream_gc);
        lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, l_stream_close);
        lua_setfield(L, -2, "__close");
    }
    lua_pop(L, 1);
    static const luaL_Reg core[] = {
        {"post", l_post},     {"stream", l_stream},         {"b64enc", l_b64enc},
        {"b64dec", l_b64dec}, {"prefix_end", l_prefix_end}, {NULL, NULL},
    };
    luaL_newlib(L, core);
    return 1;
}
