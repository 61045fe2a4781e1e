local proc = require "proc"

local bin = assert(os.getenv("SPGB_LUA_DIR")) .. "/stolon-pgbouncer"

local function script(text)
  local path = os.tmpname() .. ".lua"
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
  return path
end

local function run(args, opts)
  local argv = { bin }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  for k, v in pairs(opts or {}) do argv[k] = v end
  return proc.run(argv)
end

describe("command line", function()
  it("prints the version and help", function()
    local code, out = run { "--version" }
    assert.equals(0, code)
    assert.matches("^stolon%-pgbouncer ", out)
    code, out = run { "--help" }
    assert.equals(0, code)
    assert.matches("failover", out)
  end)

  it("supervise stops at start-up when PgBouncer cannot be found, saying where it looked", function()
    local code, _, err = run({ "supervise", "--pgbouncer-binary", "no-such-pgbouncer", "--metrics-port", "0" },
      { env = { PATH = "/nonexistent" }, timeout = 20 })
    assert.equals(1, code)
    assert.matches("event=pgbouncer_not_found", err, 1, true)
    assert.matches("looked in /nonexistent:/usr/local/sbin:/usr/sbin:/sbin", err, 1, true)
  end)

  it("exits 2 with usage on an unknown command", function()
    local code, _, err = run { "frobnicate" }
    assert.equals(2, code)
    assert.matches('unknown command "frobnicate"', err, 1, true)
    assert.matches("usage:", err, 1, true)
  end)

  it("runs a script with arg like lua does and uses its returned integer", function()
    local path = script("print(arg[0] ~= nil, ...) return 4\n")
    local code, out = run { "run", path, "a", "b c" }
    os.remove(path)
    assert.equals(4, code)
    assert.equals("true\ta\tb c\n", out)
  end)

  it("reports a runtime error with file:line and a traceback, exit 1", function()
    local path = script("local x = 1\nlocal function f() error('broken here') end\nf()\n")
    local code, out, err = run { "run", path }
    os.remove(path)
    assert.equals(1, code)
    assert.equals("", out)
    assert.matches(path:gsub("%p", "%%%0") .. ":2: broken here", err)
    assert.matches("stack traceback:", err, 1, true)
  end)

  it("reports a syntax error with file:line, exit 1", function()
    local path = script("local x = = 1\n")
    local code, _, err = run { "run", path }
    os.remove(path)
    assert.equals(1, code)
    assert.matches(path:gsub("%p", "%%%0") .. ":1:", err)
  end)

  it("reports a missing script, exit 1", function()
    local code, _, err = run { "run", "/nonexistent/x.lua" }
    assert.equals(1, code)
    assert.matches("cannot open /nonexistent/x.lua", err, 1, true)
  end)

  it("repl reads piped statements, continues incomplete ones and pretty-prints", function()
    local input = table.concat({
      "1 + 1",
      "local t = {a = 1,",
      "  b = {2, 3}}",
      "x = {n = 1}; x.self = x",
      "x",
      "task.sleep(0.01) return 'slept'",
      "error('oops')",
      "'still here'",
    }, "\n") .. "\n"
    local code, out, err = run({ "repl" }, { stdin = input })
    assert.equals(0, code)
    assert.matches("^2\n", out)
    assert.matches("n = 1", out, 1, true)
    assert.matches("<cycle", out, 1, true)
    assert.matches("\nslept\n", out, 1, true)
    assert.matches("\nstill here\n", out, 1, true)
    assert.matches("oops", err, 1, true)
  end)

  -- As a person meets it: a terminal (script(1) gives the REPL a pseudo-terminal, so it
  -- takes its interactive path: editline, prompts, echo).
  it("repl on a terminal: an error once, json.null by name, strings readable", function()
    local input = table.concat({
      "json.null",
      '{ x = json.null, s = "a\\n\\tb" }',
      'error("bo" .. "om")',
      '"first line\\n\\tsecond line"',
    }, "\n") .. "\n"
    local code, out = proc.run { "script", "-qfec", bin .. " repl", "/dev/null", stdin = input,
      env = { TERM = "dumb", HOME = "/nonexistent" }, timeout = 30 }
    assert.equals(0, code, out)
    out = out:gsub("\r\n", "\n")
    assert.matches("stolon-pgbouncer repl", out, 1, true)          -- the interactive banner
    assert.matches("\njson.null\n", out, 1, true)
    assert.is_nil(out:find("userdata", 1, true))
    assert.matches('s = "a\\n\\tb",', out, 1, true)                  -- quoted inside a table, \n and \t
    assert.matches("x = json.null,", out, 1, true)
    local _, booms = out:gsub("boom", "")
    assert.equals(1, booms, out)                                      -- printed once, not logged too
    assert.is_nil(out:find("task_failed", 1, true))
    assert.matches("stack traceback:", out, 1, true)
    assert.matches("\nfirst line\n\tsecond line\n", out, 1, true)  -- its text, not "\9"
    assert.is_nil(out:find("\\9", 1, true))
  end)

  it("repl: INT cancels the running statement and the prompt goes on", function()
    local task = require "task"
    local p = assert(proc.spawn { bin, "repl", stdin = "task.sleep(20)\n'after'\n", stdout = "capture",
      stderr = "capture" })
    task.sleep(0.5)
    assert(p:signal("INT"))
    local t0 = task.now()
    local code = p:wait(10)
    local out, err = p:output()
    assert.equals(0, code)
    assert.matches("(interrupted)", err, 1, true)
    assert.matches("^after\n", out)
    assert.is_true(task.now() - t0 < 10)
  end)

  -- Into DESTDIR, as a package build does: everything lands under it (the units and
  -- /etc's files included), nothing on this machine.
  it("make install: the installed binary finds its Lua files without environment variables", function()
    local dir = assert(os.getenv("SPGB_LUA_DIR"))
    local _, tmp = proc.run { "mktemp", "-d" }
    local dest = tmp:gsub("%s+$", "")
    local prefix = dest .. "/usr/local"
    -- a plain build: not the variables of a `make asan` we may be running under (make
    -- passes them on through MAKEFLAGS and the environment)
    local code, _, err = proc.run { "make", "-s", "-C", dir, "install", "DESTDIR=" .. dest,
      "BUILD=build", "CFLAGS=-O2 -g", "EXTRA_CFLAGS=", "EXTRA_LDFLAGS=", timeout = 120,
      env = { MAKEFLAGS = "", MFLAGS = "", MAKELEVEL = "", MAKEOVERRIDES = "" } }
    assert.equals(0, code, err)
    local fs = require "fs"
    for _, f in ipairs { "/etc/stolon-pgbouncer/supervise.env", "/usr/local/share/man/man1/stolon-pgbouncer.1",
                         "/usr/local/lib/systemd/system/stolon-pgbouncer-pauser.service",
                         "/usr/local/share/stolon-pgbouncer/policies/failover.lua" } do
      assert.is_true(fs.exists(dest .. f), dest .. f .. " not installed")
    end
    local installed = prefix .. "/bin/stolon-pgbouncer"
    local path = script("return require('stolon').FAKE_STANDBY == 'stolonfakestandby' and 0 or 9\n")
    code = proc.run { installed, "run", path, clear_env = true, env = { PATH = "/usr/bin:/bin" } }
    assert.equals(0, code)
    local out
    code, out = proc.run { installed, "failover", "--help", clear_env = true, env = { PATH = "/usr/bin:/bin" } }
    assert.equals(0, code)
    assert.matches("--pause-expiry", out, 1, true)
    os.remove(path)
    proc.run { "rm", "-rf", dest }
  end)

  -- The binary carries lua/ and policies/: copied alone to an empty folder (another
  -- machine), with a clean environment, every command and module is there, tracebacks
  -- name the embedded files, and `policy show` prints what a site policy starts from.
  it("a binary copied alone runs every command from its embedded lua/ and policies/", function()
    local dir = assert(os.getenv("SPGB_LUA_DIR"))
    local tmp = assert(require("fs").tmpdir("spgb-alone"))
    assert.equals(0, (proc.run { "cp", bin, tmp .. "/stolon-pgbouncer" }))
    local alone = tmp .. "/stolon-pgbouncer"
    local clean = { clear_env = true, env = { PATH = "/usr/bin:/bin" }, cwd = tmp, timeout = 30 }
    local function run_alone(args)
      local argv = { alone }
      for _, a in ipairs(args) do argv[#argv + 1] = a end
      for k, v in pairs(clean) do argv[k] = v end
      return proc.run(argv)
    end
    for _, cmd in ipairs { "supervise", "pauser", "failover", "status", "with-lock" } do
      local code, out = run_alone { cmd, "--help" }
      assert.equals(0, code, cmd)
      assert.matches("usage: stolon%-pgbouncer " .. cmd:gsub("%-", "%%-") .. " ", out)
    end
    local path = tmp .. "/mods.lua"
    local f = assert(io.open(path, "w"))
    f:write([[
for _, m in ipairs { "task", "log", "proc", "etcd", "http", "metrics", "pgbouncer", "stolon", "failover",
                     "common", "flags", "pipeline", "pauser_client", "playground.cluster" } do
  assert(type(require(m)) == "table", m)
end
require("common").find_program(nil)
]])
    f:close()
    local code, _, err = run_alone { "run", path }
    assert.equals(1, code)
    assert.matches("stolon%-pgbouncer: lua/common.lua:%d+: attempt to index a nil value", err)
    assert.matches("\n\tlua/common.lua:%d+: in function 'common.find_program'", err)
    local out
    code, out = run_alone { "policy", "list" }
    assert.equals(0, code)
    assert.matches("^examples/refuse%-long%-transactions\nfailover\npauser\nstatus\nsupervise\nwith%-lock\n$", out)
    code, out = run_alone { "policy", "show", "failover" }
    assert.equals(0, code)
    assert.equals(assert(require("fs").read(dir .. "/policies/failover.lua")), out)
    code, _, err = run_alone { "policy", "show", "nosuch" }
    assert.equals(1, code)
    assert.matches("no policy nosuch", err, 1, true)
    proc.run { "rm", "-rf", tmp }
  end)
end)
