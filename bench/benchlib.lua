-- benchlib: what the benchmark scripts under bench/ share: statistics, the result
-- rows that bench/report.lua turns into the table, an etcd server of our own, our
-- commands as child processes, and /proc readings. Task only where it says so.
--
--   package.path = package.path .. ";bench/?.lua;tests/lua/?.lua"
--   local B = require "benchlib"
--   local s = B.stats{...}                    -- {n, min, median, p99, max, mean}
--   local res = B.result("convergence")       -- res:row{...}; res:save()
local cjson = require "cjson"
local etcd = require "etcd"
local log = require "log"
local proc = require "proc"
local task = require "task"

local M = {}

M.ADDR = "127.0.2." -- every address we listen on is 127.0.2.x
M.bin = rawget(package, "spgb_dir") .. "/stolon-pgbouncer"
M.now = task.now

-- stats(samples) -> {n, min, median, p99, max, mean} (samples are not modified)
function M.stats(xs)
  local s = {}
  for i, v in ipairs(xs) do s[i] = v end
  table.sort(s)
  if #s == 0 then return { n = 0 } end
  local function q(p) return s[math.max(1, math.ceil(#s * p))] end
  local sum = 0
  for _, v in ipairs(s) do sum = sum + v end
  -- an even count's median is the mean of the middle two
  local med = #s % 2 == 1 and s[(#s + 1) // 2] or (s[#s // 2] + s[#s // 2 + 1]) / 2
  return { n = #s, min = s[1], median = med, p99 = q(0.99), max = s[#s], mean = sum / #s }
end

-- ms(seconds) -> milliseconds rounded to 3 decimals (for JSON and tables)
function M.ms(v)
  if v == nil then return nil end
  return math.floor(v * 1e6 + 0.5) / 1e3
end

function M.say(fmt, ...)
  io.stdout:write((fmt .. "\n"):format(...))
  io.stdout:flush()
end

local Result = {}
Result.__index = Result

-- result(name) -> collector of rows for bench/results/<name>.json
function M.result(name)
  return setmetatable({ benchmark = name, rows = {}, raw = {}, started = os.time(), cleanup = {} }, Result)
end

-- res:defer(fn): a clean-up that res:run runs (in reverse order), also when main fails
function Result:defer(fn)
  self.cleanup[#self.cleanup + 1] = fn
end

-- res:run(main) -> exit status: main(), then the clean-ups; a failure becomes a row;
-- prints and saves the result either way. Every bench script ends with it.
function Result:run(main)
  local ok, err = pcall(main)
  for i = #self.cleanup, 1, -1 do pcall(self.cleanup[i]) end
  if not ok then
    io.stderr:write(self.benchmark, ": ", tostring(err), "\n")
    self.error = tostring(err)
    self:row { figure = "benchmark failed", value = tostring(err), met = false }
  end
  self:print()
  self:save()
  return ok and 0 or 1
end

-- res:row{figure=, value=, unit=, floor= (same unit), floor_what=, goal=, met=true|false|nil}
-- ratio = value / floor when both are numbers.
function Result:row(r)
  if r.ratio == nil and type(r.value) == "number" and type(r.floor) == "number" and r.floor > 0 then
    r.ratio = r.value / r.floor
  end
  r.benchmark = r.benchmark or self.benchmark
  self.rows[#self.rows + 1] = r
  return r
end

function Result:save()
  self.seconds = os.time() - self.started
  proc.run { "mkdir", "-p", "bench/results" }
  local f = assert(io.open(("bench/results/%s.json"):format(self.benchmark), "w"))
  f:write(cjson.encode { benchmark = self.benchmark, rows = self.rows, raw = self.raw, seconds = self.seconds }, "\n")
  f:close()
end

-- print the rows of this result as a small table on stdout
function Result:print()
  for _, r in ipairs(self.rows) do
    local v = type(r.value) == "number" and ("%.3f"):format(r.value) or tostring(r.value)
    local fl = type(r.floor) == "number" and ("%.3f"):format(r.floor) or "-"
    local ra = r.ratio and ("%.2f"):format(r.ratio) or "-"
    M.say("  %-44s %12s %-3s floor %10s ratio %6s  goal %-18s %s", r.figure, v, r.unit or "", fl, ra,
      r.goal or "-", r.met == nil and "" or (r.met and "met" or "NOT MET"))
  end
end

-- is_root() -> whether servers must run as the postgres user
function M.is_root()
  local _, out = proc.run { "id", "-u" }
  return (out or ""):match("^%s*0%s*$") ~= nil
end

-- tmpdir(prefix) -> a folder (owned by postgres when we are root)
function M.tmpdir(prefix)
  local _, out = proc.run { "mktemp", "-d", "/tmp/" .. prefix .. ".XXXXXX" }
  local dir = assert(out and out:match("^(%S+)"), "mktemp failed")
  if M.is_root() then proc.run { "chown", "postgres:postgres", dir } end
  return dir
end

-- write(path, text): a file the postgres user can read
function M.write(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
  if M.is_root() then proc.run { "chown", "postgres:postgres", path } end
end

-- wait_until(seconds, fn, [interval]) -> fn's value | nil, last error (support.pg's loop)
M.wait_until = require("support.pg").eventually

-- start_etcd{host=, port=} -> {endpoint=, client=, stop=fn}: one member through
-- the suites' support.etcd (client URL on port, peer on port + 1)
function M.start_etcd(o)
  local srv = require("support.etcd").start { members = 1, hosts = { o.host }, port = o.port - 2 }
  local endpoint = srv.endpoints[1]
  return { endpoint = endpoint, client = assert(etcd.connect { endpoints = { endpoint }, timeout = 3 }),
    stop = function() srv:stop() end }
end

-- ours(args, {as_postgres=, env=, stderr=}) -> proc of `stolon-pgbouncer args...`
function M.ours(args, o)
  o = o or {}
  return assert(proc.spawn(require("support.daemon").argv(args, {
    as_postgres = o.as_postgres, env = o.env, stdout = o.stdout or "null", stderr = o.stderr or "null" })))
end

-- stop(p [, seconds=10]): TERM, then KILL after seconds (support.pg's)
M.stop = require("support.pg").stop

-- read_file(path) -> text | nil, err (also for /proc files)
local read_file = require("fs").read
M.read_file = read_file

-- status(pid) -> {rss_kb=, hwm_kb=, anon_kb=, file_kb=, pss_kb=} from /proc/<pid>/status
-- and /proc/<pid>/smaps_rollup (PSS: each shared page divided by the processes
-- mapping it, so shared libraries count once per node, not once per process;
-- nil when the kernel has no smaps_rollup or we may not read it)
function M.status(pid)
  local t = read_file(("/proc/%d/status"):format(pid))
  if not t then return nil end
  local function kb(field) return tonumber(t:match(field .. ":%s*(%d+)")) end
  local roll = read_file(("/proc/%d/smaps_rollup"):format(pid)) or ""
  return { rss_kb = kb("VmRSS"), hwm_kb = kb("VmHWM"), anon_kb = kb("RssAnon"), file_kb = kb("RssFile"),
    pss_kb = tonumber(roll:match("\nPss:%s*(%d+)")) }
end

local clk_tck
-- cpu_seconds(pid) -> utime + stime in seconds, from /proc/<pid>/stat
function M.cpu_seconds(pid)
  if not clk_tck then
    local _, out = proc.run { "getconf", "CLK_TCK" }
    clk_tck = tonumber(out) or 100
  end
  local f = require("playground.procstat").fields(pid)
  if not f then return nil end
  return (tonumber(f[14]) + tonumber(f[15])) / clk_tck -- utime + stime
end

-- quiet(): our library's info lines would swamp the benchmark's output
function M.quiet()
  log.set_level("warn")
end

return M
