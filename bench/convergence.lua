-- bench/convergence.lua [N=200]: a new master written to etcd until the supervised
-- PgBouncer routes to it. Run by bench/run.sh (stolon-pgbouncer run bench/convergence.lua).
--
-- Two real Postgres servers (127.0.2.11 and .12) behind one PgBouncer that our
-- `supervise` runs as its child (127.0.2.20). Each of N changes puts a clusterdata
-- document naming the other server as master, then polls SHOW DATABASES on that
-- PgBouncer's admin console (tight loop, task.sleep(0)) until its `postgres` database
-- points at the new host; then a new client connection through the PgBouncer must
-- reach the new server (inet_server_addr()).
--
-- The floor, measured in the same run with the same sizes: etcd put -> watch event
-- through our etcd client + fs.write_atomic of the rendered config + a RELOAD round
-- trip on a second PgBouncer (unsupervised) whose config really changed.
-- Writes bench/results/convergence.json.
package.path = package.path .. ";bench/?.lua;tests/lua/?.lua"
local B = require "benchlib"
local P = require "support.pg"
local cd = require "playground.clusterdata"
local cluster = require "playground.cluster"
local fs = require "fs"
local pg = require "pg"
local pgbouncer = require "pgbouncer"
local proc = require "proc"
local stolon = require "stolon"
local task = require "task"
local template = require "template"

local N = tonumber(arg[1] or "200")
local ETCD_PORT = tonumber(os.getenv("BENCH_ETCD_PORT") or "22570")
local PG_PORT, BOUNCER_PORT, FLOOR_BOUNCER_PORT = 22580, 22590, 22591
local CLUSTER = "bench"
local POLL = tonumber(os.getenv("BENCH_POLL") or "0") -- seconds between SHOW DATABASES polls
local KEY = stolon.key("stolon/cluster", CLUSTER)

B.quiet()
local res = B.result("convergence")
local function defer(fn) res:defer(fn) end

local function template_text(dir)
  return cluster.bouncer_template { listen = B.ADDR .. "20", port = BOUNCER_PORT, dir = dir, databases = { "postgres" } }
end

-- The two clusterdata documents: master on db a, or on db b.
local function documents(a, b)
  local keepers = {
    { uid = "keeper0", host = a.host, port = a.port, db_uid = "db0" },
    { uid = "keeper1", host = b.host, port = b.port, db_uid = "db1" },
  }
  return {
    [a.host] = cd.encode(cd.new { keepers = keepers, master = "keeper0", sync = { "keeper1" }, sleep_interval = "5s" }),
    [b.host] = cd.encode(cd.new { keepers = keepers, master = "keeper1", sync = { "keeper0" }, sleep_interval = "5s" }),
  }
end

local function admin_host(admin)
  local rows, err = admin:show("DATABASES")
  if not rows then return nil, err end
  for _, r in ipairs(rows) do
    if r.name == "postgres" then return r.host end
  end
end

local function server_addr(host, port)
  local conn, err = pg.connect({ host = host, port = port, dbname = "postgres", user = "postgres" }, { timeout = 5 })
  if not conn then return nil, err end
  local rows, qerr = conn:query("SELECT host(inet_server_addr()) AS addr")
  conn:close()
  if not rows then return nil, qerr end
  return rows[1].addr
end

-- Floor part 1: put -> watch event through our etcd client, same value sizes.
local function floor_watch(client, docs, hosts)
  local w <close> = assert(client:watch("bench/floor"))
  w:next(0.2) -- the stream is set up
  local xs = {}
  for i = 1, N do
    local t0 = task.now()
    assert(client:put("bench/floor", docs[hosts[i % 2 + 1]]))
    assert(w:next(5))
    xs[i] = task.now() - t0
  end
  return B.stats(xs)
end

-- Floor part 2: fs.write_atomic of the rendered config, alternating contents.
local function floor_write(dir, texts)
  local xs = {}
  for i = 1, N do
    local t0 = task.now()
    assert(fs.write_atomic(dir .. "/floor.ini", texts[i % 2 + 1]))
    xs[i] = task.now() - t0
  end
  -- reference only: the same without fsync (plain write, close, rename)
  local ys = {}
  for i = 1, N do
    local t0 = task.now()
    local f = assert(io.open(dir .. "/nosync.tmp", "w"))
    f:write(texts[i % 2 + 1])
    f:close()
    assert(os.rename(dir .. "/nosync.tmp", dir .. "/nosync.ini"))
    ys[i] = task.now() - t0
  end
  return B.stats(xs), B.stats(ys)
end

