-- playground.clusterdata: stolon's clusterdata document (internal/cluster/cluster.go
-- of sorintlab/stolon) as plain Lua tables, for the playground's stand-in sentinel and
-- for tests. Pure Lua, no I/O: every time stamp is passed in by the caller.
--
-- Representation: a decoded document is a Lua table as cjson gives it, with one rule
-- for lists: a JSON null is `clusterdata.null` (cjson.null) and an empty list is an
-- empty table; the encoder knows from stolon's struct layout which fields are lists,
-- maps or structs, so `{}` is written as `[]` where Go would. Fields that Go omits
-- when zero (`omitempty`: false, "", 0, empty list) are left out by the encoder.
--
-- Steps of a planned switchover, each returning a new document (the input is not
-- modified), in the order stolon's sentinel writes them (see
-- tests/fixtures/stolon/README.md):
--   consume_failkeeper(doc, opts) -> no-master document
--   promoted(doc, opts)           -> switched-insufficient-standbys document
--   converged(doc, opts)          -> switched document
local cjson = require "cjson.safe"

local M = {}

M.null = cjson.null
M.FAKE_STANDBY = "stolonfakestandby"

---------------------------------------------------------------------------------------
-- Schema: stolon's structs in field order. Each field: {json name, type, omitempty}.
-- Types: "s" string, "n" number, "b" bool, "t" time string, "d" duration string,
-- "list" list of scalars, {list=T}, {map=T} (keys sorted), or a struct name.
-- Fields not listed here are written after the known ones, keys sorted.
---------------------------------------------------------------------------------------
local O = true -- omitempty
local S = {}

S.ClusterData = {
  {"formatVersion", "n"}, {"changeTime", "t"}, {"cluster", "Cluster"},
  {"keepers", {map = "Keeper"}}, {"dbs", {map = "DB"}}, {"proxy", "Proxy"},
}
S.Cluster = {
  {"uid", "s", O}, {"generation", "n", O}, {"changeTime", "t"},
  {"spec", "ClusterSpec", O}, {"status", "ClusterStatus"},
}
S.ClusterSpec = {
  {"sleepInterval", "d"}, {"requestTimeout", "d"}, {"convergenceTimeout", "d"},
  {"initTimeout", "d"}, {"syncTimeout", "d"}, {"dbWaitReadyTimeout", "d"},
  {"failInterval", "d"}, {"deadKeeperRemovalInterval", "d"},
  {"proxyCheckInterval", "d"}, {"proxyTimeout", "d"},
  {"maxStandbys", "n"}, {"maxStandbysPerSender", "n"}, {"maxStandbyLag", "n"},
  {"synchronousReplication", "b"}, {"minSynchronousStandbys", "n"},
  {"maxSynchronousStandbys", "n"}, {"additionalWalSenders", "n"},
  {"additionalMasterReplicationSlots", "list"}, {"usePgrewind", "b"},
  {"initMode", "s"}, {"mergePgParameters", "b"}, {"role", "s"},
  {"newConfig", nil}, {"pitrConfig", nil}, {"existingConfig", nil},
  {"standbyConfig", nil}, {"defaultSUReplAccessMode", "s"},
  {"pgParameters", {map = "s"}}, {"pgHBA", "list"}, {"automaticPgRestart", "b"},
}
S.ClusterStatus = {{"currentGeneration", "n", O}, {"phase", "s", O}, {"master", "s", O}}
S.Keeper = {
  {"uid", "s", O}, {"generation", "n", O}, {"changeTime", "t"},
  {"spec", "KeeperSpec"}, {"status", "KeeperStatus"},
}
S.KeeperSpec = {}
S.KeeperStatus = {
  {"healthy", "b", O}, {"lastHealthyTime", "t"}, {"bootUUID", "s", O},
  {"postgresBinaryVersion", "PostgresBinaryVersion"}, {"forceFail", "b", O},
  {"canBeMaster", "b"}, {"canBeSynchronousReplica", "b"},
}
S.PostgresBinaryVersion = {{"Maj", "n"}, {"Min", "n"}}
S.DB = {
  {"uid", "s", O}, {"generation", "n", O}, {"changeTime", "t"},
  {"spec", "DBSpec"}, {"status", "DBStatus"},
}
S.DBSpec = {
  {"keeperUID", "s", O}, {"requestTimeout", "d", O}, {"maxStandbys", "n", O},
  {"synchronousReplication", "b", O}, {"usePgrewind", "b", O},
  {"additionalWalSenders", "n"}, {"additionalReplicationSlots", "list"},
  {"initMode", "s", O}, {"newConfig", nil}, {"pitrConfig", nil},
  {"pgParameters", {map = "s"}, O}, {"pgHBA", "list"}, {"suReplAccessMode", "s", O},
  {"role", "s", O}, {"followConfig", "FollowConfig", O}, {"followers", "list"},
  {"synchronousStandbys", "list"}, {"externalSynchronousStandbys", "list"},
}
S.FollowConfig = {
  {"type", "s", O}, {"dbuid", "s", O}, {"standbySettings", nil}, {"archiveRecoverySettings", nil},
}
S.DBStatus = {
  {"healthy", "b", O}, {"currentGeneration", "n", O}, {"listenAddress", "s", O},
  {"port", "s", O}, {"systemdID", "s", O}, {"timelineID", "n", O}, {"xLogPos", "n", O},
  {"timelinesHistory", {list = "TimelineHistory"}, O}, {"pgParameters", {map = "s"}, O},
  {"synchronousStandbys", "list"}, {"olderWalFile", "s", O},
}
S.TimelineHistory = {{"timelineID", "n"}, {"switchPoint", "n"}, {"reason", "s"}}
S.Proxy = {
  {"generation", "n", O}, {"changeTime", "t"}, {"spec", "ProxySpec"}, {"status", "ProxyStatus"},
}
S.ProxySpec = {{"masterDbUid", "s", O}, {"enabledProxies", "list"}}
S.ProxyStatus = {}

