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

static int check_ref = LUA_NOREF;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (check_ref == LUA_NOREF) {
        check_ref = fz_load("fuzz/flags.lua");
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
