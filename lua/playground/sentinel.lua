-- playground.sentinel: the playground's stand-in for stolon's sentinel (and keepers).
-- Keeps stolon's clusterdata at stolon/cluster/<name>/clusterdata up to date from the
-- real PostgreSQL nodes (playground.pgnode), on ticks of cluster.spec.sleepInterval
-- read from the current document, and performs a master switch on real Postgres when
-- a keeper is marked status.forceFail, writing stolon's intermediate documents in
-- stolon's order with compare-and-swap on the key's mod_revision:
--   tick N    consume the mark: no-master document (masterDbUid absent)
--   tick N+1  stop the old master, promote the sync standby (synchronous_standby_names
--             = the fake standby), re-point the other standbys:
--             switched-insufficient-standbys (masterDbUid = new master,
--             externalSynchronousStandbys ["stolonfakestandby"])
--   tick N+2  pg_rewind the old master into a standby of the new one, make the other
--             standby synchronous; once pg_stat_replication says 'sync': converged.
-- See docs/playground.md for what it does not do compared with stolon.
local cd = require "playground.clusterdata"
local pgnode = require "playground.pgnode"
local task = require "task"
local proc = require "proc"
local has_log, log = pcall(require, "log")
if not has_log then log = nil end

local M = {}

local function say(level, fields)
  if log and log[level] then log[level](fields) end
end

---------------------------------------------------------------------------------------
-- Stores: get(key) -> value|nil, mod_revision (0 when absent) | nil, err
--         cas(key, value, mod_revision) -> true | false (lost the race) | nil, err
---------------------------------------------------------------------------------------
local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

