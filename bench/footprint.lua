-- bench/footprint.lua [IDLE_SECONDS=60]: memory, CPU and start-up time of our
-- daemons. Run by bench/run.sh.
--
--   start-up  `supervise`: process start -> its PgBouncer accepts (admin SHOW VERSION);
--             `pauser`: process start -> GET /health answers 200. Median of 5 starts.
--   idle      both daemons left alone for IDLE_SECONDS (supervise watching etcd, the
--             pauser serving nothing): VmRSS / RssAnon from /proc/<pid>/status (the
--             daemon alone, not its PgBouncer), PSS from /proc/<pid>/smaps_rollup
--             (shared-library pages divided among the processes mapping them),
--             CPU seconds from /proc/<pid>/stat.
--   run       `stolon-pgbouncer run` on an empty script: time to exit; on a script
--             printing one line: time to that line and its RSS then. Median of 20.
-- Baselines in the same run: `/bin/true` for the run times, PgBouncer's own start-up
-- (started directly) for supervise, and PgBouncer's idle RSS.
-- Writes bench/results/footprint.json.
package.path = package.path .. ";bench/?.lua;tests/lua/?.lua"
local B = require "benchlib"
local P = require "support.pg"
local cd = require "playground.clusterdata"
local cluster = require "playground.cluster"
local fs = require "fs"
local http = require "http"
local pg = require "pg"
local proc = require "proc"
local stolon = require "stolon"
local task = require "task"

local IDLE = tonumber(arg[1] or "60")
local ETCD_PORT = tonumber(os.getenv("BENCH_ETCD_PORT") or "22570")
local PG_PORT, BOUNCER_PORT, PAUSER_PORT, DIRECT_PORT = 22620, 22621, 22622, 22623
local HOST = B.ADDR .. "20"
local STARTS, RUNS = 5, 20

B.quiet()
local res = B.result("footprint")
local function defer(fn) res:defer(fn) end

local function template_text(dir, port)
  return cluster.bouncer_template { listen = HOST, port = port, dir = dir, databases = { "postgres" } }
end

local function accepting(port)
  local c = pg.connect({ host = HOST, port = port, dbname = "pgbouncer", user = "pgbouncer" }, { timeout = 1 })
  if not c then return false end
  local rows = c:query("SHOW VERSION")
  c:close()
  return rows ~= nil
end

-- time from spawn() to ready(), polling every 2 ms (bounded)
local function time_to(spawn, ready)
  local t0 = task.now()
  local p = spawn()
  local deadline = t0 + 20
  while not ready() do
    if task.now() > deadline then error("not ready after 20 s", 0) end
    if not p:running() then error("exited before it was ready", 0) end
    task.sleep(0.002)
  end
  return task.now() - t0, p
end

local function median_of(xs) return B.stats(xs).median end

