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

static const char driver[] =
    "local etcd = require 'etcd'\n"
    "local cjson = require 'cjson.safe'\n"
    "local core = require 'etcd.core'\n"
    "local reply_status, reply_body = 200, ''\n"
    "core.post = function() return reply_status, reply_body end\n"
    "local c = etcd.connect { endpoints = 'http://127.0.0.1:1,127.0.0.1:2', timeout = 5 }\n"
    "local statuses = { 200, 200, 200, 200, 200, 404, 500, 503 }\n"
    "local function check(what, r, err, code)\n"
    "  if r == nil then\n"
    "    if type(err) ~= 'string' then error(what .. ': nil without a message') end\n"
    "    if code == nil then error(what .. ': nil without a code') end\n"
    "  elseif type(r) ~= 'table' then\n"
    "    error(what .. ': returned a ' .. type(r))\n"
    "  end\n"
    "end\n"
    "local function watch_msg(msg)\n"
    "  local obj = cjson.decode(msg)\n"
    "  if type(obj) ~= 'table' then return end\n"
    "  local w = setmetatable({ client = c, ep = 1 }, etcd.Watcher)\n"
    "  if #msg % 2 == 0 then w.next_rev = 5 end\n"
    "  local ok, kind, val = pcall(w.handle, w, obj)\n"
    "  if not ok then\n"
    "    if type(kind) == 'table' and kind.bad then return end\n"
    "    error('Watcher:handle raised: ' .. tostring(kind), 0)\n"
    "  end\n"
    "  if kind == 'events' then\n"
    "    if type(val) ~= 'table' or #val == 0 then error('handle: events without a list') end\n"
    "    for _, ev in ipairs(val) do\n"
    "      if type(ev.key) ~= 'string' or math.type(ev.mod_revision) ~= 'integer' then\n"
    "        error('handle: bad event')\n"
    "      end\n"
    "    end\n"
    "  elseif kind == 'compacted' then\n"
    "    if math.type(val) ~= 'integer' then error('handle: compacted without a revision') end\n"
    "  elseif kind == 'drop' then\n"
    "    if type(val) ~= 'string' then error('handle: drop without a message') end\n"
    "  elseif kind ~= 'skip' then\n"
    "    error('handle: unknown kind ' .. tostring(kind))\n"
    "  end\n"
    "end\n"
    "return function(data, msgs)\n"
    "  for _, m in ipairs(msgs) do watch_msg(m) end\n"
    "  reply_status = statuses[#data % #statuses + 1]\n"
    "  reply_body = data\n"
    "  check('get', c:get('k', { prefix = true }))\n"
    "  check('put', c:put('k', 'v', { prev_kv = true }))\n"
    "  check('delete', c:delete('k', { prefix = true, prev_kv = true }))\n"
    "  check('txn', c:txn { compare = { { key = 'k', target = 'mod', result = '<', value = 3 } },\n"
    "    success = { { get = { 'k' } }, { put = { 'k', 'v' } } }, failure = { { delete = { 'k' } } } })\n"
    "  check('compact', c:compact(7))\n"
    "  local d = core.b64dec(data)\n"
    "  if d ~= nil then\n"
    "    if type(d) ~= 'string' or #d > #data * 3 // 4 + 2 then error('b64dec: bad result') end\n"
    "  end\n"
    "  if core.b64dec(core.b64enc(data)) ~= data then error('b64: round trip failed') end\n"
    "  core.prefix_end(data)\n"
    "end\n";

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
        check_ref = fz_load(driver, sizeof driver - 1, "=etcd_driver");
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