---------------------------------------------------------------------------------------
-- Ordered JSON encoder (Go's encoding/json output: compact, struct order, sorted maps,
-- HTML-safe escaping).
---------------------------------------------------------------------------------------
local escapes = {
  ['"'] = '\\"', ["\\"] = "\\\\", ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t",
  ["<"] = "\\u003c", [">"] = "\\u003e", ["&"] = "\\u0026",
}

local function encode_string(s)
  return '"' .. s:gsub('[%c"\\<>&]', function(c)
    return escapes[c] or string.format("\\u%04x", c:byte())
  end) .. '"'
end

local function encode_number(n)
  local i = math.tointeger(n)
  if i then return tostring(i) end
  if n ~= n or n == math.huge or n == -math.huge then
    error("clusterdata.encode: cannot encode " .. tostring(n))
  end
  return string.format("%.17g", n)
end

local function is_zero(v)
  if v == nil or v == false or v == "" or v == 0 or v == M.null then return true end
  return type(v) == "table" and next(v) == nil
end

local function sorted_keys(t)
  local ks = {}
  for k in pairs(t) do ks[#ks + 1] = k end
  table.sort(ks, function(a, b) return tostring(a) < tostring(b) end)
  return ks
end

local function is_sequence(t)
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  return n > 0 and n == #t
end

local encode_value

local function encode_struct(v, fields, out)
  out[#out + 1] = "{"
  local first, known = true, {}
  local function field(k, val, ty)
    if not first then out[#out + 1] = "," end
    first = false
    out[#out + 1] = encode_string(k)
    out[#out + 1] = ":"
    encode_value(val, ty, out)
  end
  for _, f in ipairs(fields) do
    local k, ty, omit = f[1], f[2], f[3]
    known[k] = true
    local val = v[k]
    if val ~= nil and not (omit and is_zero(val)) then field(k, val, ty) end
  end
  for _, k in ipairs(sorted_keys(v)) do
    if not known[k] then field(tostring(k), v[k], nil) end
  end
  out[#out + 1] = "}"
end

-- ty: nil (generic), scalar code, "list", {list=T}, {map=T} or a struct name.
encode_value = function(v, ty, out)
  local tv = type(v)
  if v == M.null or v == nil then
    out[#out + 1] = "null"
  elseif tv == "string" then
    out[#out + 1] = encode_string(v)
  elseif tv == "number" then
    out[#out + 1] = encode_number(v)
  elseif tv == "boolean" then
    out[#out + 1] = v and "true" or "false"
  elseif tv ~= "table" then
    error("clusterdata.encode: cannot encode a " .. tv)
  elseif type(ty) == "string" and S[ty] then
    encode_struct(v, S[ty], out)
  elseif ty == "list" or (type(ty) == "table" and ty.list) or (ty == nil and is_sequence(v)) then
    local elt = type(ty) == "table" and ty.list or nil
    out[#out + 1] = "["
    for i = 1, #v do
      if i > 1 then out[#out + 1] = "," end
      encode_value(v[i], elt, out)
    end
    out[#out + 1] = "]"
  else
    local elt = type(ty) == "table" and ty.map or nil
    out[#out + 1] = "{"
    for i, k in ipairs(sorted_keys(v)) do
      if i > 1 then out[#out + 1] = "," end
      out[#out + 1] = encode_string(tostring(k))
      out[#out + 1] = ":"
      encode_value(v[k], elt, out)
    end
    out[#out + 1] = "}"
  end
end

-- clusterdata.encode(doc) -> compact JSON text, keys in stolon's (Go's) order.
-- Raises on values JSON cannot carry (functions, NaN).
function M.encode(doc)
  if type(doc) ~= "table" then error("clusterdata.encode: document must be a table", 2) end
  local out = {}
  encode_value(doc, "ClusterData", out)
  return table.concat(out)
end

-- clusterdata.decode(text) -> doc | nil, err. Accepts compact or pretty-printed JSON.
function M.decode(text)
  if type(text) ~= "string" then return nil, "clusterdata.decode: text must be a string" end
  local doc, err = cjson.decode(text)
  if doc == nil then return nil, "clusterdata.decode: " .. tostring(err) end
  if type(doc) ~= "table" or doc[1] ~= nil then
    return nil, "clusterdata.decode: not a JSON object"
  end
  return doc
end

---------------------------------------------------------------------------------------
-- Go durations and RFC3339Nano times.
---------------------------------------------------------------------------------------
-- Go durations: the project's one parser and formatter (lua/duration.lua).
local duration = require "duration"
M.parse_duration = duration.parse
M.format_duration = duration.format

-- clusterdata.format_time(epoch_seconds [, nanos]) -> "2024-05-14T10:00:05.538120655Z".
-- epoch_seconds may carry a fraction; nanos (0..999999999) overrides it.
function M.format_time(epoch, nanos)
  local whole = math.floor(epoch)
  nanos = nanos or math.floor((epoch - whole) * 1e9 + 0.5)
  if nanos >= 1000000000 then whole, nanos = whole + 1, nanos - 1000000000 end
  local frac = ""
  if nanos > 0 then frac = ("." .. string.format("%09d", nanos)):gsub("0+$", "") end
  return os.date("!%Y-%m-%dT%H:%M:%S", whole) .. frac .. "Z"
end

---------------------------------------------------------------------------------------
-- Helpers over documents.
---------------------------------------------------------------------------------------
local function deepcopy(v)
  if type(v) ~= "table" then return v end
  local t = {}
  for k, x in pairs(v) do t[k] = deepcopy(x) end
  return t
end
M.copy = deepcopy

-- The db whose spec.keeperUID is keeper_uid (uid, db) or nil.
function M.keeper_db(doc, keeper_uid)
  for _, uid in ipairs(sorted_keys(doc.dbs or {})) do
    local db = doc.dbs[uid]
    if db.spec and db.spec.keeperUID == keeper_uid then return uid, db end
  end
  return nil
end

-- The master db per cluster.status.master (uid, db) or nil.
function M.master_db(doc)
  local uid = doc.cluster and doc.cluster.status and doc.cluster.status.master
  if uid and doc.dbs and doc.dbs[uid] then return uid, doc.dbs[uid] end
  return nil
end

-- The keeper marked with status.forceFail, or nil.
function M.failed_keeper(doc)
  for _, uid in ipairs(sorted_keys(doc.keepers or {})) do
    local k = doc.keepers[uid]
    if k.status and k.status.forceFail then return uid, k end
  end
  return nil
end

-- cluster.spec.sleepInterval / failInterval in seconds (defaults as stolon's: 5s, 20s).
function M.sleep_interval(doc)
  local spec = doc.cluster and doc.cluster.spec or {}
  return M.parse_duration(spec.sleepInterval or "5s") or 5
end

function M.fail_interval(doc)
  local spec = doc.cluster and doc.cluster.spec or {}
  return M.parse_duration(spec.failInterval or "20s") or 20
end

local function list(t) return t == nil and M.null or t end

-- Encoded form of an object without its changeTime, to tell whether it changed.
local function fingerprint(v, ty)
  if v == nil then return "" end
  local c = deepcopy(v)
  c.changeTime = nil
  local out = {}
  encode_value(c, ty, out)
  return table.concat(out)
end

-- Set changeTime = now on every object of doc that differs from prev (stolon stamps
-- an object when it changes), and on the document itself.
local function stamp(prev, doc, now)
  doc.changeTime = now
  if fingerprint(prev.cluster, "Cluster") ~= fingerprint(doc.cluster, "Cluster") then
    doc.cluster.changeTime = now
  end
  if fingerprint(prev.proxy, "Proxy") ~= fingerprint(doc.proxy, "Proxy") then
    doc.proxy.changeTime = now
  end
  for kind, ty in pairs{keepers = "Keeper", dbs = "DB"} do
    for uid, obj in pairs(doc[kind] or {}) do
      local old = prev[kind] and prev[kind][uid]
      if fingerprint(old, ty) ~= fingerprint(obj, ty) then obj.changeTime = now end
    end
  end
  return doc
end
M.stamp = stamp

local function now_of(opts)
  return opts and opts.now or M.format_time(os.time())
end

local function sorted(t)
  table.sort(t)
  return t
end

-- Standby followers of master_uid, sorted (stolon keeps followers sorted).
local function followers_of(doc, master_uid)
  local f = {}
  for uid, db in pairs(doc.dbs) do
    if uid ~= master_uid and db.spec.followConfig and db.spec.followConfig.dbuid == master_uid then
      f[#f + 1] = uid
    end
  end
  return sorted(f)
end

---------------------------------------------------------------------------------------
-- Building a document.
---------------------------------------------------------------------------------------
local DEFAULT_PG_PARAMETERS = {
  datestyle = "iso, mdy",
  default_text_search_config = "pg_catalog.english",
  dynamic_shared_memory_type = "posix",
  lc_messages = "C.UTF-8",
  lc_monetary = "C.UTF-8",
  lc_numeric = "C.UTF-8",
  lc_time = "C.UTF-8",
  log_timezone = "Etc/UTC",
  max_connections = "100",
  max_wal_size = "1GB",
  min_wal_size = "80MB",
  shared_buffers = "128MB",
  timezone = "Etc/UTC",
}

local function db_spec(doc, keeper_uid, role, follow)
  local cs = doc.cluster.spec
  return {
    keeperUID = keeper_uid,
    requestTimeout = cs.requestTimeout,
    maxStandbys = 20,
    usePgrewind = cs.usePgrewind,
    additionalWalSenders = 5,
    additionalReplicationSlots = M.null,
    initMode = "none",
    pgParameters = deepcopy(cs.pgParameters),
    pgHBA = M.null,
    role = role,
    followConfig = follow and {type = "internal", dbuid = follow} or nil,
    followers = {},
    synchronousStandbys = M.null,
    externalSynchronousStandbys = M.null,
  }
end

-- Deterministic 8-hex-digit uid derived from a seed string (stolon uses random uids;
-- tests want stable ones). Callers may pass their own uid instead.
function M.uid(seed)
  local h = 2166136261
  for i = 1, #seed do h = ((h ~ seed:byte(i)) * 16777619) & 0xffffffff end
  return string.format("%08x", h)
end

-- clusterdata.new{cluster_uid=, keepers={{uid=, host=, port=, db_uid=}, ...},
--   master="keeper0", sync={"keeper1"}, sleep_interval="5s", request_timeout="10s",
--   fail_interval="20s", proxies={...}, pg_parameters={...}, pg_version={Maj=, Min=},
--   now=RFC3339 time, system_id="..."} -> the healthy document (healthy.json's shape).
function M.new(o)
  assert(type(o) == "table" and type(o.keepers) == "table", "clusterdata.new: keepers required")
  local now = now_of(o)
  local master = o.master or o.keepers[1].uid
  local sync = {}
  for _, k in ipairs(o.sync or {}) do sync[k] = true end
  local doc = {
    formatVersion = 1,
    changeTime = now,
    cluster = {
      uid = o.cluster_uid or M.uid("cluster" .. now),
      generation = 1,
      changeTime = now,
      spec = {
        sleepInterval = o.sleep_interval or "5s",
        requestTimeout = o.request_timeout or "10s",
        failInterval = o.fail_interval or "20s",
        synchronousReplication = next(sync) ~= nil,
        minSynchronousStandbys = next(sync) and 1 or nil,
        maxSynchronousStandbys = next(sync) and 1 or nil,
        additionalWalSenders = M.null,
        additionalMasterReplicationSlots = M.null,
        usePgrewind = true,
        initMode = "new",
        pgParameters = deepcopy(o.pg_parameters or DEFAULT_PG_PARAMETERS),
        pgHBA = M.null,
        automaticPgRestart = M.null,
      },
      status = {phase = "normal"},
    },
    keepers = {},
    dbs = {},
    proxy = {
      generation = 1,
      changeTime = now,
      spec = {enabledProxies = deepcopy(o.proxies or {})},
      status = {},
    },
  }
  local master_db
  for _, k in ipairs(o.keepers) do
    if k.uid == master then master_db = k.db_uid or M.uid("db" .. k.uid) end
  end
  assert(master_db, "clusterdata.new: master keeper not among keepers")
  local sync_dbs = {}
  for _, k in ipairs(o.keepers) do
    local db_uid = k.db_uid or M.uid("db" .. k.uid)
    doc.keepers[k.uid] = {
      uid = k.uid, generation = 1, changeTime = now, spec = {},
      status = {
        healthy = true, lastHealthyTime = now,
        bootUUID = k.boot_uuid,
        postgresBinaryVersion = deepcopy(o.pg_version or {Maj = 15, Min = 0}),
        canBeMaster = true, canBeSynchronousReplica = true,
      },
    }
    local is_master = k.uid == master
    local spec = db_spec(doc, k.uid, is_master and "master" or "standby",
                         not is_master and master_db or nil)
    if sync[k.uid] then sync_dbs[#sync_dbs + 1] = db_uid end
    doc.dbs[db_uid] = {
      uid = db_uid, generation = is_master and 4 or 2, changeTime = now, spec = spec,
      status = {
        healthy = true, currentGeneration = is_master and 4 or 2,
        listenAddress = k.host, port = tostring(k.port or 5432),
        systemdID = o.system_id, timelineID = 1, xLogPos = k.xlogpos,
        pgParameters = deepcopy(spec.pgParameters), synchronousStandbys = M.null,
      },
    }
  end
  local mdb = doc.dbs[master_db]
  sorted(sync_dbs)
  mdb.spec.synchronousReplication = #sync_dbs > 0 or nil
  mdb.spec.followers = followers_of(doc, master_db)
  mdb.spec.synchronousStandbys = sync_dbs
  mdb.spec.externalSynchronousStandbys = {}
  mdb.status.synchronousStandbys = deepcopy(sync_dbs)
  doc.cluster.status.master = master_db
  doc.proxy.spec.masterDbUid = master_db
  return doc
end

---------------------------------------------------------------------------------------
-- Status reports from the nodes (what stolon's keepers would publish).
---------------------------------------------------------------------------------------

-- clusterdata.update_status(doc, reports, opts) -> new doc.
-- reports[keeper_uid] = {healthy=bool, seen=bool (default true), db={listenAddress=, port=, systemdID=,
--   timelineID=, xLogPos=, timelinesHistory=, synchronousStandbys=, olderWalFile=}}.
-- A healthy keeper gets healthy=true and lastHealthyTime=now; an unhealthy one loses
-- healthy (lastHealthyTime frozen). A db whose spec is applied (initMode "none") takes
-- the reported status fields; an unhealthy keeper's db loses healthy and keeps stale
-- values. Keepers absent from reports are left alone. opts.now: time string.
function M.update_status(doc, reports, opts)
  local now = now_of(opts)
  local new = deepcopy(doc)
  for kuid, r in pairs(reports or {}) do
    local k = new.keepers[kuid]
    if k then
      local _, db = M.keeper_db(new, kuid)
      if r.healthy then
        k.status.healthy = true
        -- lastHealthyTime moves only when the keeper really reported (seen); within
        -- failInterval a silent keeper stays healthy with a frozen time
        if r.seen ~= false then k.status.lastHealthyTime = now end
      else
        k.status.healthy = nil
      end
      if db then
        if r.healthy and r.db and db.spec.initMode ~= "resync" then
          db.status.healthy = true
          for f, v in pairs(r.db) do db.status[f] = deepcopy(v) end
          db.status.pgParameters = db.status.pgParameters or deepcopy(db.spec.pgParameters)
        elseif not r.healthy then
          db.status.healthy = nil
        end
      end
    end
  end
  return stamp(doc, new, now)
end

---------------------------------------------------------------------------------------
-- The switchover steps.
---------------------------------------------------------------------------------------

-- clusterdata.consume_failkeeper(doc, opts) -> no-master doc, info | nil, err.
-- The keeper marked forceFail loses the mark and its health; its master db becomes
-- unhealthy with no followers; the healthy synchronous standby (opts.new_master may
-- name its db uid) becomes the master in spec (generation + 1, not yet promoted:
-- currentGeneration unchanged) with the old master as its synchronous standby;
-- cluster.status.master names it; proxy.spec.masterDbUid goes away (proxies close
-- connections) and proxy.generation + 1.
-- info = {failed_keeper=, old_master=, new_master=}.
function M.consume_failkeeper(doc, opts)
  opts = opts or {}
  local now = now_of(opts)
  local fk = M.failed_keeper(doc)
  if not fk then return nil, "no keeper is marked forceFail" end
  local old_uid, old_db = M.master_db(doc)
  if not old_uid then return nil, "cluster has no master db" end
  if old_db.spec.keeperUID ~= fk then
    -- stolon only switches when the failed keeper holds the master; for a standby it
    -- just drops the mark and the keeper's health.
    local new = deepcopy(doc)
    new.keepers[fk].status.forceFail = nil
    new.keepers[fk].status.healthy = nil
    return stamp(doc, new, now), {failed_keeper = fk}
  end
  local new_uid = opts.new_master
  if not new_uid then
    for _, uid in ipairs(old_db.spec.synchronousStandbys ~= M.null and old_db.spec.synchronousStandbys or {}) do
      local db = doc.dbs[uid]
      local keeper = db and doc.keepers[db.spec.keeperUID]
      if db and db.status.healthy and keeper and keeper.status.healthy then
        new_uid = uid
        break
      end
    end
  end
  if not new_uid or not doc.dbs[new_uid] then
    return nil, "no healthy synchronous standby to promote"
  end
  local new = deepcopy(doc)
  local ks = new.keepers[fk].status
  ks.forceFail = nil
  ks.healthy = nil
  local od = new.dbs[old_uid]
  od.generation = (od.generation or 0) + 1
  od.spec.followers = {}
  od.status.healthy = nil
  local nd = new.dbs[new_uid]
  nd.generation = (nd.generation or 0) + 1
  nd.spec.synchronousReplication = true
  nd.spec.role = "master"
  nd.spec.followConfig = nil
  nd.spec.synchronousStandbys = {old_uid}
  nd.spec.externalSynchronousStandbys = {}
  new.cluster.status.master = new_uid
  new.proxy.generation = (new.proxy.generation or 0) + 1
  new.proxy.spec.masterDbUid = nil
  return stamp(doc, new, now), {failed_keeper = fk, old_master = old_uid, new_master = new_uid}
end

-- clusterdata.promoted(doc, opts) -> switched-insufficient-standbys doc, info | nil, err.
-- The new master has been promoted (currentGeneration = its generation, generation +1,
-- timeline opts.timeline or +1, timelinesHistory gets {old timeline, opts.switch_point,
-- "no recovery target specified"}); its spec has no synchronous standby yet and the
-- placeholder "stolonfakestandby" as external one. The old master db is replaced by a
-- new db for the same keeper (uid opts.new_db_uid, initMode "resync", empty status);
-- the other standbys follow the new master (generation + 1, not applied yet).
-- proxy.spec.masterDbUid = new master, proxy.generation + 1. Every keeper healthy
-- unless opts.unhealthy[keeper_uid]. info = {new_master=, old_master=, new_db=}.
function M.promoted(doc, opts)
  opts = opts or {}
  local now = now_of(opts)
  local new_uid, nd0 = M.master_db(doc)
  if not new_uid or nd0.spec.role ~= "master" then return nil, "no elected master" end
  local old_uid
  for uid, db in pairs(doc.dbs) do
    if uid ~= new_uid and db.spec.role == "master" then old_uid = uid end
  end
  if not old_uid then return nil, "no old master db to replace" end
  local new = deepcopy(doc)
  local old_keeper = new.dbs[old_uid].spec.keeperUID
  local new_db_uid = opts.new_db_uid or M.uid(old_uid .. now)
  local nd = new.dbs[new_uid]
  local old_tl = nd.status.timelineID or 1
  nd.status.currentGeneration = nd.generation
  nd.generation = nd.generation + 1
  nd.status.timelineID = opts.timeline or old_tl + 1
  if opts.xlogpos then nd.status.xLogPos = opts.xlogpos end
  local hist = nd.status.timelinesHistory
  hist = (type(hist) == "table") and hist or {}
  hist[#hist + 1] = {
    timelineID = old_tl,
    switchPoint = opts.switch_point or nd.status.xLogPos or 0,
    reason = "no recovery target specified",
  }
  nd.status.timelinesHistory = hist
  nd.spec.synchronousStandbys = {}
  nd.spec.externalSynchronousStandbys = {M.FAKE_STANDBY}
  nd.status.synchronousStandbys = {}
  new.dbs[old_uid] = nil
  new.dbs[new_db_uid] = {
    uid = new_db_uid, generation = 1, changeTime = now,
    spec = db_spec(new, old_keeper, "standby", new_uid),
    status = {synchronousStandbys = M.null},
  }
  new.dbs[new_db_uid].spec.initMode = "resync"
  new.dbs[new_db_uid].spec.pgParameters = deepcopy(nd.spec.pgParameters)
  new.dbs[new_db_uid].spec.requestTimeout = nd.spec.requestTimeout
  new.dbs[new_db_uid].spec.usePgrewind = nd.spec.usePgrewind
  for uid, db in pairs(new.dbs) do
    if uid ~= new_uid and uid ~= new_db_uid and db.spec.followConfig
        and db.spec.followConfig.dbuid == old_uid then
      db.spec.followConfig.dbuid = new_uid
      db.generation = db.generation + 1
    end
  end
  nd.spec.followers = followers_of(new, new_uid)
  local unhealthy = opts.unhealthy or {}
  for kuid, k in pairs(new.keepers) do
    if not unhealthy[kuid] and not k.status.healthy then
      k.status.healthy = true
      k.status.lastHealthyTime = now
    end
  end
  new.proxy.generation = (new.proxy.generation or 0) + 1
  new.proxy.spec.masterDbUid = new_uid
  return stamp(doc, new, now), {new_master = new_uid, old_master = old_uid, new_db = new_db_uid}
end

-- clusterdata.converged(doc, opts) -> switched doc, info | nil, err.
-- Every db has applied its spec (currentGeneration = generation, resynced db gets
-- initMode "none", generation + 1); the synchronous standby (opts.sync: a db uid;
-- default: the first healthy follower that was not just resynced) is in the master's
-- spec and status synchronousStandbys, the fake standby is gone, master generation
-- + 1 and applied. opts.db_status[db_uid] = status fields reported by the nodes
-- (listenAddress, port, timelineID, xLogPos, ...), merged in.
function M.converged(doc, opts)
  opts = opts or {}
  local now = now_of(opts)
  local muid, md0 = M.master_db(doc)
  if not muid or md0.spec.role ~= "master" then return nil, "no master" end
  local new = deepcopy(doc)
  local md = new.dbs[muid]
  local sync = opts.sync
  if not sync then
    for _, uid in ipairs(md.spec.followers) do
      local db = new.dbs[uid]
      if db.spec.initMode ~= "resync" and db.status.healthy then sync = uid break end
    end
    sync = sync or md.spec.followers[1]
  end
  if not sync then return nil, "master has no standby to make synchronous" end
  local tl = md.status.timelineID
  for uid, db in pairs(new.dbs) do
    if uid ~= muid then
      if db.spec.initMode == "resync" then
        db.spec.initMode = "none"
        db.generation = db.generation + 1
        db.status.healthy = true
        db.status.pgParameters = deepcopy(db.spec.pgParameters)
        db.status.systemdID = md.status.systemdID
        db.status.timelinesHistory = deepcopy(md.status.timelinesHistory)
      end
      db.status.currentGeneration = db.generation
      db.status.timelineID = tl
    end
    for f, v in pairs((opts.db_status or {})[uid] or {}) do db.status[f] = deepcopy(v) end
  end
  md.generation = md.generation + 1
  md.status.currentGeneration = md.generation
  md.spec.synchronousStandbys = {sync}
  md.spec.externalSynchronousStandbys = {}
  md.status.synchronousStandbys = {sync}
  return stamp(doc, new, now), {master = muid, sync = sync}
end

-- Address of a db from its status: host, port (strings) or nil.
function M.db_address(doc, db_uid)
  local db = doc.dbs and doc.dbs[db_uid]
  if not db or not db.status.listenAddress then return nil end
  return db.status.listenAddress, db.status.port
end

M.list = list
M.schema = S
return M
