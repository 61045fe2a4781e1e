/*
 * fuzz/flags.c: libFuzzer target for command-line parsing: lua/flags.lua
 * (flags.parse, flags.usage) and lua/duration.lua (duration.parse,
 * duration.format), run inside a host Lua state.
 *
 * The input split on NUL bytes is: the value of the environment variable
 * SPGB_FUZZ_ENV (first piece, the env fallback of --env-dur), then argv. argv
 * is parsed against a fixed spec using every flag type (string, bool, duration,
 * int, number, list) with defaults and env fallbacks, both interspersed and not;
 * each argument also goes through duration.parse and, when that succeeds,
 * duration.format and back. Contract checked: parse returns opts, rest |
 * nil, err | "help" and never raises; duration.parse returns seconds | nil, err,
 * never negative for a text without '-'; format of a parsed duration is a string
 * that parses again. Uses: host, Lua.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "luaharness.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char driver[] =
    "local flags = require 'flags'\n"
    "local duration = require 'duration'\n"
    "local spec = {\n"
    "  { name = 'name', default = 'x', help = 'a string' },\n"
    "  { name = 'verbose', type = 'bool', help = 'a bool' },\n"
    "  { name = 'dry-run', type = 'bool', default = true },\n"
    "  { name = 'poll-interval', type = 'duration', default = '1m' },\n"
    "  { name = 'env-dur', type = 'duration', env = 'SPGB_FUZZ_ENV', default = '5s' },\n"
    "  { name = 'count', type = 'int', default = 3 },\n"
    "  { name = 'ratio', type = 'number' },\n"
    "  { name = 'hosts', type = 'list', default = 'a,b' },\n"
    "  { name = 'token', env = 'SPGB_FUZZ_ENV' },\n"
    "}\n"
    "local function parse(argv, info)\n"
    "  local opts, rest = flags.parse(spec, argv, info)\n"
    "  if opts == 'help' then return end\n"
    "  if opts == nil then\n"
    "    if type(rest) ~= 'string' then error('flags.parse: nil without a message') end\n"
    "    return\n"
    "  end\n"
    "  if type(opts) ~= 'table' or type(rest) ~= 'table' then error('flags.parse: bad results') end\n"
    "  if type(opts.poll_interval) ~= 'number' or type(opts.count) ~= 'number' then\n"
    "    error('flags.parse: defaults not applied')\n"
    "  end\n"
    "end\n"
    "local function dur(s)\n"
    "  local v, err = duration.parse(s)\n"
    "  if v == nil then\n"
    "    if type(err) ~= 'string' then error('duration.parse: nil without a message') end\n"
    "    return\n"
    "  end\n"
    "  if type(v) ~= 'number' then error('duration.parse: returned a ' .. type(v)) end\n"
    "  if v < 0 and s:sub(1, 1) ~= '-' then\n"
    "    error(('duration.parse(%q) = %s: negative from a positive text'):format(s, v))\n"
    "  end\n"
    "  if v ~= v or v == math.huge or v == -math.huge then return end -- overflow: see README\n"
    "  local f = duration.format(v)\n"
    "  if type(f) ~= 'string' then error('duration.format: returned a ' .. type(f)) end\n"
    "  local back = duration.parse(f)\n"
    "  if type(back) ~= 'number' then\n"
    "    error(('duration.format(%s) = %q does not parse again'):format(v, f))\n"
    "  end\n"
    "end\n"
    "flags.usage(spec, { command = 'fuzz', args = ' ARGS...', description = 'fuzzing' })\n"
    "return function(_, argv)\n"
    "  parse(argv)\n"
    "  parse(argv, { interspersed = false, command = 'fuzz' })\n"
    "  for _, a in ipairs(argv) do dur(a) end\n"
    "end\n";

static int check_ref = LUA_NOREF;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (check_ref == LUA_NOREF) {
        check_ref = fz_load(driver, sizeof driver - 1, "=flags_driver");
    }
    lua_State *L = fz_L;
    const char *p = (const char *)data, *end = p + size;
    const char *nul = memchr(p, 0, size);
    size_t envlen = nul ? (size_t)(nul - p) : size;
    char *env = malloc(envlen + 1);
    if (!env)
        return 0;
    memcpy(env, p, envlen);
    env[envlen] = 0;
    if (envlen)
        setenv("SPGB_FUZZ_ENV", env, 1);
    else
        unsetenv("SPGB_FUZZ_ENV");
    free(env);
    lua_newtable(L);
    int n = 0;
    if (nul) {
        p = nul + 1;
        while (p <= end) {
            const char *q = memchr(p, 0, (size_t)(end - p));
            if (!q)
                q = end;
            lua_pushlstring(L, p, (size_t)(q - p));
            lua_rawseti(L, -2, ++n);
            p = q + 1;
        }
    }
    fz_call(check_ref, (const char *)data, size, 1);
    return 0;
}
