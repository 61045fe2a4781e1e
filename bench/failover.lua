-- bench/failover.lua [RUNS=5]: failovers under load on one playground, RUNS each at
-- --failover-sleep-interval 1s and 250ms, each with --align-to-sentinel (the default)
-- and with --no-align-to-sentinel, interleaved (1s aligned, 1s not, 250ms aligned,
-- 250ms not, then again) so both see the same machine. Run by bench/run.sh.
--
-- The playground (lua/playground/cluster.lua) on 127.0.2.11-13 (nodes) and
-- 127.0.2.20 (proxy), etcd on 127.0.0.1:22570. Per run: wait until the cluster is
-- healthy again (every keeper and db healthy, the master with its sync standby),
-- start 8 clients writing through the proxy (lua/playground/load.lua), wait 1 s plus
-- a random delay (uniform over one cycle of the sentinel, drawn afresh for every run
-- of both arms, so the failover starts at a random phase of the sentinel's cycle),
-- run `stolon-pgbouncer failover --report-file`, stop the load, and take from the
-- report (CLOCK_MONOTONIC, comparable with this process's task.now()):
--   pause window   first PAUSE sent -> last RESUME answered
--   manager        failkeeper done -> recovered observed (the stand-in sentinel's ticks)
--   ours           the window minus the manager's part
--   reaction wait  forceFail written -> the first clusterdata revision showing the
--                  switch began (the sentinel's no-master write), and of it the
--                  sentinel's own check (its period - the interval: read -> write)
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
local MODES = {}
for _, interval in ipairs(INTERVALS) do
  for _, aligned in ipairs { true, false } do
    MODES[#MODES + 1] = { interval = interval, aligned = aligned,
      name = interval .. (aligned and " aligned" or " not aligned") }
  end
end
local CLIENTS = 8
local START_SPREAD = 2.5 -- seconds: the start delay is uniform in [0, this) (see one_run)

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

-- sentinel_ticks(fr) -> what the stand-in sentinel's own clock says about the tick
-- that reacted to forceFail (c.sentinel_state.times; the same CLOCK_MONOTONIC as the
-- report): before_read (forceFail's write answered -> that tick's read of
-- clusterdata), check (its read answered -> the keepers' status taken), write (-> its
-- compare-and-swap answered), seen (-> the failover saw the revision), conflicts
-- (ticks whose compare-and-swap failed between forceFail and the reaction: each cost
-- a period), read_error (that read - the one sentinel_clock predicted).
-- sequence: every tick from forceFail to the recovery seen, "what@ms" (its write
-- answered, from forceFail's).
local function sentinel_ticks(fr)
  local out = { conflicts = 0, sequence = {} }
  if not fr.failkeeper_at then return out end
  for _, t in ipairs(c.sentinel_state.times) do
    -- the last tick answered before forceFail's write: when aligned, the one before
    -- the read aimed at (its read and write, ms from forceFail's write answered)
    if t.written <= fr.failkeeper_at then
      out.prev = ("%s read %.0f written %.0f"):format(t.what, (t.read - fr.failkeeper_at) * 1e3,
        (t.written - fr.failkeeper_at) * 1e3)
    end
    if t.written > fr.failkeeper_at and t.read < (fr.recovered_at or math.huge) then
      out.sequence[#out.sequence + 1] = ("%s@%.0f(check %.0f)"):format(t.what, (t.written - fr.failkeeper_at) * 1e3,
        (t.written - t.read) * 1e3)
      if t.what == "conflict" and not out.check then out.conflicts = out.conflicts + 1 end
      if t.what == "no-master" then
        out.before_read, out.read, out.check = t.read - fr.failkeeper_at, t.read_done - t.read, t.collected - t.read_done
        out.write, out.seen = t.written - t.collected, fr.reacted_at and (fr.reacted_at - t.written)
        local al = fr.align or {}
        if al.predicted_read then out.read_error = t.read - al.predicted_read end
      end
    end
  end
  return out
end

-- since_failkeeper(times, fr) -> "t1 t2 ..." in ms from forceFail's write answered
local function since_failkeeper(times, fr)
  local out = {}
  for k, t in ipairs(times or {}) do out[k] = ("%.0f"):format((t - (fr.failkeeper_at or t)) * 1e3) end
  return table.concat(out, " ")
end

local function one_run(mode, i)
  local interval = mode.interval
  local t_wait = task.now()
  local m, why = B.wait_until(120, healthy, 0.2)
  if not m then error(("run %s #%d: cluster not healthy after 120 s: %s"):format(interval, i, tostring(why)), 0) end
  local waited = task.now() - t_wait
  -- each run on an empty table (its rows alone are verified quickly)
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
  -- A random phase: healthy() returns just after a sentinel write, and every sleep
  -- above is fixed, so without this each run would start at the same point of the
  -- sentinel's cycle, and the arm without alignment would see one lucky (or
  -- unlucky) phase five times. Drawn per run, for both arms, over one whole cycle
  -- of the playground's sentinel (its 2 s interval and its check).
  local delay = math.random() * START_SPREAD
  task.sleep(1 + delay)
  local report_file = ("%s/failover-%s-%s-%d.json"):format(c.base, interval, mode.aligned and "a" or "n", i)
  local started = task.now()
  local code, out, ferr = c:run_failover({ "--failover-sleep-interval", interval, "--report-file", report_file,
    mode.aligned and "--align-to-sentinel" or "--no-align-to-sentinel" }, 120)
  task.sleep(1)
  local r = run:stop()
  if code ~= 0 then
    error(("failover %s #%d exited %s: %s%s"):format(mode.name, i, tostring(code), out or "", (ferr or ""):sub(-2000)), 0)
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
  local al = fr.align or {}
  local tick = sentinel_ticks(fr)
  local x = {
    interval = interval, mode = mode.name, aligned = al.aligned == true, align_reason = al.reason, run = i,
    waited_healthy_s = waited, start_delay = delay,
    reaction = fr.reaction_wait_seconds, reaction_how = fr.reaction,
    sentinel_check = al.period and (al.period - (interval == "1s" and 1 or 0.25)) or nil,
    before_read = al.predicted_read and fr.failkeeper_at and (al.predicted_read - fr.failkeeper_at) or nil,
    after_reaction = fr.reacted_at and fr.recovered_at and (fr.recovered_at - fr.reacted_at) or nil,
    lead = al.lead, margin = al.margin, period = al.period, write_wait = al.write_wait,
    s_before_read = tick.before_read, s_check = tick.check, s_write = tick.write, s_seen = tick.seen,
    s_conflicts = tick.conflicts, s_read_error = tick.read_error, s_read = tick.read, s_ticks = tick.sequence,
    s_reaction_check = tick.read and (tick.read + tick.check + tick.write + (tick.seen or 0)),
    s_prev = tick.prev, failkeeper_attempts = fr.failkeeper_attempts,
    seen_writes = since_failkeeper(al.arrivals, fr),
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
  local function ms(v) return v and ("%.1f"):format(v * 1e3) or "-" end
  B.say("  %-17s #%d: start delay %4.0f ms, window %7.1f ms (manager %7.1f, ours %5.1f; forceFail -> reaction %s ms, before the "
    .. "predicted read %s ms, sentinel check %s ms, pause %s ms, lead %s ms, margin %s ms%s; the sentinel's "
    .. "own clock: forceFail %s ms before its read (%s ms after the predicted one), check %s ms, write %s ms, "
    .. "seen %s ms later, %d conflicts; ticks %s; tick before: %s; failkeeper attempts %s; "
    .. "the plan's writes seen at %s), stall %7.1f ms, "
    .. "p99 %6.1f ms, %d committed, %d missing; failed/unknown/connect before %d/%d/%d, during %d/%d/%d, "
    .. "after %d/%d/%d",
    mode.name, i, delay * 1e3, x.window * 1e3, x.manager * 1e3, x.ours * 1e3, ms(x.reaction), ms(x.before_read),
    ms(x.sentinel_check), ms(x.pause_fanout), ms(x.lead), ms(x.margin),
    x.align_reason and (", " .. x.align_reason) or "",
    ms(x.s_before_read), ms(x.s_read_error), ms(x.s_check), ms(x.s_write), ms(x.s_seen), x.s_conflicts,
    table.concat(x.s_ticks, " "), tostring(x.s_prev), tostring(x.failkeeper_attempts), x.seen_writes,
    stall * 1e3, p99 * 1e3, x.committed, x.missing,
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
  for _, mode in ipairs(MODES) do per[mode.name] = {} end
  for i = 1, RUNS do
    for _, mode in ipairs(MODES) do
      local x = one_run(mode, i)
      all[#all + 1] = x
      per[mode.name][i] = x
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
  -- stats(mode, field) over that mode's runs
  local function stats(name, field)
    local xs = {}
    for _, x in ipairs(per[name]) do
      if type(x[field]) == "number" then xs[#xs + 1] = x[field] end
    end
    return B.stats(xs)
  end
  -- worst(name) -> the run with the longest window and its pieces, to say what dominated it
  local function worst(name)
    local w
    for _, x in ipairs(per[name]) do
      if not w or x.window > w.window then w = x end
    end
    local parts = { pause = w.pause_fanout, failkeeper = w.steps.failkeeper, reaction_wait = w.reaction,
      switch_after_reaction = w.after_reaction, write_probe = w.steps.write_probe, resume = w.steps.resume }
    local out = { run = w.run, window_ms = B.ms(w.window), ours_ms = B.ms(w.ours), align_reason = w.align_reason,
      before_predicted_read_ms = B.ms(w.before_read), parts_ms = {} }
    local order = {}
    for k, v in pairs(parts) do
      out.parts_ms[k] = B.ms(v)
      order[#order + 1] = k
    end
    table.sort(order, function(p, q) return (parts[p] or 0) > (parts[q] or 0) end)
    out.dominated_by = order[1]
    return out
  end
  for _, mode in ipairs(MODES) do
    local n = mode.name
    local sm = {}
    for _, f in ipairs { "window", "manager", "ours", "reaction", "sentinel_check", "before_read", "after_reaction",
      "stall", "p99", "pause_fanout", "pause_direct", "s_before_read", "s_reaction_check", "s_read_error",
      "write_wait" } do
      local st = stats(n, f)
      sm[f .. "_median_ms"], sm[f .. "_max_ms"] = B.ms(st.median), B.ms(st.max)
    end
    local steps = {}
    for name in pairs(per[n][1].steps) do
      local xs = {}
      for _, x in ipairs(per[n]) do xs[#xs + 1] = x.steps[name] end
      steps[name] = B.ms(B.stats(xs).median)
    end
    sm.steps_median_ms = steps
    sm.worst = worst(n)
    local fallbacks = 0
    for _, x in ipairs(per[n]) do if mode.aligned and not x.aligned then fallbacks = fallbacks + 1 end end
    sm.fallbacks = fallbacks
    res.raw.summary[n] = sm
    B.say("  worst %s run (#%d, window %.1f ms): %s dominated; parts %s", n, sm.worst.run, sm.worst.window_ms,
      sm.worst.dominated_by, cjson.encode(sm.worst.parts_ms))
  end
  -- one row per figure: aligned as the value, not aligned beside it as the baseline
  for _, interval in ipairs(INTERVALS) do
    local a, n = interval .. " aligned", interval .. " not aligned"
    local function row(figure, field, which, extra)
      local sa, sn = stats(a, field), stats(n, field)
      local r = { figure = ("[%s] %s, %s of %d"):format(interval, figure, which, RUNS), unit = "ms",
        value = B.ms(sa[which == "worst" and "max" or "median"]),
        floor = B.ms(sn[which == "worst" and "max" or "median"]), floor_what = "not aligned" }
      for k, v in pairs(extra or {}) do r[k] = v end
      res:row(r)
      return sa
    end
    local R = row("forceFail -> manager's first reaction", "reaction", "median", { goal = "<= 100 ms" })
    res.rows[#res.rows].met = R.median ~= nil and R.median <= 0.100
    row("forceFail -> manager's first reaction", "reaction", "worst")
    -- what the reaction holds, by the stand-in's own clock (c.sentinel_state.times):
    -- the wait for its read (what the alignment chooses), then its check (read,
    -- keepers' status, compare-and-swap) and our watch seeing the write. The
    -- period-based estimate (period - interval) is kept for comparison: it is taken
    -- before the pause, under load, and overstates the check during the window.
    row("· forceFail -> the sentinel's read (the waiting)", "s_before_read", "median")
    row("· forceFail -> the sentinel's read (the waiting)", "s_before_read", "worst")
    row("· the sentinel's check, its read -> its write seen", "s_reaction_check", "median")
    res:row { figure = ("[%s] · · the same estimated from the period before the pause (period - interval), median")
      :format(interval), unit = "ms", value = B.ms(stats(a, "sentinel_check").median) }
    res:row { figure = ("[%s] · the sentinel's read after the predicted one, median"):format(interval), unit = "ms",
      value = B.ms(stats(a, "s_read_error").median) }
    local function conflicts(name)
      local k = 0
      for _, x in ipairs(per[name]) do k = k + (x.s_conflicts or 0) end
      return k
    end
    res:row { figure = ("[%s] · runs' sentinel writes lost to forceFail (each costs a period), in %d runs")
      :format(interval, RUNS), value = conflicts(a), floor = conflicts(n), floor_what = "not aligned" }
    res:row { figure = ("[%s] · forceFail before the predicted read, median"):format(interval),
      unit = "ms", value = B.ms(stats(a, "before_read").median) }
    row("pause window", "window", "median")
    row("pause window", "window", "worst")
    row("· manager's part (failkeeper -> recovered)", "manager", "median")
    row("· manager's part (failkeeper -> recovered)", "manager", "worst")
    local O = row("· ours (window - manager)", "ours", "median", { goal = "<= 50 ms" })
    res.rows[#res.rows].met = O.median ~= nil and O.median <= 0.050
    row("· ours (window - manager)", "ours", "worst")
    res:row { figure = ("[%s] · · of which pause fan-out (3 pausers), aligned, median"):format(interval),
      value = B.ms(stats(a, "pause_fanout").median), unit = "ms", floor = B.ms(stats(a, "pause_direct").median),
      floor_what = "PAUSE alone on the primary's PgBouncer, before the load" }
    row("clients' max stall in window", "stall", "median")
    local fb = res.raw.summary[a].fallbacks
    res:row { figure = ("[%s] aligned runs that fell back (period not learned)"):format(interval), value = fb,
      goal = "0", met = fb == 0 }
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
