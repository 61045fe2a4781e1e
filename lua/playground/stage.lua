-- playground.stage: our own binary, staged where the user that runs it can read it.
--
-- As root, the playground, the specs and the benchmarks start our daemons (pauser,
-- supervise) as the `postgres` user, which cannot enter a checkout under /root (mode
-- 0700) or any other folder it may not read. stage.ours() copies the binary, lua/ and
-- policies/ once per process into a temporary folder everyone can read, and gives the
-- environment that points the daemons at that copy. When we are not root the daemons
-- run as ourselves and use the checkout directly.
--
--   local stage = require "playground.stage"
--   local bin, env = stage.ours()   -- env = {SPGB_LUA_DIR = ...} (a fresh table)
--
-- Task only (it runs cp); raises when the copy fails. The copy is removed when the
-- host's Lua state closes.
local pgnode = require "playground.pgnode"
local proc = require "proc"

local M = {}

local staged -- {dir=, bin=, guard=} once copied; guard's __gc removes the copy at exit

local function source_dir()
  return assert(rawget(package, "spgb_dir"), "playground.stage: the host did not set package.spgb_dir")
end

local function run(argv)
  local code, out, err = proc.run(argv)
  if code ~= 0 then
    error(("playground.stage: %s failed: %s%s"):format(argv[1], tostring(out or ""), tostring(err or "")), 3)
  end
end

local function copy()
  local src = source_dir()
  local dir = assert(pgnode.tmpdir("spgb-stage"))
  run { "cp", "-R", src .. "/stolon-pgbouncer", src .. "/lua", src .. "/policies", dir .. "/" }
  run { "chmod", "-R", "u=rwX,go=rX", dir }
  staged = { dir = dir, bin = dir .. "/stolon-pgbouncer",
    -- os.execute, not proc.run: a __gc may not yield.
    guard = setmetatable({}, { __gc = function() os.execute(("rm -rf '%s'"):format(dir)) end }) }
  return staged
end

-- ours() -> path of the binary to run, env table for it ({} when not staged).
-- Yields on the first call as root (the copy); later calls return the same copy.
function M.ours()
  if not pgnode.is_root() then
    return source_dir() .. "/stolon-pgbouncer", {}
  end
  local s = staged or copy()
  return s.bin, { SPGB_LUA_DIR = s.dir }
end

-- The folder of the copy (nil before the first ours() as root, or when not root).
function M.dir()
  return staged and staged.dir
end

return M
