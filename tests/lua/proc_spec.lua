-- proc: child processes as the host runs them. Scripts that could take the host down
-- run in a child host of their own, so a failure shows as its exit status.
local proc = require "proc"
local fs = require "fs"

local BIN = assert(os.getenv("SPGB_LUA_DIR")) .. "/stolon-pgbouncer"

-- Run Lua source in a child host: code, stdout, stderr | nil, err.
local function run_script(src, opts)
  local dir = assert(fs.tmpdir("proc_spec"))
  local path = dir .. "/script.lua"
  assert(fs.write_atomic(path, src))
  local argv = { BIN, "run", path, timeout = 30 }
  for k, v in pairs(opts or {}) do argv[k] = v end
  local code, out, err = proc.run(argv)
  fs.remove(path)
  fs.remove(dir)
  return code, out, err
end

describe("proc and SIGPIPE", function()
  it("a child that exits without reading its stdin does not kill the host", function()
    local code, out, err = run_script([[
      local proc = require "proc"
      local p = assert(proc.spawn { "true", stdin = string.rep("x", 4 * 1024 * 1024) })
      io.write("exit ", tostring(p:wait(10)), "\n")
    ]])
    assert.equals("exit 0\n", out, err)
    assert.equals(0, code)
  end)

  it("the host survives writing to a stderr nobody reads", function()
    local dir = assert(fs.tmpdir("proc_spec"))
    local script, mark = dir .. "/log.lua", dir .. "/mark"
    assert(fs.write_atomic(script, ([[
      local task, log, fs = require "task", require "log", require "fs"
      task.sleep(0.2) -- the reader (true) is gone by now
      for i = 1, 100 do log.info { event = "spam", msg = ("x"):rep(1000), i = i } end
      assert(fs.write_atomic(%q, "alive"))
    ]]):format(mark)))
    -- the mark is written only if the host outlived its log lines
    local code = proc.run { "sh", "-c", '"$0" run "$1" 2>&1 >/dev/null | true',
      BIN, script, timeout = 30 }
    assert.equals(0, code)
    assert.equals("alive", fs.read(mark))
    fs.remove(mark)
    fs.remove(script)
    fs.remove(dir)
  end)

  it("children start with SIGPIPE at its default, not ignored like the host's", function()
    local SIGPIPE = 1 << 12 -- bit 13 - 1 of SigIgn
    local function ignored(status) return tonumber(status:match("SigIgn:%s*(%x+)"), 16) & SIGPIPE end
    assert.equals(SIGPIPE, ignored(assert(fs.read("/proc/self/status"))))
    local code, status = proc.run { "cat", "/proc/self/status", timeout = 10 }
    assert.equals(0, code)
    assert.equals(0, ignored(status))
  end)
end)
