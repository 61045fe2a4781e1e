-- PAUSE+RESUME round trip through the Lua API (pgbouncer.connect, a:pause(),
-- a:resume()) versus plain blocking libpq (bench/pause_baseline.c) against the same
-- PgBouncer in the same run. Started by bench/pgbouncer.sh:
--   stolon-pgbouncer run bench/pgbouncer_pause.lua BASELINE_BIN [N] [OUT.json]
-- Samples are taken in interleaved chunks so drift hits both sides alike.
package.path = "tests/lua/?.lua;" .. package.path
local P = require "support.pg"
local pgbouncer = require "pgbouncer"
local proc = require "proc"
local task = require "task"

local baseline_bin = assert(arg[1], "usage: pgbouncer_pause.lua BASELINE_BIN [N] [OUT.json]")
local n = tonumber(arg[2] or "500")
local out_path = arg[3]
local chunks = 5

local function stats(samples)
  local s = {}
  for i, v in ipairs(samples) do s[i] = v end
  table.sort(s)
  local function pct(p) return s[math.max(1, math.ceil(#s * p))] end
  local sum = 0
  for _, v in ipairs(s) do sum = sum + v end
  return { n = #s, median = pct(0.5), p99 = pct(0.99), mean = sum / #s, min = s[1], max = s[#s] }
end

local function run_lua(admin, count, into)
  for _ = 1, count do
    local t0 = task.now()
    assert(admin:pause())
    assert(admin:resume())
    into[#into + 1] = (task.now() - t0) * 1e6
  end
end

local function run_baseline(conninfo, count, into)
  local code, out, err = proc.run({ baseline_bin, conninfo, tostring(count), timeout = 120 })
  if code ~= 0 then error("baseline failed: " .. tostring(out) .. tostring(err)) end
  for line in out:gmatch("[^\n]+") do into[#into + 1] = tonumber(line) end
end

local db = P.start_postgres{ host = "127.0.0.1" }
local b = P.start_pgbouncer{ host = "127.0.0.1", target = db }
local ok, err = pcall(function()
  local admin = assert(pgbouncer.connect(b:admin_options()))
  local conninfo = ("host=%s port=%d user=%s password=%s dbname=pgbouncer"):format(
    b.host, b.port, b.admin_user, b.users[b.admin_user])
  local warm = {}
  run_lua(admin, 50, warm)
  run_baseline(conninfo, 50, warm)
  local lua_s, base_s = {}, {}
  local per = math.ceil(n / chunks)
  for c = 1, chunks do
    local count = math.min(per, n - (c - 1) * per)
    if count <= 0 then break end
    run_baseline(conninfo, count, base_s)
    run_lua(admin, count, lua_s)
  end
  admin:close()
  local L, B = stats(lua_s), stats(base_s)
  local ratio_median, ratio_p99 = L.median / B.median, L.p99 / B.p99
  print(("PAUSE+RESUME round trip, N=%d each, PgBouncer %s"):format(n, "1.18"))
  print(("%-26s %10s %10s %10s"):format("", "median us", "p99 us", "mean us"))
  print(("%-26s %10.1f %10.1f %10.1f"):format("C, blocking libpq", B.median, B.p99, B.mean))
  print(("%-26s %10.1f %10.1f %10.1f"):format("Lua API (pgbouncer.*)", L.median, L.p99, L.mean))
  print(("%-26s %10.2f %10.2f   (goal <= 1.2)"):format("ratio Lua / C", ratio_median, ratio_p99))
  if out_path then
    local f = assert(io.open(out_path, "w"))
    f:write(('{"benchmark":"pgbouncer_pause_resume","n":%d,'
      .. '"baseline_us":{"median":%.1f,"p99":%.1f,"mean":%.1f},'
      .. '"lua_us":{"median":%.1f,"p99":%.1f,"mean":%.1f},'
      .. '"ratio_median":%.3f,"ratio_p99":%.3f,"goal":1.2}\n'):format(
      n, B.median, B.p99, B.mean, L.median, L.p99, L.mean, ratio_median, ratio_p99))
    f:close()
    print("wrote " .. out_path)
  end
end)
b:destroy()
db:destroy()
if not ok then error(err, 0) end
