-- bench/failover.lua [RUNS=5]: failovers under load on one playground, RUNS at the
-- default --failover-sleep-interval 1s and RUNS at 250ms. Run by bench/run.sh.
--
-- The playground (lua/playground/cluster.lua) on 127.0.2.11-13 (nodes) and
-- 127.0.2.20 (proxy), etcd on 127.0.0.1:22570. Per run: wait until the cluster is
-- healthy again (every keeper and db healthy, the master with its sync standby),
-- start 8 clients writing through the proxy (lua/playground/load.lua), run
-- `stolon-pgbouncer failover --report-file`, stop the load, and take from the report
-- (CLOCK_MONOTONIC, comparable with this process's task.now()):
--   pause window   first PAUSE sent -> last RESUME answered
--   manager        failkeeper done -> recovered observed (the stand-in sentinel's ticks)
--   ours           the window minus the manager's part
--   steps          each pipeline step's duration
-- and from the load: the longest stall and the p99 latency of the transactions that
-- overlap the window, committed rows missing on the new primary, and every failed,
-- unknown-outcome or refused-connection transaction by the phase it happened in:
--   before   the load ran, the failover command had not started (not the failover's)
--   during   the command started -> its last RESUME answered
--   after    -> the load stopped (1 s after the command exited)
-- Exits 3 (after writing its results) when a failover itself failed a transaction
-- (during or after), so `make bench` fails. Writes bench/results/failover.json.
--
-- The PAUSE floor is measured on the primary's PgBouncer before the load starts:
-- pausing a node PgBouncer under load with the front one running makes the front
-- PgBouncer's server logins fail, and it then rejects clients for server_login_retry
-- (the harm this benchmark used to count as the failover's).
package.path = package.path .. ";bench/?.lua;tests/lua/?.lua"
local B = require "benchlib"
local cjson = require "cjson"
local cluster = require "playground.cluster"
local fs = require "fs"
local load = require "playground.load"
local pg = require "pg"
local pgbouncer = require "pgbouncer"
local pgnode = require "playground.pgnode"
local stolon = require "stolon"
local task = require "task"

local RUNS = tonumber(arg[1] or "5")
local INTERVALS = { "1s", "250ms" }
local CLIENTS = 8

B.quiet()
local res = B.result("failover")
local c
local harm = 0 -- transactions the failovers themselves failed, and rows they lost

-- healthy(c) -> true | nil, why: what check_cluster_healthy wants, and more: every
-- keeper and db healthy, nothing force-failed, the sleep interval restored.
local function healthy()
  local r = c.etcd:get(stolon.key("stolon/cluster", c.o.cluster_name))
  local kv = r and r.kvs and r.kvs[1]
  if not kv then return nil, "no clusterdata" end
  local cd = stolon.decode(kv.value)
  if not cd then return nil, "bad clusterdata" end
  local ok, why = cd:check_healthy(1)
  if not ok then return nil, why end
  local m = cd:master()
  local _, state = cd:recovered("nobody")
  if state then return nil, "master not settled: " .. state end
  for uid, k in pairs(cd.doc.keepers or {}) do
    if type(k) == "table" and type(k.status) == "table" then
      if k.status.forceFail then return nil, uid .. " force-failed" end
      if not k.status.healthy then return nil, uid .. " unhealthy" end
    end
  end
  for _, d in ipairs(cd:databases()) do
    if not d.healthy then return nil, "db " .. tostring(d.uid) .. " unhealthy" end
  end
  if cd:sleep_interval() ~= c.o.sleep_interval then return nil, "sleepInterval not restored" end
  return m
end

local function window_figures(run, from, to)
  local lat, stall = {}, 0
  for _, t in ipairs(run.timeline) do
    if t[2] >= from and t[1] <= to then
      lat[#lat + 1] = t[2] - t[1]
      stall = math.max(stall, t[2] - t[1])
    end
  end
  local s = B.stats(lat)
  return stall, s.p99 or 0, #lat
end

-- phase_of(at, started, resumed) -> "before" | "during" | "after" (see the top)
local function phase_of(at, started, resumed)
  if at < started then return "before" end
  if at <= resumed then return "during" end
  return "after"
end

-- phases_of(errors, started, resumed) -> {before=, during=, after=}, each
-- {failed=, unknown=, connect=}: load.lua's errors by phase and kind
local function phases_of(errors, started, resumed)
  local out = {}
  for _, p in ipairs { "before", "during", "after" } do out[p] = { failed = 0, unknown = 0, connect = 0 } end
  for _, e in ipairs(errors) do
    local ph = out[phase_of(e.at, started, resumed)]
    ph[e.kind] = ph[e.kind] + 1
  end
  return out
end

local function one_run(interval, i)
  local t_wait = task.now()
  local m, why = B.wait_until(120, healthy, 0.2)
  if not m then error(("run %s #%d: cluster not healthy after 120 s: %s"):format(interval, i, tostring(why)), 0) end
  local waited = task.now() - t_wait
  -- load.lua's ids restart with every run: start from an empty table
  local conn = assert(pg.connect(c.app_conninfo, { timeout = 5 }))
  assert(conn:query("TRUNCATE " .. load.TABLE))
  conn:close()
  task.sleep(0.5)
  -- a floor for the pause step: PAUSE alone on the primary's PgBouncer, no HTTP,
  -- before the load starts (see the top of this file)
  local direct = {}
  for k, n in ipairs(c.nodes) do
    if n.host == m.host then
      local b = c.bouncers[k]
      local admin = assert(pgbouncer.connect { socket_dir = b.dir, port = b.port, user = "pgbouncer" })
      for j = 1, 5 do
        local t0 = task.now()
        assert(admin:pause())
        direct[j] = task.now() - t0
        assert(admin:resume())
        task.sleep(0.05)
      end
      admin:close()
    end
  end
  task.sleep(0.5)
  local run = load.start { conninfo = c.app_conninfo, clients = CLIENTS }
  task.sleep(1)
  local report_file = ("%s/failover-%s-%d.json"):format(c.base, interval, i)
  local started = task.now()
  local code, out, ferr = c:run_failover({ "--failover-sleep-interval", interval, "--report-file", report_file }, 120)
  task.sleep(1)
  local r = run:stop()
  if code ~= 0 then
    error(("failover %s #%d exited %s: %s%s"):format(interval, i, tostring(code), out or "", (ferr or ""):sub(-2000)), 0)
  end
  local fr = cjson.decode(assert(fs.read(report_file)))
  local primary = c:primary()
  local missing = primary and load.verify(r, pgnode.conninfo(primary, "app")) or nil
  local stall, p99, overlapping = window_figures(run, fr.paused_at, fr.resumed_at)
  local steps = {}
  for _, st in ipairs(fr.steps or {}) do steps[st.name] = st.duration end
  local per_pauser = {}
  for line in (ferr or ""):gmatch("[^\n]+") do
    if line:find("event=pgbouncer_pause ", 1, true) then
      per_pauser[#per_pauser + 1] = tonumber(line:match(" elapsed=([%d%.]+)"))
    end
  end
  local x = {
    interval = interval, run = i, waited_healthy_s = waited,
    window = fr.pause_window_seconds, manager = fr.manager_seconds, ours = fr.ours_seconds,
    pause_fanout = fr.pause_done_at and fr.paused_at and (fr.pause_done_at - fr.paused_at),
    pause_direct = B.stats(direct).median, pause_per_pauser = per_pauser,
    stall = stall, p99 = p99, overlapping = overlapping,
    committed = r.committed, failed = r.failed, unknown = r.unknown, connect_errors = r.connect_errors,
    missing = missing and #missing or -1, steps = steps,
    old_master = fr.old_master, new_master = fr.new_master, errors = {},
    phases = phases_of(r.errors, started, fr.resumed_at),
  }
  local kinds = {}
  for _, e in ipairs(r.errors) do
    local k = ("%s %s %s %s"):format(phase_of(e.at, started, fr.resumed_at), e.kind, tostring(e.code),
      tostring(e.error):sub(1, 120))
    if not kinds[k] then
      kinds[k] = true
      x.errors[#x.errors + 1] = k
      if #x.errors <= 3 then
        B.say("    error at %+.3f s from first PAUSE (window %.3f s): %s", e.at - fr.paused_at,
          fr.resumed_at - fr.paused_at, k)
      end
    end
  end
  local ph = x.phases
  B.say("  %-5s #%d: window %7.1f ms (manager %7.1f, ours %5.1f), stall %7.1f ms, p99 %6.1f ms, "
    .. "%d committed, %d missing; failed/unknown/connect before %d/%d/%d, during %d/%d/%d, after %d/%d/%d",
    interval, i, x.window * 1e3, x.manager * 1e3, x.ours * 1e3, stall * 1e3, p99 * 1e3, x.committed, x.missing,
    ph.before.failed, ph.before.unknown, ph.before.connect, ph.during.failed, ph.during.unknown, ph.during.connect,
    ph.after.failed, ph.after.unknown, ph.after.connect)
  return x
end

local function main()
  B.say("failover: booting the playground on 127.0.2.11-13 / .20 ...")
  local err
  c, err = cluster.boot { hosts = { B.ADDR .. "11", B.ADDR .. "12", B.ADDR .. "13" }, proxy_host = B.ADDR .. "20",
    etcd_port = tonumber(os.getenv("BENCH_ETCD_PORT") or "22570"), pg_port = 22610, bouncer_port = 22611,
    pauser_port = 22612, metrics_port = 22613, sleep_interval = "2s" }
  if not c then error("playground: " .. tostring(err), 0) end
  assert(load.ensure_table(c.app_conninfo))
  local all, per = {}, {}
  for _, interval in ipairs(INTERVALS) do
    per[interval] = {}
    for i = 1, RUNS do
      local x = one_run(interval, i)
      all[#all + 1] = x
      per[interval][i] = x
    end
  end
  res.raw = { runs = all, clients = CLIENTS, sentinel_sleep_interval = "2s" }

  local missing = 0
  local total = {}
  for _, p in ipairs { "before", "during", "after" } do total[p] = { failed = 0, unknown = 0, connect = 0 } end
  for _, x in ipairs(all) do
    missing = missing + math.max(0, x.missing)
    for p, t in pairs(total) do
      for kind, n in pairs(x.phases[p]) do t[kind] = t[kind] + n end
    end
  end
  res.raw.summary = {}
  for _, interval in ipairs(INTERVALS) do
    local function med(field)
      local xs = {}
      for _, x in ipairs(per[interval]) do xs[#xs + 1] = x[field] end
      return B.stats(xs)
    end
    local W, M, O, S, P, F = med("window"), med("manager"), med("ours"), med("stall"), med("p99"), med("pause_fanout")
    local D = med("pause_direct")
    local steps = {}
    for name in pairs(per[interval][1].steps) do
      local xs = {}
      for _, x in ipairs(per[interval]) do xs[#xs + 1] = x.steps[name] end
      steps[name] = B.ms(B.stats(xs).median)
    end
    res.raw.summary[interval] = { window_ms = B.ms(W.median), manager_ms = B.ms(M.median), ours_ms = B.ms(O.median),
      ours_max_ms = B.ms(O.max), stall_ms = B.ms(S.median), stall_max_ms = B.ms(S.max), p99_ms = B.ms(P.median),
      pause_fanout_ms = B.ms(F.median), pause_direct_ms = B.ms(D.median), steps_median_ms = steps }
    local tag = ("[%s] "):format(interval)
    res:row { figure = tag .. "pause window, median of " .. RUNS, value = B.ms(W.median), unit = "ms",
      floor = B.ms(M.median), floor_what = "cluster manager's part (failkeeper -> recovered)" }
    res:row { figure = tag .. "· ours (window - manager), median", value = B.ms(O.median), unit = "ms",
      goal = "<= 50 ms", met = O.median <= 0.050 }
    res:row { figure = tag .. "· of which pause fan-out (3 pausers)", value = B.ms(F.median), unit = "ms",
      floor = B.ms(D.median), floor_what = "PAUSE alone on the primary's PgBouncer, before the load" }
    res:row { figure = tag .. "· of which failkeeper", value = steps.failkeeper, unit = "ms" }
    res:row { figure = tag .. "· of which write probe", value = steps.write_probe, unit = "ms" }
    res:row { figure = tag .. "· of which resume", value = steps.resume, unit = "ms" }
    res:row { figure = tag .. "clients' max stall in window, median", value = B.ms(S.median), unit = "ms",
      floor = B.ms(W.median), floor_what = "pause window" }
    res:row { figure = tag .. "clients' p99 latency in window, median", value = B.ms(P.median), unit = "ms" }
  end
  local function ours(kind) return total.during[kind] + total.after[kind] end
  res:row { figure = ("failed transactions, during or after a failover (%d runs)"):format(#all), value = ours("failed"),
    goal = "0", met = ours("failed") == 0 }
  res:row { figure = ("unknown-outcome transactions, during or after a failover (%d runs)"):format(#all),
    value = ours("unknown"), goal = "0", met = ours("unknown") == 0 }
  res:row { figure = ("refused connections, during or after a failover (%d runs)"):format(#all),
    value = ours("connect"), goal = "0", met = ours("connect") == 0 }
  res:row { figure = "committed rows missing on the new primary", value = missing, goal = "0", met = missing == 0 }
  local before = total.before.failed + total.before.unknown + total.before.connect
  res:row { figure = "failed/unknown/refused before a failover started (the load's own, not the failover's)",
    value = before }
  res.raw.phases = total
  harm = ours("failed") + ours("unknown") + ours("connect") + missing
end

res:defer(function() if c then c:stop() end end)
local status = res:run(main)
if status == 0 and harm > 0 then
  io.stderr:write(("failover: the failovers themselves failed %d transactions or lost rows: exit 3\n"):format(harm))
  status = 3
end
return status
