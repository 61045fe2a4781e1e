-- load: N clients running short write transactions through a PgBouncer, each
-- inserting a row with a unique id. Records per-transaction latency, failures, the
-- ids that committed, and the ids whose outcome the client could not know (the
-- connection broke while the commit was in flight).
--
--   local load = require "playground.load"
--   local run = load.start{conninfo = "...", clients = 8}
--   (or conninfos = {"...", ...}: the clients take them in turn, one run through
--   several PgBouncers)
--   ... later ...
--   local r = run:stop()        -- figures, see report()
--   local missing = load.verify(r, conninfo_of_new_primary)
local pg = require "pg"
local task = require "task"

local M = {}

M.TABLE = "spgb_load"

local function percentile(sorted, p)
  if #sorted == 0 then return 0 end
  local i = math.max(1, math.ceil(#sorted * p))
  return sorted[i]
end

-- ensure_table(conninfo) -> true | nil, err
function M.ensure_table(conninfo)
  local conn, err = pg.connect(conninfo, { timeout = 5 })
  if not conn then return nil, err end
  local ok, qerr = conn:query(("CREATE TABLE IF NOT EXISTS %s (id bigint PRIMARY KEY, client int NOT NULL, "
    .. "at timestamptz NOT NULL DEFAULT clock_timestamp())"):format(M.TABLE))
  conn:close()
  if not ok then return nil, qerr end
  return true
end

local function client_loop(run, n)
  local conn
  local seq = 0
  local conninfo = run.conninfos[(n - 1) % #run.conninfos + 1]
  while not run.stopping do
    if not conn then
      local err
      conn, err = pg.connect(conninfo, { timeout = 5 })
      if not conn then
        run.connect_errors = run.connect_errors + 1
        run.errors[#run.errors + 1] = { at = task.now(), error = tostring(err), kind = "connect" }
        task.sleep(0.05)
      end
    end
    if conn then
      seq = seq + 1
      local id = (run.number * 1000 + n) * 100000000 + seq
      local t0 = task.now()
      local rows, err, code = conn:query(("INSERT INTO %s (id, client) VALUES (%d, %d)"):format(M.TABLE, id, n))
      local t1 = task.now()
      if rows then
        run.committed[#run.committed + 1] = id
        run.latencies[#run.latencies + 1] = t1 - t0
        run.timeline[#run.timeline + 1] = { t0, t1 }
      else
        -- No SQLSTATE means the connection broke: the INSERT may or may not have
        -- committed. An SQLSTATE means the server refused it: it did not commit.
        local unknown = code == nil or code == "connection" or not tostring(code):match("^%w%w%w%w%w$")
        if unknown then
          run.unknown[#run.unknown + 1] = id
        else
          run.failed = run.failed + 1
        end
        run.errors[#run.errors + 1] = { at = t1, error = tostring(err), code = code, id = id,
          kind = unknown and "unknown" or "failed" }
        conn:close()
        conn = nil
      end
      if run.pace > 0 then task.sleep(run.pace) end
    end
  end
  if conn then conn:close() end
end

-- Runs started by this process: each run's ids differ from the earlier runs' (several
-- runs on one table, as the acceptance specs and the benchmarks do, never collide).
local runs = 0

-- start{conninfo= | conninfos=, clients=8, pace=0} -> run (clients start at once, in tasks)
function M.start(o)
  runs = runs + 1
  local run = {
    number = runs,
    conninfo = o.conninfo, conninfos = o.conninfos or { o.conninfo }, clients = o.clients or 8, pace = o.pace or 0,
    committed = {}, unknown = {}, failed = 0, connect_errors = 0, errors = {},
    latencies = {}, timeline = {}, started = task.now(), stopping = false, tasks = {},
  }
  for i = 1, run.clients do
    run.tasks[i] = task.named("load-" .. i, client_loop, run, i)
  end
  function run.stop(self)
    self.stopping = true
    for _, t in ipairs(self.tasks) do
      if not t:wait(10) then t:cancel() end
    end
    self.stopped = task.now()
    return M.report(self)
  end
  return run
end

-- report(run [, window]) -> figures; window = {from, to} (task.now() times) gives
-- the worst stall of a transaction overlapping it.
function M.report(run, window)
  local sorted = {}
  for i, v in ipairs(run.latencies) do sorted[i] = v end
  table.sort(sorted)
  local r = {
    committed = #run.committed, failed = run.failed, unknown = #run.unknown,
    connect_errors = run.connect_errors, seconds = (run.stopped or task.now()) - run.started,
    max_latency = sorted[#sorted] or 0, p99_latency = percentile(sorted, 0.99),
    p50_latency = percentile(sorted, 0.50), errors = run.errors, committed_ids = run.committed,
    unknown_ids = run.unknown,
  }
  r.tps = r.seconds > 0 and r.committed / r.seconds or 0
  if window then
    local stall = 0
    for _, t in ipairs(run.timeline) do
      if t[2] >= window[1] and t[1] <= window[2] then stall = math.max(stall, t[2] - t[1]) end
    end
    r.window_max_latency = stall
  end
  return r
end

-- verify(report, conninfo) -> missing (list of committed ids not in the table),
-- unknown_committed (how many unknown-outcome ids are there after all) | nil, err
function M.verify(r, conninfo)
  local conn, err = pg.connect(conninfo, { timeout = 5 })
  if not conn then return nil, err end
  local rows, qerr = conn:query(("SELECT id FROM %s"):format(M.TABLE))
  conn:close()
  if not rows then return nil, qerr end
  local present = {}
  for _, row in ipairs(rows) do present[tonumber(row.id)] = true end
  local missing = {}
  for _, id in ipairs(r.committed_ids) do
    if not present[id] then missing[#missing + 1] = id end
  end
  local unknown_committed = 0
  for _, id in ipairs(r.unknown_ids) do
    if present[id] then unknown_committed = unknown_committed + 1 end
  end
  return missing, unknown_committed
end

return M
