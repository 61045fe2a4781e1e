/*
 * etcd: transport and byte helpers in C, the API as an embedded Lua chunk
 * (see etcd.h for the layering and docs/etcd.md for the Lua API).
 *
 * The private table etcd._core holds:
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

/* The API (docs/etcd.md); called with the core table, returns the module. */
static const char etcd_lua[] =
    "-- etcd: the Lua half of the etcd module (embedded in src/etcd.c).\n"
    "-- core: transport and byte helpers from C (post, stream, b64enc, b64dec, prefix_end).\n"
    "local core = ...\n"
    "local cjson = require \"cjson.safe\"\n"
    "local task = require \"task\"\n"
    "local log = require \"log\"\n"
    "\n"
    "local M = {}\n"
    "local b64enc, b64dec, prefix_end = core.b64enc, core.b64dec, core.prefix_end\n"
    "local decode, encode = cjson.decode, cjson.encode\n"
    "local now, sleep = task.now, task.sleep\n"
    "local tointeger, type, tostring, pcall, error = math.tointeger, type, tostring, pcall, error\n"
    "local setmetatable, ipairs, pack = setmetatable, ipairs, table.pack\n"
    "\n"
    "local Client, Watcher, Lease, Lock = {}, {}, {}, {}\n"
    "Client.__index, Watcher.__index, Lease.__index, Lock.__index = Client, Watcher, Lease, Lock\n"
    "\n"
    "-- ---- decoding (any shape error raises \"bad response\"; callers pcall) --------\n"
    "\n"
    "local function bad(what) error({ bad = what }, 0) end\n"
    "\n"
    "local function int(v)\n"
    "  if v == nil then return 0 end\n"
    "  local n = tointeger(tonumber(v))\n"
    "  if not n then bad(\"not an integer\") end\n"
    "  return n\n"
    "end\n"
    "\n"
    "local function str(v)\n"
    "  if v == nil then return \"\" end\n"
    "  if type(v) ~= \"string\" then bad(\"not a string\") end\n"
    "  local s = b64dec(v)\n"
    "  if not s then bad(\"bad base64\") end\n"
    "  return s\n"
    "end\n"
    "\n"
    "local function tbl(v)\n"
    "  if v == nil then return {} end\n"
    "  if type(v) ~= \"table\" then bad(\"not an object\") end\n"
    "  return v\n"
    "end\n"
    "\n"
    "local function kv(x)\n"
    "  x = tbl(x)\n"
    "  return {\n"
    "    key = str(x.key), value = str(x.value), create_revision = int(x.create_revision),\n"
    "    mod_revision = int(x.mod_revision), version = int(x.version), lease = int(x.lease),\n"
    "  }\n"
    "end\n"
    "\n"
    "local function kvs(list)\n"
    "  local out = {}\n"
    "  for i, x in ipairs(tbl(list)) do out[i] = kv(x) end\n"
    "  return out\n"
    "end\n"
    "\n"
    "local function header_rev(r) return int(tbl(r.header).revision) end\n"
    "\n"
    "-- Turn a gateway reply into a table or nil, err, code. code: the HTTP status when\n"
    "-- the body is not JSON, the etcd error string for {\"error\": ...}, else\n"
    "-- \"bad_response\".\n"
    "local function reply(what, status, body)\n"
    "  local obj = decode(body)\n"
    "  if type(obj) ~= \"table\" then\n"
    "    if status ~= 200 then return nil, (\"%s: HTTP %d\"):format(what, status), status end\n"
    "    return nil, what .. \": bad response (not a JSON object)\", \"bad_response\"\n"
    "  end\n"
    "  local e = obj.error\n"
    "  if e ~= nil or status ~= 200 then\n"
    "    if type(e) == \"table\" then e = e.message end -- stream errors: "
    "{\"error\":{\"message\":..}}\n"
    "    local msg = type(e) == \"string\" and e or type(obj.message) == \"string\" and "
    "obj.message\n"
    "      or (\"HTTP \" .. tostring(status))\n"
    "    return nil, what .. \": \" .. msg, msg, obj.code\n"
    "  end\n"
    "  return obj\n"
    "end\n"
    "\n"
    "local function convert(what, fn, obj)\n"
    "  local ok, res = pcall(fn, obj)\n"
    "  if ok then return res end\n"
    "  if type(res) == \"table\" and res.bad then\n"
    "    return nil, (\"%s: bad response (%s)\"):format(what, res.bad), \"bad_response\"\n"
    "  end\n"
    "  error(res, 0)\n"
    "end\n"
    "\n"
    "-- ---- client ------------------------------------------------------------------\n"
    "\n"
    "local function check_opt(opts, k, ty, fn)\n"
    "  local v = opts[k]\n"
    "  if v ~= nil and type(v) ~= ty then\n"
    "    error((\"%s: %s must be a %s\"):format(fn, k, ty), 3)\n"
    "  end\n"
    "  return v\n"
    "end\n"
    "\n"
    "--- etcd.connect{endpoints=, timeout=, dial_timeout=, ca_file=, cert_file=, key_file=,\n"
    "--- skip_tls_verify=} -> client. No I/O.\n"
    "function M.connect(opts)\n"
    "  if type(opts) ~= \"table\" then error(\"etcd.connect: options table expected\", 2) end\n"
    "  local eps = opts.endpoints\n"
    "  if type(eps) == \"string\" then\n"
    "    local t = {}\n"
    "    for e in eps:gmatch(\"[^,%s]+\") do t[#t + 1] = e end\n"
    "    eps = t\n"
    "  end\n"
    "  if type(eps) ~= \"table\" or #eps == 0 then\n"
    "    error(\"etcd.connect: endpoints must be a non-empty list of URLs\", 2)\n"
    "  end\n"
    "  local tls = opts.ca_file or opts.cert_file or opts.skip_tls_verify\n"
    "  local list = {}\n"
    "  for i, e in ipairs(eps) do\n"
    "    if type(e) ~= \"string\" then error(\"etcd.connect: endpoints[\" .. i .. \"] must be a "
    "string\", 2) end\n"
    "    if not e:match(\"^https?://\") then e = (tls and \"https://\" or \"http://\") .. e end\n"
    "    list[i] = e:gsub(\"/+$\", \"\")\n"
    "  end\n"
    "  local timeout = check_opt(opts, \"timeout\", \"number\", \"etcd.connect\") or 5\n"
    "  local conf = {\n"
    "    ca_file = check_opt(opts, \"ca_file\", \"string\", \"etcd.connect\"),\n"
    "    cert_file = check_opt(opts, \"cert_file\", \"string\", \"etcd.connect\"),\n"
    "    key_file = check_opt(opts, \"key_file\", \"string\", \"etcd.connect\"),\n"
    "    skip_tls_verify = opts.skip_tls_verify and true or false,\n"
    "    dial_timeout = check_opt(opts, \"dial_timeout\", \"number\", \"etcd.connect\")\n"
    "      or math.min(timeout, 2),\n"
    "  }\n"
    "  return setmetatable({ endpoints = list, cur = 1, timeout = timeout, conf = conf }, Client)\n"
    "end\n"
    "\n"
    "-- One gateway call with endpoint failover. Reads (idem) move on after any\n"
    "-- transport failure or an \"unavailable\" reply; writes only when the request was\n"
    "-- never sent (connection refused, TLS or dial failure), so a write is never\n"
    "-- applied twice. Returns the decoded object or nil, err, code.\n"
    "function Client:call(what, path, req, idem)\n"
    "  local body = encode(req)\n"
    "  local deadline = now() + self.timeout\n"
    "  local n = #self.endpoints\n"
    "  local err, code\n"
    "  for _ = 1, n do\n"
    "    local remaining = deadline - now()\n"
    "    if remaining <= 0 then break end\n"
    "    local ep = self.endpoints[self.cur]\n"
    "    local status, rbody, tcode, unsent = core.post(self.conf, ep .. path, body, remaining)\n"
    "    if status then\n"
    "      local obj, e, c, grpc = reply(what, status, rbody)\n"
    "      if obj then return obj end\n"
    "      -- 14: gRPC Unavailable (no leader, stopping member): another member may serve.\n"
    "      if not (idem and (grpc == 14 or status == 503)) then return nil, e, c end\n"
    "      err, code = e, c\n"
    "    else\n"
    "      err, code = (\"%s: %s: %s\"):format(what, ep, rbody), tcode\n"
    "      -- Out of time on this member (frozen, partitioned): this call is over, but the\n"
    "      -- next one starts on another member instead of waiting on this one again.\n"
    "      if tcode == \"timeout\" then self.cur = self.cur % n + 1 end\n"
    "      if not (unsent or idem) or tcode == \"timeout\" then return nil, err, code end\n"
    "    end\n"
    "    self.cur = self.cur % n + 1\n"
    "  end\n"
    "  return nil, err or (what .. \": timeout\"), code or \"timeout\"\n"
    "end\n"
    "\n"
    "local function range_req(fn, key, opts)\n"
    "  if type(key) ~= \"string\" then error(fn .. \": key must be a string\", 3) end\n"
    "  opts = opts or {}\n"
    "  local r = { key = b64enc(key) }\n"
    "  if opts.prefix then r.range_end = b64enc(prefix_end(key))\n"
    "  elseif opts.range_end then r.range_end = b64enc(opts.range_end) end\n"
    "  if opts.limit then r.limit = tostring(opts.limit) end\n"
    "  if opts.revision then r.revision = tostring(opts.revision) end\n"
    "  if opts.keys_only then r.keys_only = true end\n"
    "  if opts.count_only then r.count_only = true end\n"
    "  if opts.sort_target then r.sort_target = opts.sort_target:upper() end\n"
    "  if opts.sort_order then r.sort_order = opts.sort_order:upper() end\n"
    "  if opts.max_create_revision then r.max_create_revision = tostring(opts.max_create_revision) "
    "end\n"
    "  if opts.serializable then r.serializable = true end\n"
    "  return r\n"
    "end\n"
    "\n"
    "local function range_res(r)\n"
    "  return { kvs = kvs(r.kvs), count = int(r.count), more = r.more == true, revision = "
    "header_rev(r) }\n"
    "end\n"
    "\n"
    "--- c:get(key [, {prefix=, limit=, revision=, ...}]) -> {kvs=, count=, revision=, more=}\n"
    "function Client:get(key, opts)\n"
    "  local r, e, c = self:call(\"etcd.get\", \"/v3/kv/range\", range_req(\"etcd.get\", key, "
    "opts), true)\n"
    "  if not r then return nil, e, c end\n"
    "  return convert(\"etcd.get\", range_res, r)\n"
    "end\n"
    "\n"
    "local function put_req(fn, key, value, opts)\n"
    "  if type(key) ~= \"string\" then error(fn .. \": key must be a string\", 3) end\n"
    "  if type(value) ~= \"string\" then error(fn .. \": value must be a string\", 3) end\n"
    "  opts = opts or {}\n"
    "  local r = { key = b64enc(key), value = b64enc(value) }\n"
    "  if opts.lease then r.lease = tostring(type(opts.lease) == \"table\" and opts.lease.id or "
    "opts.lease) end\n"
    "  if opts.prev_kv then r.prev_kv = true end\n"
    "  return r\n"
    "end\n"
    "\n"
    "--- c:put(key, value [, {lease=, prev_kv=}]) -> {revision=, prev_kv=}\n"
    "function Client:put(key, value, opts)\n"
    "  local r, e, c = self:call(\"etcd.put\", \"/v3/kv/put\", put_req(\"etcd.put\", key, value, "
    "opts))\n"
    "  if not r then return nil, e, c end\n"
    "  return convert(\"etcd.put\", function(x)\n"
    "    return { revision = header_rev(x), prev_kv = x.prev_kv and kv(x.prev_kv) or nil }\n"
    "  end, r)\n"
    "end\n"
    "\n"
    "local function delete_req(fn, key, opts)\n"
    "  if type(key) ~= \"string\" then error(fn .. \": key must be a string\", 3) end\n"
    "  opts = opts or {}\n"
    "  local r = { key = b64enc(key) }\n"
    "  if opts.prefix then r.range_end = b64enc(prefix_end(key)) end\n"
    "  if opts.prev_kv then r.prev_kv = true end\n"
    "  return r\n"
    "end\n"
    "\n"
    "local function delete_res(x)\n"
    "  return { deleted = int(x.deleted), revision = header_rev(x),\n"
    "    prev_kvs = x.prev_kvs and kvs(x.prev_kvs) or nil }\n"
    "end\n"
    "\n"
    "--- c:delete(key [, {prefix=, prev_kv=}]) -> {deleted=, revision=}\n"
    "function Client:delete(key, opts)\n"
    "  local r, e, c = self:call(\"etcd.delete\", \"/v3/kv/deleterange\", "
    "delete_req(\"etcd.delete\", key, opts))\n"
    "  if not r then return nil, e, c end\n"
    "  return convert(\"etcd.delete\", delete_res, r)\n"
    "end\n"
    "\n"
    "local targets = {\n"
    "  value = \"VALUE\", mod = \"MOD\", mod_revision = \"MOD\", create = \"CREATE\",\n"
    "  create_revision = \"CREATE\", version = \"VERSION\", lease = \"LEASE\",\n"
    "}\n"
    "local target_field = { VALUE = \"value\", MOD = \"mod_revision\", CREATE = "
    "\"create_revision\",\n"
    "  VERSION = \"version\", LEASE = \"lease\" }\n"
    "local results = { [\"==\"] = \"EQUAL\", [\"!=\"] = \"NOT_EQUAL\", [\"<\"] = \"LESS\", [\">\"] "
    "= \"GREATER\" }\n"
    "\n"
    "local function txn_ops(list, what)\n"
    "  if list == nil or #list == 0 then return nil end -- cjson would send {} for []\n"
    "  local out = {}\n"
    "  for i, op in ipairs(list) do\n"
    "    if type(op) ~= \"table\" then error((\"etcd.txn: %s[%d] must be a table\"):format(what, "
    "i), 4) end\n"
    "    local a = op.put or op.get or op.delete\n"
    "    if type(a) ~= \"table\" then\n"
    "      error((\"etcd.txn: %s[%d] needs put=, get= or delete=\"):format(what, i), 4)\n"
    "    end\n"
    "    local key = a.key or a[1]\n"
    "    if op.put then\n"
    "      out[i] = { request_put = put_req(\"etcd.txn\", key, a.value or a[2], a) }\n"
    "    elseif op.get then\n"
    "      out[i] = { request_range = range_req(\"etcd.txn\", key, a) }\n"
    "    else\n"
    "      out[i] = { request_delete_range = delete_req(\"etcd.txn\", key, a) }\n"
    "    end\n"
    "  end\n"
    "  return out\n"
    "end\n"
    "\n"
    "local function txn_res(x)\n"
    "  local res = {}\n"
    "  for i, r in ipairs(tbl(x.responses)) do\n"
    "    r = tbl(r)\n"
    "    if r.response_range then\n"
    "      local g = range_res(tbl(r.response_range))\n"
    "      g.type = \"get\"\n"
    "      res[i] = g\n"
    "    elseif r.response_put then\n"
    "      res[i] = { type = \"put\", revision = header_rev(tbl(r.response_put)) }\n"
    "    elseif r.response_delete_range then\n"
    "      local d = delete_res(tbl(r.response_delete_range))\n"
    "      d.type = \"delete\"\n"
    "      res[i] = d\n"
    "    else\n"
    "      bad(\"unknown txn response\")\n"
    "    end\n"
    "  end\n"
    "  return { succeeded = x.succeeded == true, responses = res, revision = header_rev(x) }\n"
    "end\n"
    "\n"
    "--- c:txn{compare={...}, success={...}, failure={...}} -> {succeeded=, responses=, "
    "revision=}\n"
    "function Client:txn(t)\n"
    "  if type(t) ~= \"table\" then error(\"etcd.txn: table expected\", 2) end\n"
    "  local cmp = {}\n"
    "  for i, c in ipairs(t.compare or {}) do\n"
    "    local tg = type(c) == \"table\" and targets[c.target or \"value\"]\n"
    "    local rs = type(c) == \"table\" and results[c.result or \"==\"]\n"
    "    if not tg or not rs or type(c.key) ~= \"string\" then\n"
    "      error((\"etcd.txn: compare[%d] needs key=, target= (value|mod|create|version|lease) \"\n"
    "        .. \"and result= (==|!=|<|>)\"):format(i), 2)\n"
    "    end\n"
    "    local v = { key = b64enc(c.key), target = tg, result = rs }\n"
    "    if tg == \"VALUE\" then\n"
    "      if type(c.value) ~= \"string\" then error((\"etcd.txn: compare[%d].value must be a "
    "string\"):format(i), 2) end\n"
    "      v.value = b64enc(c.value)\n"
    "    else\n"
    "      local n = tointeger(c.value)\n"
    "      if not n then error((\"etcd.txn: compare[%d].value must be an integer\"):format(i), 2) "
    "end\n"
    "      v[target_field[tg]] = tostring(n)\n"
    "    end\n"
    "    if c.prefix then v.range_end = b64enc(prefix_end(c.key)) end\n"
    "    cmp[i] = v\n"
    "  end\n"
    "  if #cmp == 0 then cmp = nil end\n"
    "  local req = { compare = cmp, success = txn_ops(t.success, \"success\"),\n"
    "    failure = txn_ops(t.failure, \"failure\") }\n"
    "  local r, e, c = self:call(\"etcd.txn\", \"/v3/kv/txn\", req)\n"
    "  if not r then return nil, e, c end\n"
    "  return convert(\"etcd.txn\", txn_res, r)\n"
    "end\n"
    "\n"
    "--- c:compact(revision [, {physical=}]) -> {revision=}\n"
    "function Client:compact(rev, opts)\n"
    "  local n = tointeger(rev)\n"
    "  if not n then error(\"etcd.compact: revision must be an integer\", 2) end\n"
    "  local r, e, c = self:call(\"etcd.compact\", \"/v3/kv/compaction\",\n"
    "    { revision = tostring(n), physical = opts and opts.physical or nil })\n"
    "  if not r then return nil, e, c end\n"
    "  return convert(\"etcd.compact\", function(x) return { revision = header_rev(x) } end, r)\n"
    "end\n"
    "\n"
    "-- ---- leases --------------------------------------------------------------------\n"
    "\n"
    "local function keepalive_loop(l)\n"
    "  local c = l.client\n"
    "  local interval = math.max(l.ttl / 3, 0.2)\n"
    "  local wait = interval\n"
    "  while not l.revoked do\n"
    "    sleep(wait)\n"
    "    if l.revoked then return end\n"
    "    local r, e = c:call(\"etcd.lease\", \"/v3/lease/keepalive\", { ID = tostring(l.id) }, "
    "true)\n"
    "    if r then\n"
    "      local ttl = convert(\"etcd.lease\", function(x) return int(tbl(x.result).TTL) end, r)\n"
    "      if ttl and ttl <= 0 then\n"
    "        l.expired = true\n"
    "        log.warn { event = \"etcd_lease_expired\", msg = \"lease expired\", lease = l.hex }\n"
    "        return\n"
    "      end\n"
    "      wait = interval\n"
    "    else\n"
    "      log.warn { event = \"etcd_lease_keepalive_failed\", msg = e, lease = l.hex }\n"
    "      wait = math.min(interval, 0.5)\n"
    "    end\n"
    "  end\n"
    "end\n"
    "\n"
    "--- c:lease(ttl) -> lease {id=, ttl=} kept alive by a background task until\n"
    "--- l:revoke(). The task is detached: cancelling the task that took the lease (a\n"
    "--- signal to a failover) does not end it, so a lock outlives a long clean-up.\n"
    "function Client:lease(ttl)\n"
    "  local n = tointeger(ttl)\n"
    "  if not n or n <= 0 then error(\"etcd.lease: ttl must be a positive integer (seconds)\", 2) "
    "end\n"
    "  local r, e, c = self:call(\"etcd.lease\", \"/v3/lease/grant\", { TTL = tostring(n) })\n"
    "  if not r then return nil, e, c end\n"
    "  local res, e2, c2 = convert(\"etcd.lease\", function(x)\n"
    "    return { id = int(x.ID), ttl = int(x.TTL) }\n"
    "  end, r)\n"
    "  if not res then return nil, e2, c2 end\n"
    "  if res.id == 0 then return nil, \"etcd.lease: no lease id in the reply\", \"bad_response\" "
    "end\n"
    "  local l = setmetatable({ id = res.id, ttl = res.ttl, client = self,\n"
    "    hex = (\"%x\"):format(res.id) }, Lease)\n"
    "  l.task = task.detached(\"etcd.lease:\" .. l.hex, keepalive_loop, l)\n"
    "  return l\n"
    "end\n"
    "\n"
    "--- l:revoke() -> true | nil, err, code. Idempotent; stops the keep-alive. Shielded:\n"
    "--- a cancel meanwhile does not leave the lease to its TTL.\n"
    "function Lease:revoke()\n"
    "  if self.revoked then return true end\n"
    "  self.revoked = true\n"
    "  if self.task then self.task:cancel() end\n"
    "  local r, e, c = task.shield(self.client.call, self.client, \"etcd.lease\", "
    "\"/v3/lease/revoke\", { ID = tostring(self.id) })\n"
    "  if not r and c ~= \"etcdserver: requested lease not found\" then return nil, e, c end\n"
    "  return true\n"
    "end\n"
    "Lease.close = Lease.revoke\n"
    "Lease.__close = Lease.revoke\n"
    "\n"
    "--- l:alive() -> false once revoked or seen expired.\n"
    "function Lease:alive() return not (self.revoked or self.expired) end\n"
    "\n"
    "-- ---- watch ---------------------------------------------------------------------\n"
    "\n"
    "--- c:watch(key [, {prefix=, start_revision=, prev_kv=}]) -> watcher. No I/O.\n"
    "function Client:watch(key, opts)\n"
    "  if type(key) ~= \"string\" then error(\"etcd.watch: key must be a string\", 2) end\n"
    "  opts = opts or {}\n"
    "  local w = setmetatable({ client = self, key = key, ep = self.cur, prev_kv = opts.prev_kv }, "
    "Watcher)\n"
    "  if opts.prefix then w.range_end = prefix_end(key) end\n"
    "  if opts.start_revision then\n"
    "    w.next_rev = tointeger(opts.start_revision)\n"
    "    if not w.next_rev then error(\"etcd.watch: start_revision must be an integer\", 2) end\n"
    "  end\n"
    "  return w\n"
    "end\n"
    "\n"
    "function Watcher:open()\n"
    "  local cr = { key = b64enc(self.key), progress_notify = true }\n"
    "  if self.range_end then cr.range_end = b64enc(self.range_end) end\n"
    "  if self.next_rev then cr.start_revision = tostring(self.next_rev) end\n"
    "  if self.prev_kv then cr.prev_kv = true end\n"
    "  local c = self.client\n"
    "  local url = c.endpoints[self.ep] .. \"/v3/watch\"\n"
    "  self.stream = core.stream(c.conf, url, encode({ create_request = cr }))\n"
    "end\n"
    "\n"
    "--- w:reconnect(): drop the stream now; the next w:next() resumes from the next\n"
    "--- revision on the next endpoint.\n"
    "function Watcher:reconnect()\n"
    "  if self.stream then\n"
    "    self.stream:close()\n"
    "    self.stream = nil\n"
    "    self.ep = self.ep % #self.client.endpoints + 1\n"
    "  end\n"
    "end\n"
    "\n"
    "--- w:resume(revision): continue from revision (after a re-read).\n"
    "function Watcher:resume(rev)\n"
    "  local n = tointeger(rev)\n"
    "  if not n then error(\"etcd.watch: resume needs an integer revision\", 2) end\n"
    "  if self.stream then self.stream:close(); self.stream = nil end\n"
    "  self.next_rev = n\n"
    "end\n"
    "\n"
    "local function event(x)\n"
    "  x = tbl(x)\n"
    "  local k = kv(x.kv)\n"
    "  k.type = x.type == \"DELETE\" and \"delete\" or x.type == nil and \"put\" or bad(\"event "
    "type\")\n"
    "  if x.prev_kv then k.prev_kv = kv(x.prev_kv) end\n"
    "  return k\n"
    "end\n"
    "\n"
    "-- Handle one decoded stream message: returns \"events\", list | \"compacted\", rev |\n"
    "-- \"skip\" | \"drop\", err.\n"
    "function Watcher:handle(msg)\n"
    "  local r = msg.result\n"
    "  if type(r) ~= \"table\" then\n"
    "    local e = msg.error\n"
    "    if type(e) == \"table\" then e = e.message end\n"
    "    return \"drop\", \"etcd.watch: \" .. (type(e) == \"string\" and e or \"bad message\")\n"
    "  end\n"
    "  local cr = int(r.compact_revision)\n"
    "  if cr > 0 then return \"compacted\", cr end\n"
    "  if r.canceled then return \"drop\", \"etcd.watch: cancelled by the server: \" .. "
    "tostring(r.cancel_reason) end\n"
    "  if r.created and not self.next_rev then self.next_rev = header_rev(r) + 1 end\n"
    "  local out = {}\n"
    "  for _, x in ipairs(tbl(r.events)) do\n"
    "    local ev = event(x)\n"
    "    if not self.next_rev or ev.mod_revision >= self.next_rev then out[#out + 1] = ev end\n"
    "  end\n"
    "  if #out == 0 then return \"skip\" end\n"
    "  self.next_rev = out[#out].mod_revision + 1\n"
    "  return \"events\", out\n"
    "end\n"
    "\n"
    "--- w:next([timeout]) -> events | nil, err, code (\"timeout\", \"compacted\" + revision)\n"
    "function Watcher:next(timeout)\n"
    "  if self.closed then error(\"etcd.watch: watcher is closed\", 2) end\n"
    "  local deadline = timeout and now() + timeout\n"
    "  local backoff = 0.05\n"
    "  while true do\n"
    "    local remaining = deadline and deadline - now()\n"
    "    if remaining and remaining <= 0 then return nil, \"etcd.watch: timeout\", \"timeout\" "
    "end\n"
    "    if not self.stream then self:open() end\n"
    "    local ok, msg, e, code = pcall(self.stream.next, self.stream, remaining or 0)\n"
    "    if not ok then -- cancelled (or out of memory): never leave a stream behind\n"
    "      self:close()\n"
    "      error(msg, 0)\n"
    "    end\n"
    "    local kind, val\n"
    "    if msg then\n"
    "      local obj = decode(msg)\n"
    "      if type(obj) ~= \"table\" then\n"
    "        kind, val = \"drop\", \"etcd.watch: bad message (not JSON)\"\n"
    "      else\n"
    "        local okh, k, v = pcall(self.handle, self, obj)\n"
    "        if okh then kind, val = k, v\n"
    "        elseif type(k) == \"table\" and k.bad then kind, val = \"drop\", \"etcd.watch: bad "
    "message (\" .. k.bad .. \")\"\n"
    "        else error(k, 0) end\n"
    "      end\n"
    "    elseif code == \"timeout\" then\n"
    "      return nil, \"etcd.watch: timeout\", \"timeout\"\n"
    "    else\n"
    "      kind, val = \"drop\", e\n"
    "    end\n"
    "    if kind == \"events\" then return val end\n"
    "    if kind == \"compacted\" then\n"
    "      self.stream:close()\n"
    "      self.stream = nil\n"
    "      self.next_rev = val\n"
    "      return nil, (\"etcd.watch: revision compacted (compact revision %d)\"):format(val), "
    "\"compacted\", val\n"
    "    end\n"
    "    if kind == \"drop\" then\n"
    "      log.debug { event = \"etcd_watch_reconnect\", msg = val, endpoint = "
    "self.client.endpoints[self.ep] }\n"
    "      self:reconnect()\n"
    "      local pause = backoff\n"
    "      if deadline then pause = math.min(pause, math.max(deadline - now(), 0)) end\n"
    "      if pause > 0 then sleep(pause) end\n"
    "      backoff = math.min(backoff * 2, 1)\n"
    "    end\n"
    "  end\n"
    "end\n"
    "\n"
    "--- w:close(): stop the stream. Idempotent.\n"
    "function Watcher:close()\n"
    "  self.closed = true\n"
    "  if self.stream then self.stream:close(); self.stream = nil end\n"
    "end\n"
    "Watcher.__close = Watcher.close\n"
    "\n"
    "-- ---- lock (etcd's concurrency.Mutex protocol) -----------------------------------\n"
    "\n"
    "-- Wait until no key under pfx has a create revision <= maxrev (Go: waitDeletes).\n"
    "function Client:wait_deletes(pfx, maxrev, deadline)\n"
    "  while true do\n"
    "    local remaining = deadline and deadline - now()\n"
    "    if remaining and remaining <= 0 then return nil, \"etcd.lock: timeout\", \"timeout\" end\n"
    "    local r, e, c = self:get(pfx, { prefix = true, sort_target = \"create\", sort_order = "
    "\"descend\",\n"
    "      limit = 1, max_create_revision = maxrev })\n"
    "    if not r then return nil, e, c end\n"
    "    if #r.kvs == 0 then return true end\n"
    "    local w <close> = self:watch(r.kvs[1].key, { start_revision = r.revision + 1 })\n"
    "    local gone = false\n"
    "    repeat\n"
    "      local evs, e2, c2 = w:next(deadline and math.max(deadline - now(), 0.001))\n"
    "      if not evs then\n"
    "        if c2 == \"timeout\" then return nil, \"etcd.lock: timeout\", \"timeout\" end\n"
    "        if c2 ~= \"compacted\" then return nil, e2, c2 end\n"
    "        gone = true -- compacted: just re-read\n"
    "      else\n"
    "        for _, ev in ipairs(evs) do if ev.type == \"delete\" then gone = true end end\n"
    "      end\n"
    "    until gone\n"
    "  end\n"
    "end\n"
    "\n"
    "-- Queue key under name/ and wait to be first -> my create revision | nil, err, code.\n"
    "local function acquire(self, name, key, lease, deadline)\n"
    "  local pfx = name .. \"/\"\n"
    "  local first = { pfx, prefix = true, sort_target = \"create\", sort_order = \"ascend\", "
    "limit = 1 }\n"
    "  local r, e1, c1 = self:txn {\n"
    "    compare = { { key = key, target = \"create\", result = \"==\", value = 0 } },\n"
    "    success = { { put = { key, \"\", lease = lease.id } }, { get = first } },\n"
    "    failure = { { get = { key } }, { get = first } },\n"
    "  }\n"
    "  if not r then return nil, e1, c1 end\n"
    "  local my = r.revision\n"
    "  if not r.succeeded then\n"
    "    local mine = r.responses[1].kvs[1]\n"
    "    if not mine then return nil, \"etcd.lock: own key vanished\", \"session_expired\" end\n"
    "    my = mine.create_revision\n"
    "  end\n"
    "  local owner = r.responses[2].kvs and r.responses[2].kvs[1]\n"
    "  if owner and owner.create_revision ~= my then\n"
    "    local ok, e2, c2 = self:wait_deletes(pfx, my - 1, deadline)\n"
    "    if not ok then\n"
    "      if c2 == \"timeout\" then e2 = (\"etcd.lock: timeout waiting for %s\"):format(name) "
    "end\n"
    "      return nil, e2, c2\n"
    "    end\n"
    "    local g, e3, c3 = self:get(key)\n"
    "    if not g then return nil, e3, c3 end\n"
    "    if #g.kvs == 0 then return nil, \"etcd.lock: session expired while waiting\", "
    "\"session_expired\" end\n"
    "  end\n"
    "  return my\n"
    "end\n"
    "\n"
    "--- c:lock(name [, {timeout=, ttl=}]) -> handle | nil, err, code. An acquisition that\n"
    "--- fails, times out or is cancelled deletes its key and revokes its lease before it\n"
    "--- returns (or re-raises), so it queues nobody behind it.\n"
    "function Client:lock(name, opts)\n"
    "  if type(name) ~= \"string\" then error(\"etcd.lock: name must be a string\", 2) end\n"
    "  opts = opts or {}\n"
    "  local deadline = opts.timeout and now() + opts.timeout\n"
    "  local lease, e, c = self:lease(opts.ttl or 60)\n"
    "  if not lease then return nil, e, c end\n"
    "  local key = name .. \"/\" .. lease.hex\n"
    "  local r = pack(pcall(acquire, self, name, key, lease, deadline))\n"
    "  if r[1] and r[2] then\n"
    "    return setmetatable({ client = self, name = name, key = key, lease = lease, revision = "
    "r[2] }, Lock)\n"
    "  end\n"
    "  task.shield(function()\n"
    "    self:delete(key)\n"
    "    lease:revoke()\n"
    "  end)\n"
    "  if not r[1] then error(r[2], 0) end\n"
    "  return nil, r[3], r[4]\n"
    "end\n"
    "\n"
    "--- h:unlock() -> true | nil, err, code. Idempotent. Shielded: a cancel meanwhile\n"
    "--- cannot stop it between the delete and the revoke (the keep-alive would go on).\n"
    "function Lock:unlock()\n"
    "  if self.released then return true end\n"
    "  self.released = true\n"
    "  local _, e, c, ok, e2, c2\n"
    "  task.shield(function()\n"
    "    _, e, c = self.client:delete(self.key)\n"
    "    ok, e2, c2 = self.lease:revoke()\n"
    "  end)\n"
    "  if e then return nil, e, c end\n"
    "  if not ok then return nil, e2, c2 end\n"
    "  return true\n"
    "end\n"
    "Lock.__close = Lock.unlock\n"
    "\n"
    "M.Client, M.Watcher, M.Lease, M.Lock = Client, Watcher, Lease, Lock\n"
    "return M\n";

/* etcd module: connect (and the Client/Watcher/Lease/Lock classes) from the Lua
 * chunk above; needs lua-cjson (`cjson.safe`). */
int luaopen_etcd(lua_State *L)
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
    if (luaL_loadbuffer(L, etcd_lua, sizeof etcd_lua - 1, "=etcd") != LUA_OK)
        return lua_error(L);
    luaL_newlib(L, core);
    lua_pushvalue(L, -1);
    lua_insert(L, -3); /* core, chunk, core */
    lua_call(L, 1, 1);
    lua_insert(L, -2);
    lua_setfield(L, -2, "_core");
    return 1;
}
