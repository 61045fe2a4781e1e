-- bench/etcd_watch.lua ENDPOINT BASELINE_BIN [N_LATENCY N_GETS]
-- Put-to-watch-event latency and sequential gets/s through the Lua API, against a
-- plain libcurl C client (the baseline binary) in the same run. Prints a table and
-- writes bench/results/etcd.json. Run by bench/etcd.sh.
local etcd = require "etcd"
local task = require "task"
local proc = require "proc"
local cjson = require "cjson"

local ep, baseline = arg[1], arg[2]
local N, NGETS = tonumber(arg[3] or 1000), tonumber(arg[4] or 3000)
assert(ep and baseline, "usage: etcd_watch.lua ENDPOINT BASELINE_BIN [N_LATENCY N_GETS]")

local function stats(xs)
  table.sort(xs)
  local function q(p) return xs[math.max(1, math.ceil(p * #xs))] end
  return { median = q(0.5), p99 = q(0.99), n = #xs }
end

local function lua_run()
  local c = etcd.connect { endpoints = { ep } }
  local w <close> = c:watch("bench/w")
  assert(w:next(0.5) == nil) -- stream created
  local lat = {}
  for i = 1, N do
    local t0 = task.now()
    assert(c:put("bench/w", "v"))
    local evs = assert(w:next(5))
    lat[i] = (task.now() - t0) * 1e6
    assert(#evs == 1)
  end
  local t0 = task.now()
  for _ = 1, NGETS do assert(c:get("bench/w")) end
  return stats(lat), NGETS / (task.now() - t0)
end

local function c_run()
  local code, out, err = proc.run { baseline, ep, tostring(N), tostring(NGETS), timeout = 300 }
  assert(code == 0, "baseline failed: " .. tostring(err))
  local lat = {}
  for v in out:match("latencies_us:([^\n]*)"):gmatch("%S+") do lat[#lat + 1] = tonumber(v) end
  return stats(lat), tonumber(out:match("gets_per_s: (%S+)"))
end

local cl, cg = c_run()
local ll, lg = lua_run()
local res = {
  put_to_event_us = {
    lua = { median = ll.median, p99 = ll.p99 }, c = { median = cl.median, p99 = cl.p99 },
    ratio_median = ll.median / cl.median, ratio_p99 = ll.p99 / cl.p99, n = N,
  },
  gets_per_s = { lua = lg, c = cg, ratio = cg / lg, n = NGETS },
  goal = { ratio_max = 1.5, p99_max_us = 5000 },
}
res.goal_met = res.put_to_event_us.ratio_median <= 1.5 and ll.p99 < 5000

print(("%-26s %12s %12s %8s"):format("etcd (loopback)", "Lua API", "plain C", "ratio"))
print(("%-26s %12.0f %12.0f %8.2f"):format("put->event median (us)", ll.median, cl.median, res.put_to_event_us.ratio_median))
print(("%-26s %12.0f %12.0f %8.2f"):format("put->event p99 (us)", ll.p99, cl.p99, res.put_to_event_us.ratio_p99))
print(("%-26s %12.0f %12.0f %8.2f"):format("sequential gets/s", lg, cg, res.gets_per_s.ratio))
print(("goal (median ratio <= 1.5, p99 < 5 ms): %s"):format(res.goal_met and "met" or "NOT met"))

proc.run { "mkdir", "-p", "bench/results" }
local f = assert(io.open("bench/results/etcd.json", "w"))
f:write(cjson.encode(res), "\n")
f:close()
