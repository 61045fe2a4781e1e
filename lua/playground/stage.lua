-- playground.stage: our own binary, staged where the user that runs it can read it.
--
-- As root, the playground, the specs and the benchmarks start our daemons (pauser,
-- supervise) as the `postgres` user, which cannot enter a checkout under /root (mode
-- 0700) or any other folder it may not read. stage.ours() copies the binary once per
-- process into a temporary folder everyone can read, and gives the environment that
-- makes the copy use its embedded lua/ and policies/ (built from this checkout by the
-- same make). When we are not root the daemons run as ourselves and use the checkout.
--
--   local stage = require "playground.stage"
--   local bin, env = stage.ours()   -- env = {SPGB_LUA_DIR = ""} (a fresh table)
--
-- Task only (it runs cp); raises when the copy fails. The copy is removed when the
-- host's Lua state closes (or by whoever set $SPGB_STAGE_DIR).
local fs = require "fs"
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

-- The folder is $SPGB_STAGE_DIR when set (make check-lua makes one and removes it after
-- the run: busted ends with os.exit, which skips the __gc below), else a new one.
local function copy()
  local src = source_dir()
  local given = os.getenv("SPGB_STAGE_DIR")
  local dir = given ~= "" and given or assert(pgnode.tmpdir("spgb-stage"))
  local bin = dir .. "/stolon-pgbouncer"
  run { "cp", src .. "/stolon-pgbouncer", bin }
  run { "chmod", "0755", dir, bin }
  staged = { dir = dir, bin = bin }
  if not given or given == "" then
    -- fs.remove, not proc.run: a __gc may not yield.
    staged.guard = setmetatable({}, { __gc = function()
      fs.remove(bin)
      fs.remove(dir)
    end })
  end
  return staged
end

-- ours() -> path of the binary to run, env table for it ({} when not staged: we are
-- not root and the daemons run as ourselves, from the checkout).
-- Yields on the first call as root (the copy); later calls return the same copy.
function M.ours()
  if not pgnode.is_root() then
    return source_dir() .. "/stolon-pgbouncer", {}
  end
  local s = staged or copy()
  return s.bin, { SPGB_LUA_DIR = "" }
end

-- The folder of the copy (nil before the first ours() as root, or when not root).
function M.dir()
  return staged and staged.dir
end

return M
