-- bench/patroni.lua [RUNS=3]: on one Patroni playground (lua/playground/patroni.lua:
-- real Patroni 3.0.2, three nodes, layout (a), basic auth on the REST API), under the
-- same load (8 clients writing through the proxy PgBouncer, lua/playground/load.lua),
-- RUNS plain `patronictl switchover --force` and RUNS of our `failover --manager
-- patroni`, interleaved (plain, ours, plain, ours, ...) so both see the same machine.
-- Run by bench/run.sh. Per run:
--   failed          failed + unknown-outcome transactions + refused connections (the
--                   clients retry at once, so the count grows with how fast a refusal
--                   comes back; the error span and the gap say how long it lasted)
--   error span      first error -> last error
--   longest gap     the longest time in which no client committed anything (from the
--                   load's commit times, 1 s before the switch to 1 s after it)
--   Patroni's part  plain: the switchover request (the `failover` key its REST API
--                   writes appears; patronictl's own start-up before it is left out)
--                   -> the DCS shows the new leader running as primary
--                   (lua/patroni.lua's switch_finished; the DCS polled every 20 ms);
--                   ours: POST /switchover -> the same (the failover's report,
--                   manager_seconds)
--   reaction        of Patroni's part, until the leader key left the old leader
--   pause window    ours: first PAUSE sent -> last RESUME answered; ours = window -
--                   Patroni's part
-- The playground on 127.0.12.11-13 (nodes), 127.0.12.20 (proxy), etcd on
-- 127.0.12.1:30479. Exits 3 (after writing its results) when one of our failovers
-- failed a transaction or lost a row. Writes bench/results/patroni.json.
package.path = package.path .. ";bench/?.lua;tests/lua/?.lua"
local B = require "benchlib"
local cjson = require "cjson"
local fs = require "fs"
local load = require "playground.load"
local patroni = require "patroni"
local pgnode = require "playground.pgnode"
local playground = require "playground.patroni"
local task = require "task"

local RUNS = tonumber(arg[1] or "3")
local CLIENTS = 8
local ADDR = "127.0.12."

B.quiet()
local res = B.result("patroni")
local c
local harm = 0

-- longest_gap(run, from, to) -> the longest time in [from, to] without a commit
local function longest_gap(run, from, to)
  local ends = {}
  for _, t in ipairs(run.timeline) do
    if t[2] >= from and t[2] <= to then ends[#ends + 1] = t[2] end
  end
  table.sort(ends)
  local gap, last = 0, from
  for _, t in ipairs(ends) do
    gap = math.max(gap, t - last)
    last = t
  end
  return math.max(gap, to - last)
end

-- watch_switch(old) -> {requested=, reacted=, finished=} filled in (task.now() times) by a task
-- polling the DCS every 20 ms until the switch finished (60 s at most)
local function watch_switch(old)
  local w = { done = false }
  w.task = task.spawn(function()
    local deadline = task.now() + 60
    while task.now() < deadline do
      local v = c:view()
      if v then
        if not w.requested and v.failover then w.requested = task.now() end
        if not w.reacted and v.leader ~= old.name then w.reacted = task.now() end
        if patroni.switch_finished(v, old) then
          w.finished = task.now()
          break
        end
      end
      task.sleep(0.02)
    end
    w.done = true
  end)
  return w
end

local function failures(r)
  return r.failed + r.unknown + r.connect_errors
end

-- one_run(kind, i) -> figures; kind "plain" or "ours"
local function one_run(kind, i)
  local v = assert(c:ready(120))
  local old = assert(patroni.primary(v))
  local cand = assert(patroni.can_lose_primary(v))
  task.sleep(0.5)
  local run = load.start { conninfo = c.app_conninfo, clients = CLIENTS }
  task.sleep(1)
  local t0 = task.now()
  local x = { kind = kind, run = i, old = old.name, new = cand.name }
  if kind == "plain" then
    local w = watch_switch(old)
    local code, out, err = c:patronictl({ "switchover", "--leader", old.name, "--candidate", cand.name, "--force" }, 90)
    if code ~= 0 then error(("patronictl switchover exited %s: %s%s"):format(tostring(code), out, err), 0) end
    w.task:wait(70)
    if not w.finished then error("the plain switchover did not finish in 60 s", 0) end
    local from = w.requested or t0
    x.manager = w.finished - from
    x.reaction = w.reacted and (w.reacted - from)
    x.patronictl_start = w.requested and (w.requested - t0)
    -- the proxy follows the new primary (supervise's RELOAD) before the load stops
    B.wait_until(15, function() return c:primary() and c:primary().host == cand.host end, 0.1)
  else
    local report = ("%s/ours-%d.json"):format(c.base, i)
    local code, out, err = c:run_failover({ "--candidate", cand.name, "--report-file", report }, 120)
    if code ~= 0 then error(("failover exited %s: %s%s"):format(tostring(code), out, (err or ""):sub(-2000)), 0) end
    local fr = cjson.decode(assert(fs.read(report)))
    x.window, x.manager, x.ours = fr.pause_window_seconds, fr.manager_seconds, fr.ours_seconds
    x.reaction = fr.reaction_wait_seconds
    for _, st in ipairs(fr.steps or {}) do x["step_" .. st.name] = st.duration end
    -- each pauser's PAUSE and RESUME, as the failover logged them (the rounds: front first)
    local each = {}
    for ev, line in (err or ""):gmatch("event=(pgbouncer_%a+) ([^\n]*)") do
      local el, ep = line:match("elapsed=([%d%.]+)"), line:match("endpoint=(%S+)")
      if el and ep then each[#each + 1] = ("%s %s %.1f"):format(ev:sub(11), ep, tonumber(el) * 1e3) end
    end
    x.per_pauser = table.concat(each, ", ")
  end
  local t1 = task.now()
  task.sleep(1)
  local r = run:stop()
  local primary = c:primary()
  local missing = primary and load.verify(r, pgnode.conninfo(primary, "app")) or nil
  x.failed, x.unknown, x.connect = r.failed, r.unknown, r.connect_errors
  x.failures = failures(r)
  x.committed = r.committed
  x.missing = missing and #missing or -1
  x.gap = longest_gap(run, t0 - 1, t1 + 1)
  local first, last
  for _, e in ipairs(r.errors) do
    first, last = math.min(first or e.at, e.at), math.max(last or e.at, e.at)
  end
  x.error_span = first and (last - first) or 0
  local kinds = {}
  for _, e in ipairs(r.errors) do
    local k = ("%s %s"):format(e.kind, tostring(e.error):gsub("%s+", " "):sub(1, 100))
    if not kinds[k] then
      kinds[k] = true
      if #x > 2 then break end
      x[#x + 1] = k
    end
  end
  local function ms(s) return s and ("%.1f"):format(s * 1e3) or "-" end
  B.say("  %-5s #%d %s -> %s: %d failed (%d failed, %d unknown outcome, %d refused; error span %s ms), longest gap %s ms, "
    .. "Patroni's part %s ms (reaction %s ms)%s, %d committed, %d missing", kind, i, x.old, x.new, x.failures,
    x.failed, x.unknown, x.connect, ms(x.error_span), ms(x.gap), ms(x.manager), ms(x.reaction),
    x.window and (", pause window " .. ms(x.window) .. " ms, ours " .. ms(x.ours) .. " ms") or "", x.committed,
    x.missing)
  for _, k in ipairs(x) do B.say("        error: %s", k) end
  if x.per_pauser then B.say("        per pauser (ms): %s", x.per_pauser) end
  x.error_kinds = { table.unpack(x) }
  for k = #x, 1, -1 do x[k] = nil end
  return x
end

local function main()
  B.say("patroni: booting the Patroni playground on %s11-13 / %s20 ...", ADDR, ADDR)
  local err
  c, err = playground.boot { scope = "bench", hosts = { ADDR .. "11", ADDR .. "12", ADDR .. "13" },
    proxy_host = ADDR .. "20", etcd_host = ADDR .. "1", etcd_port = 30479, pg_port = 30632, bouncer_port = 30732,
    pauser_port = 30780, api_port = 30808, metrics_port = 30846 }
  if not c then error("playground: " .. tostring(err), 0) end
  assert(load.ensure_table(c.app_conninfo))
  local runs = { plain = {}, ours = {} }
  for i = 1, RUNS do
    for _, kind in ipairs { "plain", "ours" } do
      runs[kind][i] = one_run(kind, i)
    end
  end
  res.raw = { runs = runs, clients = CLIENTS }
  local function stats(kind, field)
    local xs = {}
    for _, x in ipairs(runs[kind]) do
      if type(x[field]) == "number" then xs[#xs + 1] = x[field] end
    end
    return B.stats(xs)
  end
  local function list(kind, field)
    local xs = {}
    for _, x in ipairs(runs[kind]) do xs[#xs + 1] = tostring(x[field]) end
    return table.concat(xs, ", ")
  end
  local total = { plain = 0, ours = 0 }
  local missing = 0
  for kind, xs in pairs(runs) do
    for _, x in ipairs(xs) do
      total[kind] = total[kind] + x.failures
      if kind == "ours" then missing = missing + math.max(0, x.missing) end
    end
  end
  local vs = "plain patronictl switchover"
  res:row { figure = ("failed transactions per switchover, ours (runs: %s) vs plain (runs: %s)"):format(
      list("ours", "failures"), list("plain", "failures")), value = stats("ours", "failures").max,
    floor = stats("plain", "failures").median, floor_what = vs .. ", median", goal = "0",
    met = total.ours == 0 }
  res:row { figure = "· errors from first to last (error span), median", unit = "ms",
    value = B.ms(stats("ours", "error_span").median), floor = B.ms(stats("plain", "error_span").median),
    floor_what = vs }
  res:row { figure = ("longest client gap, median of %d"):format(RUNS), unit = "ms",
    value = B.ms(stats("ours", "gap").median), floor = B.ms(stats("plain", "gap").median), floor_what = vs }
  res:row { figure = ("pause window (ours), median of %d"):format(RUNS), unit = "ms",
    value = B.ms(stats("ours", "window").median) }
  res:row { figure = "· Patroni's part (request -> new primary running), median", unit = "ms",
    value = B.ms(stats("ours", "manager").median), floor = B.ms(stats("plain", "manager").median), floor_what = vs }
  res:row { figure = "· · of it until the leader key left the old leader, median", unit = "ms",
    value = B.ms(stats("ours", "reaction").median), floor = B.ms(stats("plain", "reaction").median),
    floor_what = vs }
  local O = stats("ours", "ours")
  res:row { figure = "· ours (window - Patroni's part), median", unit = "ms", value = B.ms(O.median),
    goal = "<= 50 ms", met = O.median ~= nil and O.median <= 0.050 }
  res:row { figure = "· ours, worst", unit = "ms", value = B.ms(O.max) }
  for _, step in ipairs { "pause", "switchover", "write_probe", "wait_for_routing", "resume" } do
    res:row { figure = ("· · of ours: the %s step, median"):format(step), unit = "ms",
      value = B.ms(stats("ours", "step_" .. step).median) }
  end
  res:row { figure = "committed rows missing on the new primary (ours)", value = missing, goal = "0", met = missing == 0 }
  harm = total.ours + missing
end

res:defer(function() if c then c:stop() end end)
local status = res:run(main)
if status == 0 and harm > 0 then
  io.stderr:write(("patroni: our failovers failed %d transactions or lost rows: exit 3\n"):format(harm))
  status = 3
end
return status
