-- bench/report.lua: the one table of bench/run.sh. Reads bench/results/*.json (ours:
-- {benchmark, rows}; the older etcd, pgbouncer and http scripts' own shapes), prints
-- benchmark | figure | value | floor/baseline | ratio | goal | met?, with the machine
-- and the date, and writes bench/results/all.json.
--   stolon-pgbouncer run bench/report.lua [STATUS_FILE]
-- STATUS_FILE (from run.sh) holds "name exit_code seconds" lines.
local cjson = require "cjson.safe"
local proc = require "proc"

local read = require("fs").read -- text | nil, err

local function json(name)
  local t = read("bench/results/" .. name .. ".json")
  return t and cjson.decode(t)
end

local function sh(argv)
  local _, out = proc.run(argv)
  return ((out or ""):gsub("%s+$", ""))
end

local rows = {}
local function add(r) rows[#rows + 1] = r end

-- the three scripts that were there before run.sh
local function older()
  local e = json("etcd")
  if e and e.put_to_event_us then
    local p = e.put_to_event_us
    add { benchmark = "etcd", figure = "put -> watch event, median (Lua API)", value = p.lua.median / 1e3, unit = "ms",
      floor = p.c.median / 1e3, floor_what = "plain libcurl C client", goal = "<= 1.5x", met = p.ratio_median <= 1.5 }
    add { benchmark = "etcd", figure = "put -> watch event, p99", value = p.lua.p99 / 1e3, unit = "ms",
      floor = p.c.p99 / 1e3, goal = "< 5 ms", met = p.lua.p99 < 5000 }
    add { benchmark = "etcd", figure = "sequential gets/s", value = e.gets_per_s.lua, unit = "/s",
      floor = e.gets_per_s.c, floor_what = "plain libcurl C client" }
  end
  local b = json("pgbouncer")
  if b and b.lua_us then
    add { benchmark = "pgbouncer", figure = "PAUSE+RESUME round trip, median", value = b.lua_us.median / 1e3, unit = "ms",
      floor = b.baseline_us.median / 1e3, floor_what = "blocking libpq", goal = ("<= %sx"):format(b.goal),
      met = b.ratio_median <= b.goal }
  end
  local h = json("http")
  if h and h.ours then
    add { benchmark = "http", figure = "http.serve requests/s (wrk)", value = h.ours.requests_per_s, unit = "/s",
      floor = h.baseline_c_libmicrohttpd.requests_per_s, floor_what = "libmicrohttpd alone (C)" }
    add { benchmark = "http", figure = "http.serve p99 under wrk", value = h.ours.p99_ms, unit = "ms",
      floor = h.baseline_c_libmicrohttpd.p99_ms }
  end
end

older()
local results = {}
for _, name in ipairs { "convergence", "fanout", "failover", "killed_failover", "patroni", "footprint" } do
  local r = json(name)
  if r then
    results[name] = r
    for _, row in ipairs(r.rows or {}) do
      row.benchmark = row.benchmark or name
      add(row)
    end
  else
    add { benchmark = name, figure = "no result (did it run?)", met = false }
  end
end

local status = {}
for line in (read(arg[1] or "") or ""):gmatch("[^\n]+") do
  local name, code, secs = line:match("^(%S+) (%S+) (%S+)")
  if name then status[#status + 1] = { name = name, exit = tonumber(code), seconds = tonumber(secs) } end
end

local machine = {
  nproc = tonumber(sh { "nproc" }), kernel = sh { "uname", "-srm" },
  cpu = (read("/proc/cpuinfo") or ""):match("model name%s*:%s*([^\n]+)") or "?",
  memory_kb = tonumber((read("/proc/meminfo") or ""):match("MemTotal:%s*(%d+)")),
  date = sh { "date", "-u", "+%Y-%m-%dT%H:%M:%SZ" },
  commit = sh { "git", "rev-parse", "--short", "HEAD" },
  postgres = sh { "/usr/lib/postgresql/15/bin/postgres", "--version" },
  pgbouncer = sh { "/usr/sbin/pgbouncer", "--version" }:match("^[^\n]*"),
  etcd = sh { "etcd", "--version" }:match("^[^\n]*"),
}

local function num(v, unit)
  if type(v) ~= "number" then return v == nil and "-" or tostring(v) end
  if unit == "/s" then return ("%.0f"):format(v) end
  if v == math.floor(v) and math.abs(v) < 1e9 and unit ~= "ms" then return ("%d"):format(v) end
  if math.abs(v) >= 100 then return ("%.1f"):format(v) end
  return ("%.3f"):format(v)
end

local out = {}
local function p(fmt, ...) out[#out + 1] = fmt:format(...) end
p("stolon-pgbouncer benchmarks, %s, commit %s", machine.date, machine.commit)
p("machine: %d cores (%s), %s, %.1f GB RAM; %s, %s, %s", machine.nproc or 0, machine.cpu, machine.kernel,
  (machine.memory_kb or 0) / 1048576, machine.postgres, machine.pgbouncer, machine.etcd)
p("")
p("| benchmark | figure | value | floor/baseline | ratio | goal | met? |")
p("|---|---|---|---|---|---|---|")
local unmet = 0
for _, r in ipairs(rows) do
  local met = r.met == nil and "" or (r.met and "yes" or "**no**")
  if r.met == false then unmet = unmet + 1 end
  local unit = r.unit and r.unit ~= "" and (" " .. r.unit) or ""
  p("| %s | %s | %s%s | %s | %s | %s | %s |", r.benchmark, (r.figure or ""):gsub("^%s+", "· "), num(r.value, r.unit),
    unit, r.floor and (num(r.floor, r.unit) .. unit .. (r.floor_what and (" (" .. r.floor_what .. ")") or "")) or "-",
    r.ratio and ("%.2f"):format(r.ratio) or (type(r.value) == "number" and type(r.floor) == "number" and r.floor > 0
      and ("%.2f"):format(r.value / r.floor) or "-"),
    r.goal or "", met)
end
p("")
local st = {}
for _, s in ipairs(status) do
  st[#st + 1] = ("%s %s (%.0f s)"):format(s.name, s.exit == 0 and "ok" or ("exit " .. s.exit), s.seconds)
end
if #st > 0 then p("scripts: %s", table.concat(st, ", ")) end
p("goals missed: %d (see docs/benchmarks.md for what dominates each)", unmet)
io.stdout:write(table.concat(out, "\n"), "\n")

local all = { machine = machine, rows = rows, scripts = status, raw = results,
  older = { etcd = json("etcd"), pgbouncer = json("pgbouncer"), http = json("http") } }
local f = assert(io.open("bench/results/all.json", "w"))
f:write(cjson.encode(all), "\n")
f:close()
return 0