local function b64encode(s)
  return ((s:gsub(".", function(c)
    local b, r = c:byte(), ""
    for i = 8, 1, -1 do r = r .. ((b >> (i - 1)) & 1) end
    return r
  end) .. "0000"):gsub("%d%d%d?%d?%d?%d?", function(x)
    if #x < 6 then return "" end
    local n = tonumber(x, 2)
    return B64:sub(n + 1, n + 1)
  end) .. ({"", "==", "="})[#s % 3 + 1])
end

local function b64decode(s)
  s = s:gsub("[^%w%+/=]", "")
  return (s:gsub(".", function(c)
    if c == "=" then return "" end
    local n, r = B64:find(c, 1, true) - 1, ""
    for i = 6, 1, -1 do r = r .. ((n >> (i - 1)) & 1) end
    return r
  end):gsub("%d%d%d?%d?%d?%d?%d?%d?", function(x)
    if #x ~= 8 then return "" end
    return string.char(tonumber(x, 2))
  end))
end
M.b64encode, M.b64decode = b64encode, b64decode

-- A store on etcd's v3 JSON gateway through curl (no etcd client module needed).
-- endpoint: "http://127.0.0.1:2379" (loopback only).
function M.http_store(endpoint)
  local cjson = require "cjson.safe"
  local function post(path, body)
    local code, out, err = proc.run{"curl", "-sS", "--max-time", "5", "-X", "POST",
                                    "-H", "Content-Type: application/json",
                                    "--data-binary", "@-", endpoint .. path,
                                    stdin = cjson.encode(body), timeout = 10}
    if code ~= 0 then return nil, "etcd " .. path .. ": " .. tostring(err ~= "" and err or out) end
    local res = cjson.decode(out)
    if type(res) ~= "table" then return nil, "etcd " .. path .. ": bad reply " .. out end
    if res.error or res.message and not res.header then
      return nil, "etcd " .. path .. ": " .. tostring(res.message or res.error)
    end
    return res
  end
  local store = {}
  function store.get(_, key)
    local res, err = post("/v3/kv/range", {key = b64encode(key)})
    if not res then return nil, err end
    local kv = res.kvs and res.kvs[1]
    if not kv then return false, 0 end
    return b64decode(kv.value or ""), tonumber(kv.mod_revision)
  end
  function store.cas(_, key, value, mod_revision)
    local res, err = post("/v3/kv/txn", {
      compare = {{key = b64encode(key), target = "MOD", result = "EQUAL",
                  mod_revision = tostring(mod_revision or 0)}},
      success = {{request_put = {key = b64encode(key), value = b64encode(value)}}},
    })
    if not res then return nil, err end
    return res.succeeded == true
  end
  function store.put(_, key, value)
    local res, err = post("/v3/kv/put", {key = b64encode(key), value = b64encode(value)})
    if not res then return nil, err end
    return true
  end
  return store
end

-- A store on the `etcd` module's client (DESIGN.md API): c:get(key) and c:txn{...}.
-- The reply shapes accepted here are the documented ones; adjust in this one place
-- if the module settles on others.
function M.etcd_store(client)
  local store = {}
  function store.get(_, key)
    local res, err = client:get(key)
    if res == nil and err then return nil, err end
    local kv = res
    if type(res) == "table" then kv = res.kvs and res.kvs[1] or res[1] or (res.value and res) end
    if type(kv) ~= "table" or kv.value == nil then return false, 0 end
    return kv.value, tonumber(kv.mod_revision or kv.modRevision)
  end
  function store.cas(_, key, value, mod_revision)
    local res, err = client:txn{
      compare = {{key = key, target = "mod", result = "==", value = mod_revision or 0}},
      success = {{put = {key = key, value = value}}},
      failure = {},
    }
    if res == nil then return nil, err end
    if type(res) == "table" then return res.succeeded == true end
    return res == true
  end
  return store
end

---------------------------------------------------------------------------------------
-- State.
---------------------------------------------------------------------------------------
function M.key(cluster_name)
  return "stolon/cluster/" .. cluster_name .. "/clusterdata"
end

-- sentinel.new{store= | etcd=, cluster_name=, nodes={node...} (node.name = keeper uid,
--   node.app_name = db uid), cluster_uid=, proxies={...}, sleep_interval="5s",
--   fail_interval="20s", request_timeout="10s", init=true, promote_delay=0} -> state.
-- promote_delay (seconds): a slow promotion: after the no-master document the
-- switch waits this long (ticking, writing status) before it promotes.
-- With init (default) a missing clusterdata is created from the nodes' real roles.
function M.new(o)
  assert(type(o) == "table", "sentinel.new: options table expected")
  local store = o.store or (o.etcd and M.etcd_store(o.etcd))
  assert(store, "sentinel.new: store or etcd required")
  assert(o.cluster_name, "sentinel.new: cluster_name required")
  local nodes = {}
  for k, n in pairs(o.nodes or {}) do nodes[type(k) == "string" and k or n.name] = n end
  assert(next(nodes), "sentinel.new: nodes required")
  return {
    store = store, key = M.key(o.cluster_name), nodes = nodes, opts = o,
    init = o.init ~= false, epoch0 = os.time(), mono0 = task.now(),
    last_ok = {}, down = {}, phase = "normal", switch = nil, ticks = 0,
    history = {}, times = {},
  }
end

local function now_seconds(state)
  return state.epoch0 + (task.now() - state.mono0)
end

local function now_string(state)
  return cd.format_time(now_seconds(state))
end

local function sorted_keys(t)
  local ks = {}
  for k in pairs(t) do ks[#ks + 1] = k end
  table.sort(ks)
  return ks
end

-- Status of every node as stolon keepers would report it.
local function collect(state, doc)
  local now = task.now()
  local fail = doc and cd.fail_interval(doc) or 20
  local reports, statuses = {}, {}
  local uids = sorted_keys(state.nodes)
  -- every node at once, as stolon's keepers each report their own: the check takes
  -- as long as the slowest node, not the sum
  local fns = {}
  for i, uid in ipairs(uids) do
    fns[i] = function()
      if state.down[uid] then return {healthy = false, error = "stopped by the sentinel"} end
      return pgnode.status(state.nodes[uid])
    end
  end
  local results = task.all(fns)
  for i, uid in ipairs(uids) do
    local node = state.nodes[uid]
    local st = results[i][1] or {healthy = false, error = tostring(results[i].error)}
    statuses[uid] = st
    if st.healthy then state.last_ok[uid] = now end
    state.last_ok[uid] = state.last_ok[uid] or now
    local r = {healthy = st.healthy or state.down[uid] or (now - state.last_ok[uid]) < fail,
               seen = st.healthy or state.down[uid] or false}
    if st.healthy then
      r.db = {
        listenAddress = node.host, port = tostring(node.port), systemdID = st.system_id,
        timelineID = st.timeline, xLogPos = st.xlogpos,
      }
      if not st.in_recovery then
        local sync = {}
        for _, rep in ipairs(st.replication) do
          if rep.sync_state == "sync" and rep.state == "streaming" then sync[#sync + 1] = rep.application_name end
        end
        table.sort(sync)
        r.db.synchronousStandbys = sync
      end
    elseif not r.healthy then
      r.db = nil
    end
    reports[uid] = r
  end
  return reports, statuses
end

local function read_doc(state)
  local text, rev = state.store:get(state.key)
  if text == nil then return nil, rev end
  if text == false then return false, 0 end
  local doc, err = cd.decode(text)
  if not doc then return nil, err end
  return doc, rev
end

-- record_tick(state, what): the times of the tick that just wrote (or lost its
-- compare-and-swap), kept in state.times (the newest 50) for benchmarks: read (the
-- read of clusterdata starts), read_done, collected (the keepers' status taken),
-- written (the compare-and-swap answered), what.
local function record_tick(state, what)
  local t = state.pending_times
  if not t then return end
  state.pending_times = nil
  t.written, t.what = task.now(), what
  state.times[#state.times + 1] = t
  if #state.times > 50 then table.remove(state.times, 1) end
end

local function write_doc(state, doc, rev, what)
  local ok, err = state.store:cas(state.key, cd.encode(doc), rev)
  record_tick(state, ok == false and "conflict" or what)
  if ok == nil then return nil, err end
  if ok == false then
    say("info", {event = "sentinel.conflict", msg = "clusterdata changed under us; retry next tick", step = what})
    return false
  end
  state.history[#state.history + 1] = what
  if #state.history > 50 then table.remove(state.history, 1) end
  return true
end

-- The initial document from the nodes' real roles.
local function initial_doc(state, statuses)
  local o = state.opts
  local keepers, master, sync = {}, nil, {}
  local by_app = {}
  for _, uid in ipairs(sorted_keys(state.nodes)) do
    local n = state.nodes[uid]
    keepers[#keepers + 1] = {uid = uid, host = n.host, port = n.port, db_uid = n.app_name,
                             xlogpos = statuses[uid].xlogpos}
    by_app[n.app_name] = uid
    if statuses[uid].healthy and not statuses[uid].in_recovery then master = uid end
  end
  if not master then return nil, "no primary among the nodes" end
  for _, rep in ipairs(statuses[master].replication) do
    if rep.sync_state == "sync" and by_app[rep.application_name] then
      sync[#sync + 1] = by_app[rep.application_name]
    end
  end
  return cd.new{
    cluster_uid = o.cluster_uid, keepers = keepers, master = master, sync = sync,
    sleep_interval = o.sleep_interval, fail_interval = o.fail_interval,
    request_timeout = o.request_timeout, proxies = o.proxies,
    pg_version = {Maj = 15, Min = 0}, system_id = statuses[master].system_id,
    now = now_string(state),
  }
end

local function node_of_db(state, doc, db_uid)
  local db = doc.dbs[db_uid]
  return db and state.nodes[db.spec.keeperUID], db and db.spec.keeperUID
end

---------------------------------------------------------------------------------------
-- The switch, one step per tick.
---------------------------------------------------------------------------------------

-- Point every other standby at the new master. A node that does not answer is left
-- for a later tick (stolon's keeper would do it when it comes back): a dead async
-- standby must not block the switch.
local function repoint_others(state, sw, new)
  for _, uid in ipairs(sorted_keys(state.nodes)) do
    if uid ~= sw.new_keeper and uid ~= sw.failed_keeper and not sw.repointed[uid] then
      local ok, err = pgnode.repoint(state.nodes[uid], new, 15)
      if ok then
        sw.repointed[uid] = true
      else
        say("warn", {event = "sentinel.repoint_failed", msg = tostring(err), keeper = uid})
      end
    end
  end
end

-- On the new master, drop the inactive slots no other node streams through (stolon's
-- keeper drops the slots of standbys that are gone); the old master gets a new one
-- when it is rewound.
local function drop_stale_slots(state, sw, new)
  local keep = {}
  for uid, n in pairs(state.nodes) do
    if uid ~= sw.failed_keeper and uid ~= sw.new_keeper and n.slot then keep[#keep + 1] = n.slot end
  end
  local dropped, err = pgnode.drop_stale_slots(new, keep)
  if not dropped then
    say("warn", {event = "sentinel.drop_slots_failed", msg = tostring(err), keeper = sw.new_keeper})
  end
end

-- Tick N+1: real promotion, then the switched-insufficient-standbys document.
local function do_promote(state, doc)
  local sw = state.switch
  local new = state.nodes[sw.new_keeper]
  local old = state.nodes[sw.failed_keeper]
  if not sw.promoted then
    local ok, err = pgnode.stop(old, "fast")
    if not ok then return nil, "stop old master: " .. tostring(err) end
    state.down[sw.failed_keeper] = true
    local before = pgnode.status(new)
    sw.switch_point = before.xlogpos
    -- as stolon's keeper: the new master waits for a real sync standby
    ok, err = pgnode.set_sync_standbys(new, {cd.FAKE_STANDBY})
    if not ok then return nil, "fake standby: " .. tostring(err) end
    ok, err = pgnode.promote(new)
    if not ok then return nil, "promote: " .. tostring(err) end
    sw.promoted = true
    say("info", {event = "sentinel.promoted", msg = "promoted " .. sw.new_keeper, keeper = sw.new_keeper})
    drop_stale_slots(state, sw, new)
  end
  repoint_others(state, sw, new)
  local st = pgnode.status(new)
  return cd.promoted(doc, {now = now_string(state), new_db_uid = sw.new_db_uid,
                           timeline = st.timeline, switch_point = sw.switch_point,
                           xlogpos = st.xlogpos})
end

-- Tick N+2..: rewind the old master into a standby, pick the sync standby, and write
-- the converged document once the new master reports it as 'sync'.
local function do_converge(state, doc, reports)
  local sw = state.switch
  local new = state.nodes[sw.new_keeper]
  local old = state.nodes[sw.failed_keeper]
  if not sw.demoted then
    local ok, how = pgnode.demote_to_standby(old, new, {app_name = sw.new_db_uid})
    if not ok then return nil, "demote old master: " .. tostring(how) end
    state.down[sw.failed_keeper] = nil
    sw.demoted = how
    say("info", {event = "sentinel.demoted", msg = "old master is a standby again", keeper = sw.failed_keeper, how = how})
  end
  repoint_others(state, sw, new)
  if not sw.sync_node then
    -- a re-pointed standby (streaming, caught up) first; else the rewound one
    for _, uid in ipairs(sorted_keys(state.nodes)) do
      if sw.repointed[uid] then sw.sync_node = uid break end
    end
    sw.sync_node = sw.sync_node or sw.failed_keeper
    local ok, err = pgnode.set_sync_standbys(new, {state.nodes[sw.sync_node].app_name})
    if not ok then sw.sync_node = nil return nil, "sync standby: " .. tostring(err) end
  end
  local sync_app = state.nodes[sw.sync_node].app_name
  local interval = cd.sleep_interval(doc)
  local ok = pgnode.wait_streaming(new, sync_app, true, math.max(0.5, math.min(interval, 5)))
  if not ok then return false end
  -- reports were taken before the demotion: ask the rewound node afresh
  local db_status = {}
  for kuid, node in pairs(state.nodes) do
    local db_uid = cd.keeper_db(doc, kuid)
    local r = reports[kuid]
    local st = (kuid == sw.failed_keeper) and pgnode.status(node) or nil
    if db_uid then
      db_status[db_uid] = {listenAddress = node.host, port = tostring(node.port),
                           xLogPos = st and st.xlogpos or (r.db and r.db.xLogPos) or nil}
    end
  end
  return cd.converged(doc, {now = now_string(state), sync = sync_app, db_status = db_status})
end

-- promotion_delayed(state) -> true while opts.promote_delay has not passed since the
-- switch began.
local function promotion_delayed(state)
  local delay = tonumber(state.opts.promote_delay) or 0
  if delay <= 0 then return false end
  local sw = state.switch
  sw.promote_at = sw.promote_at or task.now() + delay
  if task.now() < sw.promote_at then return true end
  return false
end

-- sentinel.tick(state) -> what | nil, err. One pass: read clusterdata, collect the
-- nodes' status, take at most one switch step, write with compare-and-swap. what is
-- "init", "status", "no-master", "switched-insufficient-standbys", "converging",
-- "switched" or "conflict". Task only; yields.
function M.tick(state)
  state.ticks = state.ticks + 1
  local t = { read = task.now() }
  local doc, rev = read_doc(state)
  t.read_done = task.now()
  if doc == nil then return nil, "read clusterdata: " .. tostring(rev) end
  local reports, statuses = collect(state, doc or nil)
  t.collected = task.now()
  state.pending_times = t
  if doc == false then
    if not state.init then return nil, "no clusterdata at " .. state.key end
    local d, err = initial_doc(state, statuses)
    if not d then return nil, err end
    local ok, werr = write_doc(state, d, 0, "init")
    if ok == nil then return nil, werr end
    return ok and "init" or "conflict"
  end
  local now = now_string(state)
  -- a keeper whose db is being resynced reports no db status (as stolon's keeper)
  local cur = cd.update_status(doc, reports, {now = now})
  local next_doc, what, err
  if state.phase == "normal" then
    local fk = cd.failed_keeper(cur)
    if fk then
      local info
      next_doc, info = cd.consume_failkeeper(cur, {now = now})
      if not next_doc then return nil, info end
      what = "no-master"
      if info.new_master then
        local _, nk = node_of_db(state, cur, info.new_master)
        state.pending_switch = {
          failed_keeper = fk, old_master = info.old_master, new_master = info.new_master,
          new_keeper = nk, new_db_uid = cd.uid(info.old_master .. now), repointed = {},
        }
      end
    else
      next_doc, what = cur, "status"
    end
  elseif state.phase == "promoting" and promotion_delayed(state) then
    next_doc, what = cur, "status"
  elseif state.phase == "promoting" then
    next_doc, err = do_promote(state, cur)
    if not next_doc then return nil, err end
    what = "switched-insufficient-standbys"
  elseif state.phase == "converging" then
    next_doc, err = do_converge(state, cur, reports)
    if next_doc == nil then return nil, err end
    if next_doc == false then next_doc, what = cur, "converging" else what = "switched" end
  end
  local ok, werr = write_doc(state, next_doc, rev, what)
  if ok == nil then return nil, werr end
  if not ok then return "conflict" end
  if what == "no-master" and state.pending_switch then
    state.switch, state.pending_switch, state.phase = state.pending_switch, nil, "promoting"
  elseif what == "switched-insufficient-standbys" then
    state.phase = "converging"
  elseif what == "switched" then
    state.phase, state.switch = "normal", nil
  end
  if what ~= "status" and what ~= "converging" then
    say("info", {event = "sentinel.write", msg = what, phase = state.phase})
  end
  return what
end

-- sentinel.run{...same options as new...} -> never returns normally: ticks every
-- cluster.spec.sleepInterval (re-read each tick) until the task is cancelled. A failed
-- tick is logged and retried on the next one. Task only; yields.
function M.run(o)
  local state = o.state or M.new(o)
  while true do
    local what, err = M.tick(state)
    if not what then
      say("error", {event = "sentinel.tick_failed", msg = tostring(err), phase = state.phase})
    end
    local interval = 5
    local doc = read_doc(state)
    if doc then interval = cd.sleep_interval(doc) end
    task.sleep(math.max(0.1, interval))
  end
end

return M
