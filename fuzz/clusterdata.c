/*
 * fuzz/clusterdata.c: libFuzzer target for the stolon clusterdata model
 * (lua/stolon.lua) and the byte-preserving JSON editor (lua/jsonedit.lua), run
 * inside a host Lua state (spgb_host_new).
 *
 * Each input is a clusterdata document: stolon.decode, then every query the
 * commands make (master, check_healthy, recovered, keepers, sync/async
 * standbys, databases, min_sync, sleep_interval, describe),
 * then stolon.with_force_fail, stolon.with_sleep_interval and jsonedit.get/set
 * on the raw text. Contract checked: these functions return a value or
 * nil, err; they never raise on any input. Besides: when the input is valid
 * JSON, an edit that succeeds yields valid JSON with the edited member set.
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
        check_ref = fz_load("fuzz/clusterdata.lua");
    fz_call(check_ref, (const char *)data, size, 0);
    return 0;
}
