-- stolon: the model of stolon's clusterdata the commands act on.
--
-- Rules follow the original tool (gocardless/stolon-pgbouncer pkg/stolon) so that a
-- cluster it judged healthy or recovered is judged the same here:
--   master      = dbs[proxy.spec.masterDbUid] (absent or dangling: no master)
--   sync        = master's status.synchronousStandbys (+ status.externalSynchronousStandbys),
--                 a UID missing from dbs counts as an unhealthy standby
--   async       = every other db
--   check_healthy(n): master healthy; healthy sync >= minSynchronousStandbys; and
--                 healthy standbys - minSynchronousStandbys >= n ("can lose n nodes")
--   recovered(old): master moved off the old keeper, is healthy, and has at least
--                 minSynchronousStandbys healthy sync standbys.
-- Where the original was wrong we follow stolon instead:
--   * minSynchronousStandbys absent means stolon's default 1, and only counts when
--     synchronousReplication is on;
--   * the placeholder standby "stolonfakestandby" is never a healthy standby, and
--     recovery is not declared while the new master lists it (stolon#219);
--   * recovery needs the new master promoted: its currentGeneration == generation;
--   * an absent sleepInterval is stolon's default "5s".
local cjson = require "cjson.safe"
local jsonedit = require "jsonedit"

local M = {}

M.FAKE_STANDBY = "stolonfakestandby"

local function list(v)
  if type(v) == "table" then return v end
  return {}
end

local function obj(v)
  if type(v) == "table" then return v end
  return {}
end

-- Stolon writes these as strings and integers; anything else reads as absent.
local function str(v)
  if type(v) == "string" then return v end
  return nil
end

local function int(v)
  return math.tointeger(tonumber(v)) or 0
end

-- key(prefix, cluster_name) -> "stolon/cluster/<name>/clusterdata"
function M.key(prefix, cluster)
  return ("%s/%s/clusterdata"):format(prefix, cluster)
end

-- decode(text [, where]) -> cd | nil, err. cd keeps the decoded document plus .raw.
function M.decode(text, where)
  where = where or "clusterdata"
  if type(text) ~= "string" or text == "" then
    return nil, ("%s: empty value"):format(where)
  end
  local doc, err = cjson.decode(text)
  if type(doc) ~= "table" then
    return nil, ("%s: invalid JSON: %s"):format(where, err or "not an object")
  end
  if type(doc.dbs) ~= "table" and doc.dbs ~= nil and doc.dbs ~= cjson.null then
    return nil, ("%s: dbs is not an object"):format(where)
  end
  local self = setmetatable({ doc = doc, raw = text }, { __index = M })
  return self
end

-- db(cd, uid) -> a flat view of one db, or nil when uid is not in dbs
function M.db(cd, uid)
  local d = obj(cd.doc.dbs)[uid]
  if type(d) ~= "table" then return nil end
  local spec, st = obj(d.spec), obj(d.status)
  return {
    uid = uid,
    generation = int(d.generation),
    current_generation = int(st.currentGeneration),
    keeper = str(spec.keeperUID),
    role = str(spec.role),
    healthy = st.healthy == true,
    host = type(st.listenAddress) == "string" and st.listenAddress or nil,
    port = type(st.port) == "string" and st.port or (st.port and tostring(st.port)) or nil,
    sync = list(st.synchronousStandbys),
    external_sync = list(st.externalSynchronousStandbys),
    spec_external_sync = list(spec.externalSynchronousStandbys),
  }
end

function M.master_uid(cd)
  local uid = obj(obj(cd.doc.proxy).spec).masterDbUid
  if type(uid) ~= "string" or uid == "" then return nil end
  return uid
end

-- master(cd) -> db view | nil (no or dangling masterDbUid)
function M.master(cd)
  local uid = M.master_uid(cd)
  return uid and M.db(cd, uid)
end

local function standby_view(cd, uid)
  local d = uid ~= M.FAKE_STANDBY and M.db(cd, uid)
  return d or { uid = uid, healthy = false, missing = true, sync = {}, external_sync = {} }
end

function M.sync_standbys(cd)
  local m = M.master(cd)
  local out = {}
  if not m then return out end
  for _, uid in ipairs(m.sync) do out[#out + 1] = standby_view(cd, uid) end
  for _, uid in ipairs(m.external_sync) do out[#out + 1] = standby_view(cd, uid) end
  return out
end

function M.async_standbys(cd)
  local m = M.master(cd)
  local sync = {}
  for _, s in ipairs(M.sync_standbys(cd)) do
    if s.keeper then sync[s.keeper] = true end
  end
  local out = {}
  for _, uid in ipairs(M.db_uids(cd)) do
    local d = M.db(cd, uid)
    if not (m and d.keeper == m.keeper) and not sync[d.keeper] then out[#out + 1] = d end
  end
  return out
end

-- db_uids(cd) -> sorted db UIDs
function M.db_uids(cd)
  local uids = {}
  for uid, d in pairs(obj(cd.doc.dbs)) do
    if type(d) == "table" then uids[#uids + 1] = uid end
  end
  table.sort(uids)
  return uids
end

-- databases(cd) -> every db view, sorted by keeper then uid
function M.databases(cd)
  local out = {}
  for _, uid in ipairs(M.db_uids(cd)) do out[#out + 1] = M.db(cd, uid) end
  table.sort(out, function(a, b)
    return (a.keeper or "") .. a.uid < (b.keeper or "") .. b.uid
  end)
  return out
end

M.DEFAULT_SLEEP_INTERVAL = "5s"
M.DEFAULT_MIN_SYNC = 1

function M.min_sync(cd)
  local spec = obj(obj(cd.doc.cluster).spec)
  if spec.synchronousReplication ~= true then return 0 end
  local n = math.tointeger(tonumber(spec.minSynchronousStandbys))
  if not n or n < 0 then return M.DEFAULT_MIN_SYNC end
  return n
end

function M.sleep_interval(cd)
  local v = obj(obj(cd.doc.cluster).spec).sleepInterval
  if type(v) ~= "string" or v == "" then return M.DEFAULT_SLEEP_INTERVAL end
  return v
end

-- check_healthy(cd, tolerate) -> true | nil, reason
function M.check_healthy(cd, tolerate)
  local m = M.master(cd)
  if not m or not m.healthy then return nil, "master unhealthy" end
  local healthy = 0
  for _, s in ipairs(M.sync_standbys(cd)) do
    if s.healthy then healthy = healthy + 1 end
  end
  local min = M.min_sync(cd)
  if healthy < min then return nil, "insufficient standbys" end
  for _, s in ipairs(M.async_standbys(cd)) do
    if s.healthy then healthy = healthy + 1 end
  end
  if healthy - min < (tolerate or 1) then return nil, "insufficient standbys for failure" end
  return true
end

-- recovered(cd, old_keeper) -> master view | nil, state, detail
-- state: "pending" (master not moved), "no_master", "master_unhealthy",
-- "not_promoted", "insufficient_standbys", "fake_standby".
function M.recovered(cd, old_keeper)
  local m = M.master(cd)
  if not m then return nil, "no_master", "no master in clusterdata" end
  if m.keeper == old_keeper then return nil, "pending", "master has not changed nodes" end
  if not m.healthy then return nil, "master_unhealthy", "new master is unhealthy" end
  local healthy = 0
  for _, s in ipairs(M.sync_standbys(cd)) do
    if s.healthy then healthy = healthy + 1 end
  end
  local min = M.min_sync(cd)
  if healthy < min then
    return nil, "insufficient_standbys", ("healthy=%d minimum=%d"):format(healthy, min)
  end
  for _, uid in ipairs(m.spec_external_sync) do
    if uid == M.FAKE_STANDBY then
      return nil, "fake_standby", "new master still lists " .. M.FAKE_STANDBY
    end
  end
  -- The keeper has applied the latest spec (promotion included).
  if m.current_generation ~= m.generation then
    return nil, "not_promoted", ("new master at generation %d, applied %d"):format(m.generation, m.current_generation)
  end
  return m
end

-- switch_began(cd, old) -> how | nil: whether this document, a revision after our
-- forceFail of old (a master view: uid, keeper), shows the manager acting on it:
-- "no_master" (stolon and the
-- stand-in first take masterDbUid away, so proxies close connections),
-- "master_changed" (masterDbUid names another db), "force_fail_consumed" (the
-- keeper's status.forceFail is gone: the sentinel took the mark).
function M.switch_began(cd, old)
  local uid = M.master_uid(cd)
  if not uid then return "no_master" end
  if old and old.uid and uid ~= old.uid then return "master_changed" end
  local k = old and old.keeper and obj(cd.doc.keepers)[old.keeper]
  if type(k) == "table" and obj(k.status).forceFail ~= true then return "force_fail_consumed" end
  return nil
end

-- keepers(cd) -> { {keeper=, host=, port=, db=}, ... } sorted by keeper, one per db
-- with a listen address (the pausers to talk to).
function M.keepers(cd)
  local out = {}
  for _, d in ipairs(M.databases(cd)) do
    if d.keeper and d.host then
      out[#out + 1] = { keeper = d.keeper, host = d.host, port = d.port, db = d.uid, healthy = d.healthy }
    end
  end
  return out
end

-- with_sleep_interval(raw, interval) -> new raw | nil, err (only that field changes)
function M.with_sleep_interval(raw, interval)
  return jsonedit.set(raw, { "cluster", "spec", "sleepInterval" }, jsonedit.string(interval))
end

-- with_force_fail(raw, keeper) -> new raw | nil, err: what `stolonctl failkeeper` does
function M.with_force_fail(raw, keeper)
  if not jsonedit.get(raw, { "keepers", keeper }) then
    return nil, ("keeper %s is not in clusterdata"):format(keeper)
  end
  return jsonedit.set(raw, { "keepers", keeper, "status", "forceFail" }, "true")
end

-- ---- the manager interface ---------------------------------------------------------
-- The four questions the policies ask a cluster manager's model (docs/architecture.md
-- "Managers"; lua/patroni.lua answers the same four). Each is the stolon rule above,
-- renamed: stolon behaviour does not change.
M.NAME = "stolon"

-- primary(cd) -> master view | nil, why: where the primary is.
function M.primary(cd)
  local m = M.master(cd)
  if not m then return nil, "no_master", "no master in clusterdata" end
  return m
end

-- can_lose_primary(cd) -> true | nil, why: check_healthy(cd, 1). Stolon's sentinel
-- chooses the new master itself, so there is no candidate to return.
function M.can_lose_primary(cd)
  return M.check_healthy(cd, 1)
end

-- master_keeper(cd) -> the master's db view, with its keeper | nil, err
function M.master_keeper(cd)
  local master = M.master(cd)
  if not master or not master.keeper then return nil, "could not identify master keeper" end
  return master
end

-- request_switch(old, _, opts) -> revision | nil, err: forceFail on old's keeper
-- through opts.cas(what, edit), the failover's compare-and-swap. Without old, on the
-- master's keeper as the compare-and-swap's own read finds it (no read before it),
-- told to opts.on_master(master, cd) before the write. Task only; yields.
function M.request_switch(old, _, opts)
  return opts.cas("failkeeper", function(raw)
    if old then return M.with_force_fail(raw, old.keeper) end
    local cd, derr = M.decode(raw, opts.key)
    if not cd then return nil, derr end
    local master, merr = M.master_keeper(cd)
    if not master then return nil, merr end
    if opts.on_master then opts.on_master(master, cd) end
    return M.with_force_fail(raw, master.keeper)
  end)
end

-- switch_finished(cd, old) -> master view | nil, state, detail: recovered(cd, old.keeper).
function M.switch_finished(cd, old)
  return M.recovered(cd, old.keeper)
end

function M.describe(d)
  if not d then return "none" end
  return ("%s (%s)"):format(d.keeper or "?", d.host or "?")
end

return M
