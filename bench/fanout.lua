-- bench/fanout.lua [ROUNDS=40]: pause and resume 1, 3, 16 and 64 PgBouncers through
-- their pausers from one process, the way `failover` does (lua/failover.lua's each():
-- task.all over lua/pauser_client.lua clients). Run by bench/run.sh.
--
-- One Postgres (127.0.2.11), 16 PgBouncers and 16 `pauser` daemons (ours, child
-- processes) on 127.0.2.30-45, and for the 64: 48 cheap fake pausers
-- (bench/fake_pausers.c, one small C process, 127.0.2.50 ports 22700-22763,
-- answering at once: pausers on other machines). Each round times, for each size in turn (the
-- order rotates every round so drift hits every size alike): every PAUSE answered,
-- then every RESUME answered. The baseline is the single PgBouncer, same run.
--
-- What is ours (issue 15): 16 PgBouncers, 16 pausers and this client on 2 shared
-- cores cannot show a fan-out as fast as one, so the figures that are the failover's
-- own are (1) this process's CPU per round, by size, and (2) the wall time "PAUSE
-- sent to all" -> "all answered" minus the slowest single PgBouncer's own PAUSE (each
-- PgBouncer's PAUSE timed alone on its admin console, median of 10; the fakes have
-- none), and how both grow per added pauser (goal: <= 50 us). The 16 real pausers
-- and PgBouncers share the 2 cores with the client, so "1 -> 16" and "1 -> 64"
-- (16 real + 48 fakes) carry their CPU too; "fakes 1 -> 64" (64 fakes only, another
-- 1 fake as its baseline, in the same rotation) leaves on the cores only the client
-- and one small process answering: what each added pauser costs the failover itself,
-- as with pausers on their own machines.
-- Writes bench/results/fanout.json.
package.path = package.path .. ";bench/?.lua;tests/lua/?.lua"
local B = require "benchlib"
local P = require "support.pg"
local failover = require "failover"
local log = require "log"
local pgbouncer = require "pgbouncer"
local pauser_client = require "pauser_client"
local proc = require "proc"
local task = require "task"
local httpc = require "httpc"

local ROUNDS = tonumber(arg[1] or "40")
local PG_PORT, BOUNCER_PORT, PAUSER_PORT = 22602, 22600, 22601
local SIZES = { 1, 3, 16, 64 } -- the first n of 16 real pausers, then 48 fakes
local FAKE_SIZES = { 1, 64 } -- fakes only: the first n of 64
local FAKE_HOST, FAKE_PORT = B.ADDR .. "50", 22700
local TOKEN = "bench-fanout-token"

B.quiet()
local res = B.result("fanout")
local function defer(fn) res:defer(fn) end