-- Floor part 3: RELOAD round trip on an unsupervised PgBouncer whose [databases]
-- really changed between the two servers (the file swap is not timed).
local function floor_reload(a, b)
  local fb = P.start_pgbouncer { host = B.ADDR .. "13", port = FLOOR_BOUNCER_PORT, target = a }
  defer(function() fb:destroy() end)
  local variants = {}
  for i, t in ipairs { a, b } do
    fb.databases = { postgres = { host = t.host, port = t.port, dbname = "postgres" } }
    fb:write_config()
    variants[i] = { text = B.read_file(fb.ini), host = t.host }
  end
  local admin = assert(pgbouncer.connect(fb:admin_options()))
  local xs, wrong = {}, 0
  for i = 1, N do
    local v = variants[i % 2 + 1]
    local f = assert(io.open(fb.ini, "w")) -- keeps the postgres owner
    f:write(v.text)
    f:close()
    local t0 = task.now()
    assert(admin:reload())
    xs[i] = task.now() - t0
    if admin_host(admin) ~= v.host then wrong = wrong + 1 end
  end
  admin:close()
  return B.stats(xs), wrong
end

-- supervise's own view, from its log (wall-clock µs stamps, one process): per change,
-- generate_configuration -> reload (render + write) and reload -> reloaded (RELOAD).
local function supervise_phases(path)
  local text = B.read_file(path) or ""
  local function ts(line)
    local h, m, sec = line:match("^ts=%d+%-%d+%-%d+T(%d+):(%d+):([%d%.]+)Z")
    return h and (tonumber(h) * 3600 + tonumber(m) * 60 + tonumber(sec))
  end
  local gen, rel, write, reload = nil, nil, {}, {}
  for line in text:gmatch("[^\n]+") do
    local ev = line:match(" event=(%S+)")
    if ev == "generate_configuration" then
      gen = ts(line)
    elseif ev == "reload" and gen then
      rel = ts(line)
      write[#write + 1] = rel - gen
    elseif ev == "reloaded" and rel then
      reload[#reload + 1] = ts(line) - rel
      gen, rel = nil, nil
    end
  end
  return B.stats(write), B.stats(reload)
end

local function main()
  local dir = B.tmpdir("spgb-bench-conv")
  defer(function() proc.run { "rm", "-rf", dir } end)
  B.say("convergence: starting etcd, two Postgres servers, supervise ...")
  local e = B.start_etcd { host = B.ADDR .. "20", port = ETCD_PORT }
  defer(e.stop)
  local a = P.start_postgres { host = B.ADDR .. "11", port = PG_PORT }
  defer(function() a:destroy() end)
  local b = P.start_postgres { host = B.ADDR .. "12", port = PG_PORT }
  defer(function() b:destroy() end)
  local docs = documents(a, b)
  local hosts = { a.host, b.host }
  assert(e.client:put(KEY, docs[a.host]))

  local bdir = dir .. "/bouncer"
  fs.mkdir_p(bdir, "0750")
  if B.is_root() then proc.run { "chown", "postgres:postgres", bdir } end
  B.write(bdir .. "/userlist.txt", '"pgbouncer" ""\n"postgres" ""\n')
  local ttext = template_text(bdir)
  B.write(bdir .. "/pgbouncer.ini.template", ttext)
  local sup = B.ours({ "supervise", "--cluster-name", CLUSTER, "--store-endpoints", e.endpoint,
    "--metrics-port", "0", "--pgbouncer-config-file", bdir .. "/pgbouncer.ini",
    "--pgbouncer-config-template-file", bdir .. "/pgbouncer.ini.template",
    "--pgbouncer-socket-dir", bdir, "--pgbouncer-port", tostring(BOUNCER_PORT),
    "--pgbouncer-binary", P.pgbouncer, "--termination-grace-period", "0s",
    "--termination-poll-interval", "1s" }, { as_postgres = true, stderr = "file:" .. dir .. "/supervise.log" })
  defer(function() B.stop(sup, 15) end)
  local bhost = B.ADDR .. "20"
  local admin = assert(B.wait_until(20, function()
    local c = pgbouncer.connect { host = bhost, port = BOUNCER_PORT, user = "pgbouncer", timeout = 1 }
    return c and admin_host(c) == a.host and c
  end), "supervised PgBouncer did not come up")

  -- warm up: a few changes, not recorded
  -- The bench watches the key too: per change, when the event reached a watcher
  -- (ours, in this process) versus when the PgBouncer routed to the new master.
  local seen = {}
  local w = assert(e.client:watch(KEY))
  w:next(0.2)
  local watcher = task.named("bench-watch", function()
    while true do
      local evs = w:next(30)
      local t = task.now()
      for _, ev in ipairs(evs or {}) do seen[ev.mod_revision] = t end
    end
  end)
  defer(function() watcher:cancel() w:close() end)

  local cur = a.host
  local function change(target)
    local t0 = task.now()
    local put = assert(e.client:put(KEY, docs[target]))
    local rev = put.revision
    local polls = 0
    while admin_host(admin) ~= target do
      polls = polls + 1
      if polls > 200000 then error("PgBouncer never pointed at " .. target) end
      task.sleep(POLL)
    end
    local t1 = task.now()
    local addr = server_addr(bhost, BOUNCER_PORT)
    local t2 = task.now()
    local tw = seen[rev] and seen[rev] - t0
    return t1 - t0, t2 - t0, addr == target, polls, tw
  end
  for i = 1, 6 do
    cur = hosts[i % 2 + 1]
    change(cur)
    task.sleep(0.01)
  end

  B.say("convergence: %d master changes ...", N)
  local conv, conn_t, wrong, polls, seen_w, after_w = {}, {}, 0, {}, {}, {}
  for i = 1, N do
    cur = cur == a.host and b.host or a.host
    local dt, dt2, ok, np, tw = change(cur)
    conv[i], conn_t[i], polls[i] = dt, dt2, np
    if tw then
      seen_w[#seen_w + 1] = tw
      after_w[#after_w + 1] = dt - tw
    end
    if not ok then wrong = wrong + 1 end
    task.sleep(0.005) -- let supervise finish logging before the next change
  end
  local S, SC = B.stats(conv), B.stats(conn_t)
  local SW, SR = supervise_phases(dir .. "/supervise.log")
  local SE, SA = B.stats(seen_w), B.stats(after_w)

  B.say("convergence: floor (watch, write, RELOAD) ...")
  local tmpl = assert(template.compile(ttext))
  local texts = {}
  for i, t in ipairs { a, b } do texts[i] = assert(tmpl:render { Host = t.host, Port = tostring(t.port) }) end
  local W = floor_watch(e.client, docs, hosts)
  local F, FN = floor_write(dir, texts)
  local R, rwrong = floor_reload(a, b)
  local floor = W.median + F.median + R.median
  admin:close()

  res.raw = {
    n = N, convergence_ms = { median = B.ms(S.median), p99 = B.ms(S.p99), max = B.ms(S.max), min = B.ms(S.min) },
    with_new_connection_ms = { median = B.ms(SC.median), p99 = B.ms(SC.p99), max = B.ms(SC.max) },
    supervise_log_ms = { render_write_median = B.ms(SW.median), render_write_p99 = B.ms(SW.p99),
      reload_median = B.ms(SR.median), reload_p99 = B.ms(SR.p99), n = SW.n },
    same_change_ms = { put_to_bench_watch_median = B.ms(SE.median), put_to_bench_watch_p99 = B.ms(SE.p99),
      bench_watch_to_routed_median = B.ms(SA.median), bench_watch_to_routed_p99 = B.ms(SA.p99), n = SE.n },
    samples_ms = (function() local t = {} for i, v in ipairs(conv) do t[i] = B.ms(v) end return t end)(),
    wrong_server = wrong, polls_median = B.stats(polls).median, document_bytes = #docs[a.host],
    config_bytes = #texts[1],
    floor_ms = { total = B.ms(floor), watch = B.ms(W.median), write = B.ms(F.median), reload = B.ms(R.median),
      watch_p99 = B.ms(W.p99), write_p99 = B.ms(F.p99), write_without_fsync = B.ms(FN.median),
      reload_p99 = B.ms(R.p99), reload_wrong = rwrong },
  }
  local flo = ("watch %.2f + write %.2f + RELOAD %.2f ms"):format(W.median * 1e3, F.median * 1e3, R.median * 1e3)
  res:row { figure = "etcd put -> PgBouncer routes, median", value = B.ms(S.median), unit = "ms",
    floor = B.ms(floor), floor_what = flo, goal = "<= 1.5x floor", met = S.median <= 1.5 * floor }
  res:row { figure = "etcd put -> PgBouncer routes, p99", value = B.ms(S.p99), unit = "ms",
    floor = B.ms(W.p99 + F.p99 + R.p99), floor_what = "sum of the parts' p99", goal = "< 20 ms", met = S.p99 < 0.020 }
  res:row { figure = "etcd put -> PgBouncer routes, max", value = B.ms(S.max), unit = "ms" }
  res:row { figure = "· of which put -> watch event (same changes)", value = B.ms(SE.median), unit = "ms",
    floor = B.ms(W.median), floor_what = "put -> watch event measured alone" }
  res:row { figure = "· of which watch event -> routed (supervise)", value = B.ms(SA.median), unit = "ms",
    floor = B.ms(F.median + R.median), floor_what = "write + RELOAD" }
  res:row { figure = "... + new connection reaches it, median", value = B.ms(SC.median), unit = "ms" }
  res:row { figure = "connections that reached the old server", value = wrong, unit = "", goal = "0", met = wrong == 0 }
end

return res:run(main)
