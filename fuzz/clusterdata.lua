-- fuzz/clusterdata.lua: the driver of fuzz/clusterdata.c (the contract it checks is
-- described there); returns the per-input check function.
local stolon = require 'stolon'
local jsonedit = require 'jsonedit'
local cjson = require 'cjson.safe'
local function nil_err(what, v, err)
  if v == nil and type(err) ~= 'string' then
    error(what .. ': returned nil without an error message')
  end
end
local function edited(what, raw, new, path, want)
  if new == nil then return end
  if type(new) ~= 'string' then error(what .. ': returned a ' .. type(new)) end
  if cjson.decode(raw) == nil then return end -- garbage in: no promise
  local doc = cjson.decode(new)
  if doc == nil then error(what .. ': made invalid JSON from valid JSON: ' .. new) end
  local got = jsonedit.get(new, path)
  if got ~= want then
    error(('%s: member reads back as %s, want %s'):format(what, tostring(got), want))
  end
end
return function(text)
  local cd, err = stolon.decode(text)
  nil_err('decode', cd, err)
  if cd then
    local m = cd:master()
    stolon.describe(m)
    nil_err('check_healthy', cd:check_healthy(1))
    nil_err('check_healthy', cd:check_healthy(0))
    local r, state, detail = cd:recovered('keeper0')
    if r == nil and (type(state) ~= 'string' or type(detail) ~= 'string') then
      error('recovered: nil without state and detail')
    end
    stolon.describe(r)
    for _, k in ipairs(cd:keepers()) do
      if type(k.host) ~= 'string' then error('keepers: host is not a string') end
    end
    cd:sync_standbys(); cd:async_standbys(); cd:databases(); cd:db_uids()
    cd:min_sync(); cd:sleep_interval()
  end
  local ff, e1 = stolon.with_force_fail(text, 'keeper0')
  nil_err('with_force_fail', ff, e1)
  edited('with_force_fail', text, ff, { 'keepers', 'keeper0', 'status', 'forceFail' }, 'true')
  local si, e2 = stolon.with_sleep_interval(text, '1s')
  nil_err('with_sleep_interval', si, e2)
  edited('with_sleep_interval', text, si, { 'cluster', 'spec', 'sleepInterval' }, '"1s"')
  jsonedit.get(text, { 'proxy', 'spec', 'masterDbUid' })
  jsonedit.get(text, {})
  local v, e3 = jsonedit.set(text, { 'a' }, '[1, {"b": null}]')
  nil_err('jsonedit.set', v, e3)
  edited('jsonedit.set', text, v, { 'a' }, '[1, {"b": null}]')
end