local function main()
  B.say("fanout: starting Postgres, 16 PgBouncers and 16 pausers on 127.0.2.30-45 ...")
  local db = P.start_postgres { host = B.ADDR .. "11", port = PG_PORT }
  defer(function() db:destroy() end)
  local clients, pausers, bouncers = {}, {}, {}
  for i = 1, 16 do
    local host = B.ADDR .. (29 + i)
    local b = P.start_pgbouncer { host = host, port = BOUNCER_PORT, target = db }
    defer(function() b:destroy() end)
    local p = B.ours({ "pauser", "--bind-address", ("%s:%d"):format(host, PAUSER_PORT),
      "--pgbouncer-socket-dir", b.socket_dir, "--pgbouncer-port", tostring(BOUNCER_PORT),
      "--metrics-port", "0" }, { as_postgres = true, env = { STBOUNCER_FAILOVER_TOKEN = TOKEN },
      stderr = "file:" .. b.dir .. "/pauser.log" })
    defer(function() B.stop(p) end)
    pausers[i], bouncers[i] = p, b
    clients[i] = pauser_client.new { name = host, host = host, port = PAUSER_PORT, token = TOKEN }
  end
  local fake_bin = (os.getenv("BUILD") or "build") .. "/bench/fake_pausers"
  local cc = 'mkdir -p "$(dirname "$1")" && cc -std=c11 -O2 -Wall -Wextra -Werror -o "$1" bench/fake_pausers.c'
  assert(proc.run { "sh", "-c", cc, "sh", fake_bin } == 0, "cannot build bench/fake_pausers.c")
  local fakes = assert(proc.spawn { fake_bin, FAKE_HOST, tostring(FAKE_PORT), "64", stdout = "null" })
  defer(function() B.stop(fakes) end)
  local fake_clients = {}
  for i = 1, 64 do
    fake_clients[i] = pauser_client.new { name = "fake" .. i, host = FAKE_HOST, port = FAKE_PORT + i - 1, token = TOKEN }
  end
  for i = 17, 64 do clients[i] = fake_clients[i - 16] end
  for i, c in ipairs(clients) do
    assert(B.wait_until(20, function() return c:health(1) end), "pauser " .. i .. " not healthy")
  end
  for i = 49, 64 do assert(B.wait_until(20, function() return fake_clients[i]:health(1) end)) end

  -- each real PgBouncer's own PAUSE, alone on its admin console (no HTTP, no pauser)
  local own = {}
  for i, b in ipairs(bouncers) do
    local admin = assert(pgbouncer.connect { socket_dir = b.socket_dir, port = BOUNCER_PORT, user = "pgbouncer" })
    local xs = {}
    for j = 1, 10 do
      local t0 = task.now()
      assert(admin:pause())
      xs[j] = task.now() - t0
      assert(admin:resume())
    end
    admin:close()
    own[i] = B.stats(xs).median
  end
  -- slowest_own(n): the slowest own PAUSE among the first n pausers' PgBouncers
  local function slowest_own(n)
    local m = 0
    for i = 1, math.min(n, #own) do m = math.max(m, own[i]) end
    return m
  end

  -- one failover-like object per size, using the real each()
  local quiet_log = log.with { component = "bench-fanout" }
  -- a set: the pausers of one size, keyed n (mixed) or "fakes n" (fakes only);
  -- real[key]: how many of them are real pausers (the first ones), fake[key]: any fake
  local fo, KEYS, real, fake = {}, {}, {}, {}
  local function add_set(key, from, n, n_real)
    local subset = {}
    for i = 1, n do subset[i] = from[i] end
    fo[key] = setmetatable({ pausers = subset, log = quiet_log, opts = {}, ctx = {} }, failover)
    KEYS[#KEYS + 1], real[key], fake[key] = key, n_real, n > n_real
  end
  for _, n in ipairs(SIZES) do add_set(n, clients, n, math.min(n, 16)) end
  for _, n in ipairs(FAKE_SIZES) do add_set("fakes " .. n, fake_clients, n, 0) end
  local function round(n)
    local f = fo[n]
    local t0 = task.now()
    assert(f:each("pgbouncer_pause", function(c) return c:pause(5, 25, 7) end))
    local t1 = task.now()
    assert(f:each("pgbouncer_resume", function(c) return c:resume(5) end))
    local t2 = task.now()
    return t1 - t0, t2 - t1
  end
  -- Two HTTP clients, same run: ours (httpc's own, src/hc.c: the default for
  -- http:// to an address) and libcurl's (what the pauser calls used before, the
  -- baseline). Rounds alternate between them so drift hits both alike.
  local CLIENTS = { "auto", "curl" }
  for _, cl in ipairs(CLIENTS) do
    httpc.set_client(cl)
    for _ = 1, 5 do for _, n in ipairs(KEYS) do round(n) end end -- warm-up
  end

  B.say("fanout: %d rounds ...", ROUNDS)
  local by = {}
  for _, cl in ipairs(CLIENTS) do
    by[cl] = { pause = {}, resume = {}, both = {} }
    for _, n in ipairs(KEYS) do by[cl].pause[n], by[cl].resume[n], by[cl].both[n] = {}, {}, {} end
  end
  for r = 1, ROUNDS do
    for k = 0, #KEYS - 1 do
      local n = KEYS[(r + k) % #KEYS + 1]
      for j = 0, 1 do
        local cl = CLIENTS[(r + j) % 2 + 1]
        httpc.set_client(cl)
        local p, q = round(n)
        local t = by[cl]
        t.pause[n][#t.pause[n] + 1], t.resume[n][#t.resume[n] + 1], t.both[n][#t.both[n] + 1] = p, q, p + q
        task.sleep(0.002)
      end
    end
  end
  httpc.set_client("auto")
  local pause, resume, both = by.auto.pause, by.auto.resume, by.auto.both

  -- Where the time goes: CPU seconds per round, of this (failover-like) process and
  -- of the pausers and PgBouncers, over a block of rounds of one size. On a machine
  -- with few cores the fan-out cannot finish before (all CPU used) / cores.
  local function self_pid()
    return tonumber(B.read_file("/proc/self/stat"):match("^(%d+)"))
  end
  local me = self_pid()
  local function cpu(list)
    local sum = 0
    for _, pid in ipairs(list) do sum = sum + (B.cpu_seconds(pid) or 0) end
    return sum
  end
  local nproc = tonumber((select(2, proc.run { "nproc" }))) or 1
  local function cpu_blocks(n, cpu_per)
    local servers = {}
    for i = 1, real[n] do
      servers[#servers + 1] = pausers[i]:pid()
      servers[#servers + 1] = bouncers[i].proc:pid()
    end
    if fake[n] then servers[#servers + 1] = fakes:pid() end
    local R = ROUNDS * 5
    local c0, s0, t0 = cpu { me }, cpu(servers), task.now()
    for _ = 1, R do round(n) end
    local c1, s1, t1 = cpu { me }, cpu(servers), task.now()
    cpu_per[n] = { client = (c1 - c0) / R, servers = (s1 - s0) / R, wall = (t1 - t0) / R }
  end
  local cpu_by = { auto = {}, curl = {} }
  for _, n in ipairs { 1, 16, 64, "fakes 1", "fakes 64" } do
    for _, cl in ipairs(CLIENTS) do
      httpc.set_client(cl)
      cpu_blocks(n, cpu_by[cl])
    end
  end
  httpc.set_client("auto")
  local cpu_per = cpu_by.auto

  local st = {}
  res.raw = { rounds = ROUNDS, sizes = {} }
  for _, n in ipairs(KEYS) do
    st[n] = { pause = B.stats(pause[n]), resume = B.stats(resume[n]), both = B.stats(both[n]) }
    res.raw.sizes[tostring(n)] = {
      pause_ms = { median = B.ms(st[n].pause.median), p99 = B.ms(st[n].pause.p99), max = B.ms(st[n].pause.max) },
      resume_ms = { median = B.ms(st[n].resume.median), p99 = B.ms(st[n].resume.p99) },
      pause_resume_ms = { median = B.ms(st[n].both.median), p99 = B.ms(st[n].both.p99) },
    }
  end
  res.raw.cpu_per_round_ms = {}
  for n, c in pairs(cpu_per) do
    res.raw.cpu_per_round_ms[tostring(n)] = { client = B.ms(c.client), servers = B.ms(c.servers), wall = B.ms(c.wall) }
  end
  res.raw.nproc = nproc
  local one = st[1]
  for _, n in ipairs(SIZES) do
    local goal = n == 16 and "<= 1.3x one" or nil
    res:row { figure = ("pause %d %s, median"):format(n, n > 16 and "pausers (48 fake)" or "PgBouncer(s)"),
      value = B.ms(st[n].pause.median), unit = "ms",
      floor = B.ms(one.pause.median), floor_what = "pause 1", goal = goal,
      met = (n == 16 or nil) and st[n].pause.median <= 1.3 * one.pause.median }
  end
  for _, n in ipairs(SIZES) do
    local goal = n == 16 and "<= 1.3x one" or nil
    res:row { figure = ("resume %d %s, median"):format(n, n > 16 and "pausers (48 fake)" or "PgBouncer(s)"),
      value = B.ms(st[n].resume.median), unit = "ms",
      floor = B.ms(one.resume.median), floor_what = "resume 1", goal = goal,
      met = (n == 16 or nil) and st[n].resume.median <= 1.3 * one.resume.median }
  end
  local c16 = cpu_per[16]
  local bound = math.max(c16.client, (c16.client + c16.servers) / nproc)
  res:row { figure = "pause+resume 16, median", value = B.ms(st[16].both.median), unit = "ms",
    floor = B.ms(bound), floor_what = ("CPU bound: max(client %.2f, all %.2f / %d cores) ms"):format(
      c16.client * 1e3, (c16.client + c16.servers) * 1e3, nproc) }
  res:row { figure = "· client (failover process) CPU per 16-round", value = B.ms(c16.client), unit = "ms",
    floor = B.ms(cpu_per[1].client * 16), floor_what = "16 x its CPU for one" }

  -- ours: the fan-out's wall minus the slowest PgBouncer's own PAUSE, and our CPU
  res.raw.own_pause_ms = {}
  for i, v in ipairs(own) do res.raw.own_pause_ms[i] = B.ms(v) end
  local function own_of(n) return slowest_own(real[n]) end -- fakes: none
  local function ours_of(cl)
    local o = {}
    for _, n in ipairs(KEYS) do
      local xs = {}
      for k, v in ipairs(by[cl].pause[n]) do xs[k] = v - own_of(n) end
      o[n] = B.stats(xs).median
    end
    return o
  end
  local ours, curls = ours_of("auto"), ours_of("curl")
  for _, n in ipairs(KEYS) do
    res:row { figure = ("ours: pause %s, wall - slowest own PAUSE (%.3f ms), median"):format(n, own_of(n) * 1e3),
      value = B.ms(ours[n]), unit = "ms", floor = B.ms(curls[n]), floor_what = "the same with libcurl" }
  end
  res.raw.ours_pause_ms, res.raw.curl_pause_ms = {}, {}
  for n, v in pairs(ours) do res.raw.ours_pause_ms[tostring(n)] = B.ms(v) end
  for n, v in pairs(curls) do res.raw.curl_pause_ms[tostring(n)] = B.ms(v) end
  -- per added pauser from a to b: [1] -> [16], [1] -> [64] (real pausers among
  -- them) and fakes only; the goal is on the fakes-only line, the failover's own
  local GROWTH = { { 1, 16, "1 -> 16" }, { 1, 64, "1 -> 64 (16 real + 48 fakes)" },
    { "fakes 1", "fakes 64", "fakes only, 1 -> 64", goal = true } }
  -- per_added(g, t) -> seconds per pauser added from g[1] to g[2], t by set key
  local function per_added(g, t) return (t[g[2]] - t[g[1]]) / (#fo[g[2]].pausers - #fo[g[1]].pausers) end
  local function client_cpu(by_key)
    local t = {}
    for k, c in pairs(by_key) do t[k] = c.client end
    return t
  end
  for _, g in ipairs(GROWTH) do
    local per, cper = per_added(g, ours), per_added(g, curls)
    res:row { figure = ("ours: growth per added pauser, %s (wall)"):format(g[3]), value = per * 1e6, unit = "us",
      floor = cper * 1e6, floor_what = "the same with libcurl", goal = g.goal and "<= 50 us" or nil,
      met = g.goal and per <= 50e-6 or nil }
  end
  for _, n in ipairs { 1, 16, 64, "fakes 64" } do
    res:row { figure = ("failover process CPU per pause+resume round, %s pausers"):format(n),
      value = B.ms(cpu_per[n].client), unit = "ms", floor = B.ms(cpu_by.curl[n].client),
      floor_what = "the same with libcurl" }
  end
  local cpu_ours, cpu_curl = client_cpu(cpu_per), client_cpu(cpu_by.curl)
  for _, g in ipairs(GROWTH) do
    local per, cper = per_added(g, cpu_ours), per_added(g, cpu_curl)
    res:row { figure = ("failover process CPU per added pauser, %s (pause+resume)"):format(g[3]),
      value = per * 1e6, unit = "us", floor = cper * 1e6, floor_what = "the same with libcurl" }
  end
end

return res:run(main)
