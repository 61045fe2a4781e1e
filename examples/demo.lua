-- The demo (`make demo`): boot the playground on loopback, run a write load through
-- the proxy PgBouncer, run `stolon-pgbouncer failover` as an operator would, and
-- print what the applications saw. Everything is torn down at the end, also on
-- Ctrl-C. Options: demo.lua [--clients N] [--keep] [--sleep-interval 2s]
--                           [--failover-sleep-interval 1s] [--json FILE]
--                           [--manager stolon|patroni [--layout a|b] [--https]]
-- --manager patroni boots lua/playground/patroni.lua (real Patroni) instead of the
-- stand-in sentinel's playground; the report is the same.
local cjson = require "cjson"
local flags = require "flags"
local fs = require "fs"
local load = require "playground.load"
local pg = require "pg"
local pgnode = require "playground.pgnode"
local task = require "task"

local opts = flags.parse_or_exit({
  { name = "clients", type = "int", default = "8", help = "Concurrent clients writing through the proxy" },
  { name = "warmup", type = "duration", default = "3s", help = "Load before the failover" },
  { name = "cooldown", type = "duration", default = "3s", help = "Load after the failover" },
  { name = "sleep-interval", default = "2s", help = "The stand-in sentinel's sleepInterval" },
  { name = "failover-sleep-interval", default = "1s", help = "Passed to failover" },
  { name = "keep", type = "bool", help = "Leave the playground's folder behind (logs)" },
  { name = "json", default = "", help = "Write the report as JSON to this file" },
  { name = "verbose", type = "bool", help = "Show the playground's own logs (the stand-in sentinel's)" },
  { name = "manager", default = "stolon", help = "stolon (the stand-in sentinel) or patroni (real Patroni)" },
  { name = "layout", default = "a", help = "With --manager patroni: a (PgBouncer and pauser per node) or b (proxy only)" },
  { name = "https", type = "bool", help = "With --manager patroni: Patroni's REST API over HTTPS (a playground CA)" },
}, arg, { command = "run examples/demo.lua", description = "Failover under load on a local playground" })

