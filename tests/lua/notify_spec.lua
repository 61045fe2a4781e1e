-- The readiness protocol as systemd speaks it (docs/systemd.md): the spec holds the
-- service manager's datagram socket (tests/fake/notify_listen.c, which records each
-- message's sender pid and whether the API accepted connections when it arrived),
-- starts the pauser with $NOTIFY_SOCKET pointing at it, and checks READY=1 comes from
-- the pauser itself once its API listens, and STOPPING=1 on TERM.
local P = require "support.pg"
local D = require "support.daemon"
local proc = require "proc"

describe("notify", function()
  local dir, listener

  setup(function()
    dir = P.tmpdir("spgb-notify")
    listener = dir .. "/notify_listen"
    assert.equals(0, (proc.run { "cc", "-O1", "-o", listener, "tests/fake/notify_listen.c" }))
  end)

  teardown(function()
    if dir then proc.run { "rm", "-rf", dir } end
  end)

  -- listen(port) -> the listener process, once its socket is bound
  local function listen(sock, port)
    local l = assert(proc.spawn { listener, sock, tostring(port), "30", stdout = "capture", stdin = "null" })
    D.eventually(5, function() return (l:output()):match("bound\n") end)
    return l
  end

  it("pauser: READY=1 once the API listens, STOPPING=1 on TERM, both from the pauser's pid", function()
    local sock, port = dir .. "/notify.sock", P.free_port()
    local l = listen(sock, port)
    local d = D.start({ "pauser", "--bind-address", "127.0.0.1:" .. port, "--metrics-port", "0",
      "--pgbouncer-host", "127.0.0.1", "--pgbouncer-port", tostring(P.free_port()) },
      { env = { NOTIFY_SOCKET = sock } })
    local pid = d.p:pid()
    D.eventually(10, function() return (l:output()):match("READY=1") end)
    d:signal("TERM")
    assert.equals(0, (l:wait(10)))
    local code, s = d.p:wait(10)
    assert.equals(0, code, tostring(s) .. d:logs())
    local out = l:output()
    local lines = {}
    for line in out:gmatch("pid=[^\n]*") do lines[#lines + 1] = line end
    assert.equals(2, #lines, out)
    assert.equals(("pid=%d api=up READY=1;STATUS=listening on 127.0.0.1:%d"):format(pid, port), lines[1])
    assert.matches(("^pid=%d api=%%a+ STOPPING=1$"):format(pid), lines[2])
  end)

  it("takes $NOTIFY_SOCKET out of the environment, so children cannot answer for us", function()
    local sock = dir .. "/notify2.sock"
    local script = dir .. "/child.lua"
    D.write_file(script, [[
      local notify = require "notify"
      local proc = require "proc"
      local _, env = proc.run { "env" }
      assert(not env:match("NOTIFY_SOCKET"), "a child inherited NOTIFY_SOCKET")
      assert(notify.socket() == arg[1], tostring(notify.socket()))
      assert(notify.send("READY=1") == true)
      assert(notify.send("STOPPING=1") == true)
    ]])
    local l = listen(sock, P.free_port())
    local code, out, err = D.run({ "run", script, sock }, { env = { NOTIFY_SOCKET = sock } })
    assert.equals(0, code, out .. err)
    assert.equals(0, (l:wait(10)))
    assert.matches("api=down READY=1\n.*api=down STOPPING=1\n", (l:output()))
  end)

  it("is a no-op without $NOTIFY_SOCKET, and reports a socket nobody holds", function()
    local script = dir .. "/noop.lua"
    D.write_file(script, [[
      local notify = require "notify"
      if arg[1] == "unset" then
        assert(notify.send("READY=1") == false)
        assert(notify.socket() == nil)
      else
        local ok, err, code = notify.send("READY=1")
        assert(ok == nil and err:find(arg[1], 1, true) and code == "ENOENT", tostring(err) .. " " .. tostring(code))
      end
    ]])
    local code, out, err = D.run({ "run", script, "unset" }, { env = { NOTIFY_SOCKET = "" } })
    assert.equals(0, code, out .. err)
    local gone = dir .. "/nobody.sock"
    code, out, err = D.run({ "run", script, gone }, { env = { NOTIFY_SOCKET = gone } })
    assert.equals(0, code, out .. err)
  end)
end)