local function main()
  local dir = B.tmpdir("spgb-bench-footprint")
  defer(function() proc.run { "rm", "-rf", dir } end)
  B.say("footprint: starting etcd, Postgres ...")
  local e = B.start_etcd { host = HOST, port = ETCD_PORT }
  defer(e.stop)
  local db = P.start_postgres { host = B.ADDR .. "11", port = PG_PORT }
  defer(function() db:destroy() end)
  local keepers = { { uid = "keeper0", host = db.host, port = db.port, db_uid = "db0" } }
  assert(e.client:put(stolon.key("stolon/cluster", "bench"), cd.encode(cd.new { keepers = keepers })))

  local bdir = dir .. "/bouncer"
  fs.mkdir_p(bdir, "0750")
  if B.is_root() then proc.run { "chown", "postgres:postgres", bdir } end
  B.write(bdir .. "/userlist.txt", '"pgbouncer" ""\n"postgres" ""\n')
  B.write(bdir .. "/pgbouncer.ini.template", template_text(bdir, BOUNCER_PORT))
  local sup_args = { "supervise", "--cluster-name", "bench", "--store-endpoints", e.endpoint, "--metrics-port", "0",
    "--pgbouncer-config-file", bdir .. "/pgbouncer.ini", "--pgbouncer-config-template-file",
    bdir .. "/pgbouncer.ini.template", "--pgbouncer-socket-dir", bdir, "--pgbouncer-port", tostring(BOUNCER_PORT),
    "--pgbouncer-binary", P.pgbouncer, "--termination-grace-period", "0s", "--termination-poll-interval", "1s" }
  local pauser_args = { "pauser", "--bind-address", ("%s:%d"):format(HOST, PAUSER_PORT), "--pgbouncer-socket-dir",
    bdir, "--pgbouncer-port", tostring(BOUNCER_PORT), "--metrics-port", "0" }

  -- baseline: PgBouncer started directly from the same kind of config
  local ddir = dir .. "/direct"
  fs.mkdir_p(ddir, "0750")
  if B.is_root() then proc.run { "chown", "postgres:postgres", ddir } end
  B.write(ddir .. "/userlist.txt", '"pgbouncer" ""\n"postgres" ""\n')
  local dtext = template_text(ddir, DIRECT_PORT):gsub("{{%.Host}}", db.host):gsub("{{%.Port}}", tostring(db.port))
  B.write(ddir .. "/pgbouncer.ini", dtext)

  B.say("footprint: start-up times (%d starts each) ...", STARTS)
  local sup_t, pau_t, pgb_t = {}, {}, {}
  local sup, pau, pgb
  for i = 1, STARTS do
    pgb_t[i], pgb = time_to(function()
      local argv = { P.pgbouncer, ddir .. "/pgbouncer.ini", stdin = "null", stdout = "null", stderr = "null" }
      if B.is_root() then argv.user = "postgres" end
      return assert(proc.spawn(argv))
    end, function() return accepting(DIRECT_PORT) end)
    sup_t[i], sup = time_to(function()
      return B.ours(sup_args, { as_postgres = true, stderr = "file:" .. dir .. "/supervise.log" })
    end, function() return accepting(BOUNCER_PORT) end)
    pau_t[i], pau = time_to(function()
      return B.ours(pauser_args, { as_postgres = true, stderr = "file:" .. dir .. "/pauser.log" })
    end, function()
      local r = http.request { url = ("http://%s:%d/health"):format(HOST, PAUSER_PORT), timeout = 1 }
      return r and r.status == 200
    end)
    if i < STARTS then
      B.stop(pau)
      B.stop(sup, 15)
      B.stop(pgb)
    end
  end
  defer(function() B.stop(pgb) end)
  defer(function() B.stop(sup, 15) end)
  defer(function() B.stop(pau) end)

  B.say("footprint: %d s idle ...", IDLE)
  task.sleep(1)
  local pids = { supervise = sup:pid(), pauser = pau:pid(), pgbouncer = pgb:pid() }
  local cpu0, max_rss, last = {}, {}, {}
  for name, pid in pairs(pids) do cpu0[name], max_rss[name] = B.cpu_seconds(pid), 0 end
  local t0 = task.now()
  while task.now() - t0 < IDLE do
    task.sleep(math.min(1, IDLE))
    for name, pid in pairs(pids) do
      last[name] = B.status(pid)
      max_rss[name] = math.max(max_rss[name], last[name].rss_kb)
    end
  end
  local elapsed = task.now() - t0
  local idle = {}
  for name, pid in pairs(pids) do
    idle[name] = { rss_kb = last[name].rss_kb, max_rss_kb = max_rss[name], anon_kb = last[name].anon_kb,
      file_kb = last[name].file_kb, hwm_kb = last[name].hwm_kb, pss_kb = last[name].pss_kb,
      cpu_s = B.cpu_seconds(pid) - cpu0[name] }
  end

  B.say("footprint: `stolon-pgbouncer run` (%d runs each) ...", RUNS)
  B.write(dir .. "/empty.lua", "")
  B.write(dir .. "/line.lua", 'io.stdout:write("ready\\n") io.stdout:flush() require("task").sleep(10)\n')
  local empty_t, true_t, line_t, line_rss = {}, {}, {}, {}
  for i = 1, RUNS do
    local t = task.now()
    assert(proc.run { B.bin, "run", dir .. "/empty.lua", timeout = 10 } == 0)
    empty_t[i] = task.now() - t
    t = task.now()
    proc.run { "/bin/true", timeout = 10 }
    true_t[i] = task.now() - t
    local out = ("%s/line-%d.out"):format(dir, i)
    t = task.now()
    local p = assert(proc.spawn { B.bin, "run", dir .. "/line.lua", stdout = "file:" .. out, stdin = "null" })
    while (B.read_file(out) or "") == "" do
      if task.now() - t > 10 then error("no line from run line.lua", 0) end
      task.sleep(0.001)
    end
    line_t[i] = task.now() - t
    line_rss[i] = B.status(p:pid()).rss_kb
    p:signal("KILL")
    p:wait(5)
  end

  local S, PA = median_of(sup_t), median_of(pau_t)
  res.raw = {
    idle_seconds = elapsed, idle = idle,
    startup_ms = { supervise = B.ms(S), pauser = B.ms(PA), pgbouncer_direct = B.ms(median_of(pgb_t)),
      supervise_all = sup_t, pauser_all = pau_t },
    run_ms = { empty_exit = B.ms(median_of(empty_t)), bin_true = B.ms(median_of(true_t)),
      first_line = B.ms(median_of(line_t)), rss_kb_at_first_line = median_of(line_rss) },
  }
  local MB = 1024
  for _, name in ipairs { "supervise", "pauser" } do
    local x = idle[name]
    res:row { figure = name .. " idle RSS (VmRSS)", value = x.rss_kb / MB, unit = "MB",
      floor = idle.pgbouncer.rss_kb / MB, floor_what = "PgBouncer's own idle RSS", goal = "< 8 MB", met = x.rss_kb < 8 * MB }
    res:row { figure = name .. " · of which private (RssAnon)", value = x.anon_kb / MB, unit = "MB" }
    if x.pss_kb then
      res:row { figure = name .. " idle PSS (smaps_rollup)", value = x.pss_kb / MB, unit = "MB",
        floor = idle.pgbouncer.pss_kb and idle.pgbouncer.pss_kb / MB, floor_what = "PgBouncer's own idle PSS",
        goal = "< 4 MB", met = x.pss_kb < 4 * MB }
    end
    res:row { figure = ("%s idle CPU over %.0f s"):format(name, elapsed), value = x.cpu_s, unit = "s",
      floor = idle.pgbouncer.cpu_s, floor_what = "PgBouncer's own idle CPU" }
  end
  res:row { figure = "supervise start -> PgBouncer accepting, median", value = B.ms(S), unit = "ms",
    floor = B.ms(median_of(pgb_t)), floor_what = "PgBouncer started directly" }
  res:row { figure = "pauser start -> /health 200, median", value = B.ms(PA), unit = "ms" }
  res:row { figure = "run empty script: start -> exit, median", value = B.ms(median_of(empty_t)), unit = "ms",
    floor = B.ms(median_of(true_t)), floor_what = "/bin/true" }
  res:row { figure = "run: start -> first line, median", value = B.ms(median_of(line_t)), unit = "ms" }
  res:row { figure = "run: RSS at first line, median", value = median_of(line_rss) / MB, unit = "MB",
    goal = "< 8 MB", met = median_of(line_rss) < 8 * MB }
end

return res:run(main)
