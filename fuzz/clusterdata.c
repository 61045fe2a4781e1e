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

static const char driver[] =
    "local stolon = require 'stolon'\n"
    "local jsonedit = require 'jsonedit'\n"
    "local cjson = require 'cjson.safe'\n"
    "local function nil_err(what, v, err)\n"
    "  if v == nil and type(err) ~= 'string' then\n"
    "    error(what .. ': returned nil without an error message')\n"
    "  end\n"
    "end\n"
    "local function edited(what, raw, new, path, want)\n"
    "  if new == nil then return end\n"
    "  if type(new) ~= 'string' then error(what .. ': returned a ' .. type(new)) end\n"
    "  if cjson.decode(raw) == nil then return end -- garbage in: no promise\n"
    "  local doc = cjson.decode(new)\n"
    "  if doc == nil then error(what .. ': made invalid JSON from valid JSON: ' .. new) end\n"
    "  local got = jsonedit.get(new, path)\n"
    "  if got ~= want then\n"
    "    error(('%s: member reads back as %s, want %s'):format(what, tostring(got), want))\n"
    "  end\n"
    "end\n"
    "return function(text)\n"
    "  local cd, err = stolon.decode(text)\n"
    "  nil_err('decode', cd, err)\n"
    "  if cd then\n"
    "    local m = cd:master()\n"
    "    stolon.describe(m)\n"
    "    nil_err('check_healthy', cd:check_healthy(1))\n"
    "    nil_err('check_healthy', cd:check_healthy(0))\n"
    "    local r, state, detail = cd:recovered('keeper0')\n"
    "    if r == nil and (type(state) ~= 'string' or type(detail) ~= 'string') then\n"
    "      error('recovered: nil without state and detail')\n"
    "    end\n"
    "    stolon.describe(r)\n"
    "    for _, k in ipairs(cd:keepers()) do\n"
    "      if type(k.host) ~= 'string' then error('keepers: host is not a string') end\n"
    "    end\n"
    "    cd:sync_standbys(); cd:async_standbys(); cd:databases(); cd:db_uids()\n"
    "    cd:min_sync(); cd:sleep_interval()\n"
    "  end\n"
    "  local ff, e1 = stolon.with_force_fail(text, 'keeper0')\n"
    "  nil_err('with_force_fail', ff, e1)\n"
    "  edited('with_force_fail', text, ff, { 'keepers', 'keeper0', 'status', 'forceFail' }, 'true')\n"
    "  local si, e2 = stolon.with_sleep_interval(text, '1s')\n"
    "  nil_err('with_sleep_interval', si, e2)\n"
    "  edited('with_sleep_interval', text, si, { 'cluster', 'spec', 'sleepInterval' }, '\"1s\"')\n"
    "  jsonedit.get(text, { 'proxy', 'spec', 'masterDbUid' })\n"
    "  jsonedit.get(text, {})\n"
    "  local v, e3 = jsonedit.set(text, { 'a' }, '[1, {\"b\": null}]')\n"
    "  nil_err('jsonedit.set', v, e3)\n"
    "  edited('jsonedit.set', text, v, { 'a' }, '[1, {\"b\": null}]')\n"
    "end\n";

static int check_ref = LUA_NOREF;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (check_ref == LUA_NOREF)
        check_ref = fz_load(driver, sizeof driver - 1, "=clusterdata_driver");
    fz_call(check_ref, (const char *)data, size, 0);
    return 0;
}