-- The report is the output; the stand-in sentinel's logfmt lines only with --verbose
-- (the daemons log to files in the playground's folder, kept with --keep).
if not opts.verbose then require("log").set_level("warn") end

local function say(fmt, ...)
  io.stdout:write((fmt .. "\n"):format(...))
  io.stdout:flush()
end

local function ms(v)
  return v and ("%.1f ms"):format(v * 1000) or "-"
end

local function server_addr(conninfo)
  local conn = pg.connect(conninfo, { timeout = 5 })
  if not conn then return nil end
  local rows = conn:query("SELECT host(inet_server_addr()) AS addr")
  conn:close()
  return rows and rows[1] and rows[1].addr
end

if opts.manager ~= "stolon" and opts.manager ~= "patroni" then
  io.stderr:write(("demo: --manager %q: want stolon or patroni\n"):format(opts.manager))
  os.exit(2)
end
if opts.layout ~= "a" and opts.layout ~= "b" then
  io.stderr:write(("demo: --layout %q: want a or b\n"):format(opts.layout))
  os.exit(2)
end
local patroni = opts.manager == "patroni"

-- boot() -> playground, the failover's extra flags | nil, err
local function boot()
  if not patroni then
    say("booting the playground: etcd, 3 PostgreSQL nodes (primary, sync and async standby), "
      .. "a PgBouncer + pauser per node, a proxy PgBouncer, the stand-in sentinel ...")
    local pl, err = require("playground.cluster").boot { sleep_interval = opts.sleep_interval, keep = opts.keep }
    return pl, pl and { "--failover-sleep-interval", opts.failover_sleep_interval } or err
  end
  say("booting the playground: etcd, 3 PostgreSQL nodes each run by Patroni (synchronous_mode, REST API with "
    .. "basic auth%s), %s ...", opts.https and " over HTTPS" or "",
    opts.layout == "b" and "a proxy PgBouncer + pauser pointing straight at the primary"
      or "a PgBouncer + pauser per node, a proxy PgBouncer")
  local pl, err = require("playground.patroni").boot { keep = opts.keep, layout = opts.layout, https = opts.https }
  return pl, pl and {} or err
end

local c
local function demo()
  local t0 = task.now()
  local err
  c, err = boot()
  if not c then error("playground: " .. tostring(err), 0) end
  say("  ready in %.1f s; applications connect to %s", task.now() - t0, c.app_conninfo)
  assert(load.ensure_table(c.app_conninfo))
  local before = server_addr(c.app_conninfo)
  say("  the proxy routes to %s", tostring(before))

  local run = load.start { conninfo = c.app_conninfo, clients = opts.clients }
  say("load: %d clients inserting rows through the proxy; %.0f s of warm-up ...", opts.clients, opts.warmup)
  task.sleep(opts.warmup)

  local report_file = c.base .. "/failover-report.json"
  local extra = err
  say("running: stolon-pgbouncer %s", table.concat(c:failover_args(extra), " "))
  local args = { "--report-file", report_file }
  for _, a in ipairs(extra) do args[#args + 1] = a end
  local code, out, ferr = c:run_failover(args, 120)
  io.stdout:write(out or "")
  if code ~= 0 then
    io.stderr:write(ferr or "")
    error(("failover exited with %s"):format(tostring(code)), 0)
  end
  local text = fs.read(report_file)
  local fr = text and cjson.decode(text) or {}

  task.sleep(opts.cooldown)
  local r = run:stop()
  local window = fr.paused_at and { fr.paused_at, fr.resumed_at }
  local rw = load.report(run, window)
  local primary = c:primary()
  local missing, unknown_committed = load.verify(r, pgnode.conninfo(primary, "app"))
  local after = server_addr(c.app_conninfo)

  say("")
  say("report")
  say("  failover:           %s, %s -> %s", code == 0 and "succeeded" or "FAILED", tostring(fr.old_master),
    tostring(fr.new_master))
  say("  pause window:       %s (cluster manager %s, ours %s)", ms(fr.pause_window_seconds),
    ms(fr.manager_seconds), ms(fr.ours_seconds))
  say("  transactions:       %d committed, %d failed, %d outcome unknown, %d connect errors (%.0f tx/s)",
    r.committed, r.failed, r.unknown, r.connect_errors, r.tps)
  say("  latency:            p50 %s, p99 %s, max %s; worst stall during the pause %s", ms(r.p50_latency),
    ms(r.p99_latency), ms(r.max_latency), ms(rw.window_max_latency))
  say("  proxy routes to:    %s before, %s after (primary is %s)", tostring(before), tostring(after),
    primary and primary.host or "?")
  if missing then
    say("  committed rows:     %d of %d found on the new primary%s", r.committed - #missing, r.committed,
      #missing == 0 and " (none lost)" or (" — MISSING: " .. table.concat(missing, ", ", 1, math.min(#missing, 10))))
    if r.unknown > 0 then say("  unknown outcomes:   %d of %d did commit", unknown_committed, r.unknown) end
  end
  for i = 1, math.min(#r.errors, 5) do
    local e = r.errors[i]
    say("  error:              %s %s", e.kind, e.error)
  end
  local result = {
    failover = fr, load = { committed = r.committed, failed = r.failed, unknown = r.unknown,
      connect_errors = r.connect_errors, p50 = r.p50_latency, p99 = r.p99_latency, max = r.max_latency,
      window_max = rw.window_max_latency, tps = r.tps },
    missing = missing and #missing or nil, routed_before = before, routed_after = after,
    total_seconds = task.now() - t0,
  }
  if opts.json ~= "" then fs.write_atomic(opts.json, cjson.encode(result) .. "\n") end
  local ok = code == 0 and r.failed == 0 and missing and #missing == 0 and after == (primary and primary.host)
  say("  verdict:            %s (%.0f s in all)", ok and "zero-downtime failover, nothing lost" or "PROBLEMS above",
    task.now() - t0)
  return ok
end

local main = task.named("demo", demo)
local interrupted = false
for _, sig in ipairs { "INT", "TERM" } do
  task.on_signal(sig, function()
    if interrupted then os.exit(130) end
    interrupted = true
    io.stderr:write("\ninterrupted: tearing the playground down ...\n")
    main:cancel()
  end)
end
local finished, result = main:wait()
if c then c:stop() end
if interrupted then return 130 end
if not finished then
  io.stderr:write("demo: ", tostring(result), "\n")
  return 1
end
return result and 0 or 1
