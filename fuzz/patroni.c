/*
 * fuzz/patroni.c: libFuzzer target for the Patroni DCS model (lua/patroni.lua),
 * run inside a host Lua state (spgb_host_new).
 *
 * Each input is a scope's keys, one per line, "<key below the scope>=<value>"
 * (leader, members/<name>, sync, config, status, failover, anything else):
 * patroni.decode, then every query the commands make (primary, can_lose_primary
 * with and without a candidate, switch_finished, synchronous_mode, max_lag,
 * describe) and parse_url on every value. Contract checked: these functions
 * return a value or nil, err; they never raise on any input, and a decode error
 * names the key it is about.
 * Uses: host (require), lua-cjson.
 */
#include <stdint.h>
#include <string.h>

#include "luaharness.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int check_ref = LUA_NOREF;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (check_ref == LUA_NOREF)
        check_ref = fz_load("fuzz/patroni.lua");
    fz_call(check_ref, (const char *)data, size, 0);
    return 0;
}
