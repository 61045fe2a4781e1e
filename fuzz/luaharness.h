/*
 * fuzz/luaharness.h: shared by the harnesses that drive Lua code (clusterdata,
 * flags, etcd, http). Included once per harness; everything is static.
 *
 * Provides: fz_host() (one host state per process, from spgb_host_new, so
 * `require` finds the lua/ embedded in the harness, the same code as the binary's,
 * or SPGB_LUA_DIR's when set), fz_load(name) (runs a driver, fuzz/<target>.lua, that returns the
 * per-input check function, anchored in the registry) and fz_call(ref, data,
 * size) which calls it with the input as one string and abort()s, printing the
 * error and traceback, when it raises: drivers raise only on a finding (an
 * unexpected error from the code under test, or a broken invariant).
 *
 * Coverage of Lua code: liblua is not instrumented, so libFuzzer would see no
 * difference between inputs that take different paths through the Lua files. A line
 * hook (inherited by every thread created afterwards, tasks included) feeds the
 * (previous line, line) pair of every executed Lua line into libFuzzer's extra
 * counters, which libFuzzer treats as coverage like its own.
 * Uses: host, Lua 5.4, libFuzzer's __libfuzzer_extra_counters section.
 */
#ifndef FUZZ_LUAHARNESS_H
#define FUZZ_LUAHARNESS_H

#include <lauxlib.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "host.h"

static lua_State *fz_L;

#define FZ_COUNTERS (1u << 16)
__attribute__((section("__libfuzzer_extra_counters"), used)) static unsigned char
    fz_counters[FZ_COUNTERS];
static uintptr_t fz_prev;

static void fz_hook(lua_State *L, lua_Debug *ar)
{
    if (!lua_getinfo(L, "S", ar))
        return;
    uintptr_t cur = ((uintptr_t)ar->source * 0x9E3779B1u) ^ ((uintptr_t)ar->currentline * 0x85EBCA77u);
    uintptr_t i = (cur ^ (fz_prev >> 1)) % FZ_COUNTERS;
    fz_prev = cur;
    if (fz_counters[i] != 0xff)
        fz_counters[i]++;
}

static lua_State *fz_host(void)
{
    if (fz_L)
        return fz_L;
    /* lua/ comes from the copy embedded in the harness, as in the binary (or from
     * $SPGB_LUA_DIR when scripts/fuzz.sh is given FUZZ_LUA_DIR). */
    fz_L = spgb_host_new();
    if (!fz_L)
        abort();
    lua_sethook(fz_L, fz_hook, LUA_MASKLINE, 0);
    return fz_L;
}

static int fz_msgh(lua_State *L)
{
    const char *msg = lua_tostring(L, 1);
    if (!msg)
        msg = luaL_tolstring(L, 1, NULL);
    luaL_traceback(L, L, msg, 1);
    return 1;
}

/* Run the driver rel ("fuzz/flags.lua", embedded by scripts/fuzz.sh); it returns the
 * check function. Returns its registry ref. */
__attribute__((unused)) static int fz_load(const char *name)
{
    lua_State *L = fz_host();
    lua_pushcfunction(L, fz_msgh);
    int rc = spgb_host_load(L, name);
    if (rc == 0)
        lua_pushstring(L, "not embedded (scripts/fuzz.sh embeds fuzz/*.lua)");
    if (rc <= 0 || lua_pcall(L, 0, 1, -2) != LUA_OK) {
        fprintf(stderr, "fuzz: loading %s: %s\n", name, lua_tostring(L, -1));
        abort();
    }
    if (!lua_isfunction(L, -1)) {
        fprintf(stderr, "fuzz: %s did not return a function\n", name);
        abort();
    }
    int ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pop(L, 1);
    return ref;
}

/* Call the check function ref with the input; nextra values already pushed on
 * the stack go after it. abort() on any raise. Leaves the stack as found
 * (minus the extras). */
__attribute__((unused)) static void fz_call(int ref, const char *data, size_t size, int nextra)
{
    lua_State *L = fz_L;
    int base = lua_gettop(L) - nextra;
    int msgh = lua_gettop(L) + 1;
    lua_pushcfunction(L, fz_msgh);
    lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
    lua_pushlstring(L, data, size);
    for (int i = 0; i < nextra; i++)
        lua_pushvalue(L, base + 1 + i);
    if (lua_pcall(L, 1 + nextra, 0, msgh) != LUA_OK) {
        fprintf(stderr, "fuzz: unexpected Lua error (a finding):\n%s\n", lua_tostring(L, -1));
        fflush(stderr);
        abort();
    }
    lua_settop(L, base);
}

#endif
