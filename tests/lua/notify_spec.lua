-- The readiness protocol as systemd speaks it (docs/systemd.md): the spec holds the
-- service manager's datagram socket (tests/fake/notify_listen.c, which records each
-- message's sender pid and whether the API accepted connections when it arrived),
-- starts the pauser with $NOTIFY_SOCKET pointing at it, and checks READY=1 comes from
-- the pauser itself once its API listens, and STOPPING=1 on TERM; the same for
-- supervise, whose READY=1 must wait until its PgBouncer accepts connections and
-- whose PgBouncer (built with systemd support) must stay silent.
local P = require "support.pg"
local D = require "support.daemon"
local E = require "support.etcd"
local fs = require "fs"
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

  -- listen(sock, port) -> the listener process, once its socket is bound. As the
  -- postgres user when root, so daemons running as postgres may send to it.
  local function listen(sock, port)
    local l = assert(proc.spawn { listener, sock, tostring(port), "30", stdout = "capture", stdin = "null",
      user = P.is_root() and "postgres" or nil })
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

  it("supervise: READY=1 once PgBouncer accepts, STOPPING=1 when draining starts, none from PgBouncer", function()
    local etcd_srv = E.start { members = 1 }
    local ok, err = pcall(function()
      local client = assert(require("etcd").connect { endpoints = etcd_srv.endpoints, timeout = 3 })
      local cd = assert(fs.read("tests/fixtures/stolon/healthy.json")):gsub("127%.0%.0%.1%d", "127.0.0.1")
      assert(client:put("stolon/cluster/nt/clusterdata", cd))
      local port = P.free_port()
      D.write_file(dir .. "/userlist.txt", '"pgbouncer" ""\n')
      D.write_file(dir .. "/pgbouncer.ini.template", table.concat({
        "[databases]", "postgres = host={{.Host}} port={{.Port}} dbname=postgres", "", "[pgbouncer]",
        "listen_addr = 127.0.0.1", "listen_port = " .. port, "unix_socket_dir = " .. dir, "auth_type = trust",
        "auth_file = " .. dir .. "/userlist.txt", "admin_users = pgbouncer",
        "ignore_startup_parameters = extra_float_digits", "" }, "\n"))
      local sock = dir .. "/supervise.sock"
      local l = listen(sock, port)
      local d = D.start({ "supervise", "--cluster-name", "nt", "--store-endpoints", etcd_srv.endpoints[1],
        "--pgbouncer-config-file", dir .. "/pgbouncer.ini", "--pgbouncer-config-template-file",
        dir .. "/pgbouncer.ini.template", "--pgbouncer-socket-dir", dir, "--pgbouncer-port", tostring(port),
        "--pgbouncer-binary", P.pgbouncer, "--metrics-port", "0", "--termination-grace-period", "0s",
        "--termination-poll-interval", "200ms" }, { as_postgres = true, env = { NOTIFY_SOCKET = sock } })
      local pid = d.p:pid()
      D.eventually(15, function() return (l:output()):match("READY=1") end)
      d:signal("TERM")
      local code, s = d.p:wait(15)
      assert.equals(0, code, tostring(s) .. d:logs())
      assert.equals(0, (l:wait(5)))
      local out = l:output()
      local lines = {}
      for line in out:gmatch("pid=[^\n]*") do lines[#lines + 1] = line end
      assert.equals(2, #lines, out)
      assert.equals(("pid=%d api=up READY=1;STATUS=PgBouncer routes to 127.0.0.1:5432"):format(pid), lines[1])
      assert.matches(("^pid=%d api=%%a+ STOPPING=1;STATUS=draining PgBouncer$"):format(pid), lines[2])
    end)
    etcd_srv:stop()
    assert(ok, err)
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
