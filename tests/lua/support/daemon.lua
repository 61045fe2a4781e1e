-- Test helper: run our own commands (pauser, supervise, failover, ...) as child
-- processes of the spec, the way an operator runs them.
--
--   local D = require "support.daemon"
--   local d = D.start({"pauser", "--bind-address", "127.0.0.1:1234"}, {as_postgres = true})
--   D.eventually(5, function() return ... end)
--   d:stop()            -- TERM, then KILL after 10 s; returns exit code, stderr
--   D.run({"failover", ...}, {timeout = 60}) -> code, stdout, stderr
local P = require "support.pg"
local stage = require "playground.stage"
local proc = require "proc"
local task = require "task"

local M = {}

M.bin = assert(os.getenv("SPGB_LUA_DIR"), "SPGB_LUA_DIR must be set (make check sets it)") .. "/stolon-pgbouncer"
M.eventually = P.eventually

local Daemon = {}
Daemon.__index = Daemon

-- argv(args, {as_postgres=, env=, stdout=, stderr=}) -> a proc.spawn table for
-- `stolon-pgbouncer args...`. As the postgres user (when root) it runs a copy of the
-- binary that user can read (playground.stage), from a folder it can enter.
local function argv_of(args, o)
  local argv = { M.bin }
  if o.as_postgres and P.is_root() then
    local bin, env = stage.ours()
    argv[1], argv.user, argv.cwd = bin, "postgres", stage.dir()
    for k, v in pairs(o.env or {}) do env[k] = v end
    o = setmetatable({ env = env }, { __index = o })
  end
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  argv.env = o.env
  argv.stdout = o.stdout or "capture"
  argv.stderr = o.stderr or "capture"
  argv.stdin = "null"
  return argv
end
M.argv = argv_of

-- start(args, {as_postgres=, env=}) -> daemon
function M.start(args, o)
  o = o or {}
  local p = assert(proc.spawn(argv_of(args, o)))
  return setmetatable({ p = p, args = args }, Daemon)
end

function Daemon:signal(name)
  return self.p:signal(name)
end

function Daemon:running()
  return self.p:running()
end

-- stop([signal="TERM"], [timeout=10]) -> exit code | nil, signame ; stdout, stderr
function Daemon:stop(sig, timeout)
  if self.p:running() then
    self.p:signal(sig or "TERM")
    local code, s = self.p:wait(timeout or 10)
    if code == nil and s == "proc.wait: timeout" then
      self.p:signal("KILL")
      self.p:wait(5)
    end
  end
  local code, s = self.p:wait(5)
  local out, err = self.p:output()
  return code, s, out, err
end

-- logs() -> what the daemon wrote to stderr so far
function Daemon:logs()
  local _, err = self.p:output()
  return err
end

-- run(args, {timeout=60, as_postgres=, env=}) -> code, stdout, stderr
function M.run(args, o)
  o = o or {}
  local argv = argv_of(args, o)
  argv.timeout = o.timeout or 60
  return proc.run(argv)
end

-- A file holding text, readable by the postgres user; removed by the caller.
function M.write_file(path, text, mode)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
  if mode then proc.run { "chmod", mode, path } end
  if P.is_root() then proc.run { "chown", "postgres:postgres", path } end
  return path
end

M.sleep = task.sleep

return M
