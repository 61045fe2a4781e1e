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

describe("proc.spawn", function()
  it("creates a file: log 0600 and appends to an existing one", function()
    local dir = assert(fs.tmpdir("proc_spec"))
    local log = dir .. "/daemon.log"
    assert.equals(0, proc.run { "sh", "-c", "echo one", stdout = "file:" .. log, timeout = 10 })
    assert.equals(0, proc.run { "sh", "-c", "echo two", stdout = "file:" .. log, timeout = 10 })
    assert.equals("one\ntwo\n", fs.read(log))
    local _, mode = proc.run { "stat", "-c", "%a", log, timeout = 10 }
    assert.equals("600\n", mode)
    fs.remove(log)
    fs.remove(dir)
  end)
end)

describe("proc.spawn that fails after making pipes", function()
  -- The pipes are libuv handles inside the proc: freeing it before their close
  -- callbacks ran was a use after free (seen under make asan) and leaked the fds.
  it("returns the error and the loop goes on", function()
    local task = require "task"
    for _ = 1, 3 do
      local p, err = proc.spawn { "true", stdin = "x", stdout = "capture", stderr = "file:/nonexistent/d/log" }
      assert.is_nil(p)
      assert.equals("proc.spawn: /nonexistent/d/log: No such file or directory", err)
      assert.has_error(function() proc.spawn { "true", stdin = "x", stdout = "capture", stderr = "bogus" } end,
        "proc.spawn: bad stderr mode 'bogus'")
      p, err = proc.spawn { "true", stdin = "x", stdout = "capture", user = "no-such-user-spgb" }
      if p then assert.equals(0, p:wait(10)) else assert.matches("no user no%-such%-user%-spgb", err) end
      task.sleep(0.01)
    end
    assert.equals(0, proc.run { "true", stdin = "x", timeout = 10 })
  end)
end)

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

describe("proc.run when its task is cancelled", function()
  local task = require "task"
  local dir, pidfile, pid

  -- The child's pid once it has written it to pidfile.
  local function child_pid()
    for _ = 1, 500 do
      local s = fs.read(pidfile)
      if s and s:match("^%d+\n") then return s:match("%d+") end
      task.sleep(0.01)
    end
    error("the child never wrote " .. pidfile)
  end

  -- kill -0 succeeds on a zombie too: false means exited and reaped.
  local function exists(p)
    return proc.run { "sh", "-c", 'kill -0 "$1" 2>/dev/null', "sh", p, timeout = 10 } == 0
  end

  before_each(function()
    dir = assert(fs.tmpdir("proc_spec"))
    pidfile = dir .. "/pid"
    pid = nil
  end)

  after_each(function()
    if pid and exists(pid) then proc.run { "kill", "-KILL", pid, timeout = 10 } end
    fs.remove(pidfile)
    assert(fs.remove(dir))
  end)

  it("stops its child with TERM and reaps it before raising cancelled", function()
    local h = task.spawn(function()
      return proc.run { "sh", "-c", 'echo $$ > "$1"; exec sleep 30', "sh", pidfile }
    end)
    pid = child_pid()
    local t0 = task.now()
    h:cancel()
    assert.same({ false, "cancelled" }, { h:wait(10) })
    assert.is_false(exists(pid), "child " .. pid .. " outlived the cancelled proc.run")
    assert.is_true(task.now() - t0 < 2, "TERM was enough")
  end)

  it("KILLs a child that ignores TERM once stop_timeout has passed", function()
    local h = task.spawn(function()
      return proc.run { "sh", "-c", [[trap '' TERM; echo $$ > "$1"; exec sleep 30]], "sh", pidfile,
        stop_timeout = 0.5 }
    end)
    pid = child_pid()
    local t0 = task.now()
    h:cancel()
    assert.same({ false, "cancelled" }, { h:wait(10) })
    local took = task.now() - t0
    assert.is_false(exists(pid), "child " .. pid .. " outlived the cancelled proc.run")
    assert.is_true(took >= 0.5 and took < 3, "KILL after stop_timeout: " .. took)
  end)

  it("p:wait cancelled abandons only the wait: the caller owns the child", function()
    local p = assert(proc.spawn { "sleep", "30" })
    local h = task.spawn(function() return p:wait() end)
    task.sleep(0.05)
    h:cancel()
    assert.same({ false, "cancelled" }, { h:wait(10) })
    assert.is_true(p:running())
    assert(p:signal("KILL"))
    assert.same({ nil, "KILL" }, { p:wait(10) })
  end)
end)
