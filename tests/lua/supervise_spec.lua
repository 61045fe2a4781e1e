-- The supervise command against real etcd, two PostgreSQL servers and the PgBouncer
-- it runs, on 127.0.4.40-44: it waits for a primary, follows a master change with
-- one RELOAD, ignores documents it cannot use, refuses bad templates, serves the
-- original's metrics, and drains on TERM. The clusterdata documents are stolon's
-- (tests/fixtures/stolon) with the addresses rewritten to ours.
local D = require "support.daemon"
local E = require "support.etcd"
local P = require "support.pg"
local T = require "support.template"
local fs = require "fs"
local http = require "http"
local pg = require "pg"
local pgbouncer = require "pgbouncer"
local proc = require "proc"
local task = require "task"

local ETCD_HOST, ETCD_PORT = "127.0.4.40", 22780
local HOST_A, HOST_B, HOST_C = "127.0.4.41", "127.0.4.42", "127.0.4.43"
local BOUNCER_HOST = "127.0.4.44"
local CLUSTER = "sv"
local KEY = "stolon/cluster/" .. CLUSTER .. "/clusterdata"

describe("supervise", function()
  local dir, etcd_srv, endpoint, client, pg_a, pg_b, pg_port
  local bouncer_port, metrics_port, sv, admin
  local docs = {}

  local function doc(name, edit)
    local text = assert(fs.read("tests/fixtures/stolon/" .. name .. ".json"))
    text = text:gsub("127%.0%.0%.11", HOST_A):gsub("127%.0%.0%.12", HOST_B):gsub("127%.0%.0%.13", HOST_C)
      :gsub('"5432"', '"' .. pg_port .. '"')
    if edit then text = edit(text) end
    return text
  end

  local function put(text)
    assert(client:put(KEY, text))
  end

  local function metrics_text()
    local r = http.request { url = ("http://%s:%d/metrics"):format(BOUNCER_HOST, metrics_port), timeout = 3 }
    return r and r.status == 200 and r.body or ""
  end

  -- The value of one sample ("name{labels}"), or 0 when absent.
  local function metric(sample)
    for line in metrics_text():gmatch("[^\n]+") do
      if line:sub(1, #sample + 1) == sample .. " " then return tonumber(line:sub(#sample + 2)) end
    end
    return 0
  end

  -- RELOADs in a PgBouncer log (by default the suite's PgBouncer's logfile)
  local function reloads(log)
    log = log or fs.read(dir .. "/pgbouncer.log") or ""
    local n = 0
    for _ in log:gmatch("RELOAD command issued") do n = n + 1 end
    return n
  end

  local function db_host()
    local rows = admin:show("DATABASES")
    for _, r in ipairs(rows or {}) do
      if r.name == "postgres" then return r.host end
    end
  end

  -- inet_server_addr() of a query through the supervised PgBouncer (new connection),
  -- or through the one on port.
  local function served_by(port)
    local conn, err = pg.connect({ host = BOUNCER_HOST, port = port or bouncer_port, dbname = "postgres",
      user = "postgres" }, { timeout = 3 })
    if not conn then return nil, err end
    local rows, qerr = conn:query_opts { sql = "SELECT host(inet_server_addr()) AS addr", timeout = 3 }
    conn:close()
    if not rows then return nil, qerr end
    return rows[1].addr
  end

  -- o: {port=, dir=, socket_dir=} of a PgBouncer other than the suite's main one
  local function template_text(extra_float_digits, body, o)
    return T.pgbouncer { dir = o and o.dir or dir, host = BOUNCER_HOST, port = o and o.port or bouncer_port,
      socket_dir = o and o.socket_dir, databases = body, no_pidfile = o and o.no_pidfile,
      extra_float_digits = extra_float_digits }
  end

  local function supervise_args(config, tmpl, port, socket_dir)
    return T.supervise_argv({ config = config, template = tmpl, socket_dir = socket_dir or dir,
      port = port or bouncer_port }, { "--cluster-name", CLUSTER, "--store-endpoints", endpoint,
      "--metrics-address", BOUNCER_HOST, "--metrics-port", tostring(port and 0 or metrics_port),
      "--poll-interval", "5s", "--termination-poll-interval", "300ms", "--pgbouncer-retry-timeout", "1s" })
  end

  setup(function()
    dir = P.tmpdir("spgb-supervise")
    etcd_srv = E.start { members = 1, hosts = { ETCD_HOST }, port = ETCD_PORT - 2 }
    endpoint = etcd_srv.endpoints[1]
    client = assert(require("etcd").connect { endpoints = { endpoint }, timeout = 3 })
    pg_port = P.free_port(HOST_A)
    pg_a = P.start_postgres { host = HOST_A, port = pg_port }
    pg_b = P.start_postgres { host = HOST_B, port = pg_port }
    bouncer_port = P.free_port(BOUNCER_HOST)
    metrics_port = P.free_port(BOUNCER_HOST)
    D.write_file(dir .. "/userlist.txt", '"pgbouncer" ""\n"postgres" ""\n')
    D.write_file(dir .. "/pgbouncer.ini.template", template_text(true))
    docs.no_master = doc("no-master")
    docs.healthy = doc("healthy")
    docs.switched = doc("switched")
    admin = pgbouncer.connect { host = BOUNCER_HOST, port = bouncer_port, user = "pgbouncer", timeout = 3, lazy = true }
  end)

  teardown(function()
    if sv then sv:stop("KILL") end
    local pid = dir and fs.read(dir .. "/pgbouncer.pid")
    if pid and pid:match("%d+") then proc.run { "kill", "-KILL", pid:match("%d+") } end
    if pg_a then pg_a:destroy() end
    if pg_b then pg_b:destroy() end
    if etcd_srv then etcd_srv:stop() end
    if dir then proc.run { "rm", "-rf", dir } end
  end)

  it("waits for a primary before starting PgBouncer", function()
    put(docs.no_master)
    sv = D.start(supervise_args(dir .. "/pgbouncer.ini", dir .. "/pgbouncer.ini.template"), { as_postgres = true })
    assert(D.eventually(10, function()
      return metric('stolon_pgbouncer_clusterdata_errors_total{reason="no_master"}') >= 1
    end), "supervise did not read the no-master document: " .. tostring(sv:logs()))
    task.sleep(0.5)
    assert.is_nil(fs.read(dir .. "/pgbouncer.ini"))
    assert.is_nil((served_by()))
    assert.matches("event=clusterdata_no_master", sv:logs(), 1, true)
  end)

  it("starts PgBouncer once there is a master, pointed at it", function()
    put(docs.healthy)
    assert(D.eventually(15, function() return db_host() == HOST_A end), "PgBouncer not pointed at " .. HOST_A)
    assert.equals(HOST_A, served_by())
    assert.equals(0, reloads())
    assert.matches("event=pgbouncer_started", sv:logs(), 1, true)
    -- nothing was reloaded: no event or metric may say so
    assert.is_nil(sv:logs():find("event=reloaded", 1, true))
    assert.equals(0, metric('stolon_pgbouncer_last_reload_seconds{keeper="keeper0"}'))
  end)

  it("follows a master change with one RELOAD", function()
    put(docs.switched)
    assert(D.eventually(15, function() return db_host() == HOST_B end), "PgBouncer did not follow the master")
    assert.equals(HOST_B, served_by())
    assert.equals(1, reloads())
    assert.is_true(metric('stolon_pgbouncer_last_reload_seconds{keeper="keeper1"}') > 0)
  end)

  it("does not reload when only other fields change", function()
    local before = metric('stolon_pgbouncer_last_reload_seconds{keeper="keeper1"}')
    put(doc("switched", function(t) return (t:gsub('"sleepInterval": "5s"', '"sleepInterval": "7s"')) end))
    task.sleep(1.5)
    assert.equals(1, reloads())
    assert.equals(before, metric('stolon_pgbouncer_last_reload_seconds{keeper="keeper1"}'))
    assert.equals(HOST_B, served_by())
  end)

  it("keeps the config and PgBouncer serving on a malformed document", function()
    local config = assert(fs.read(dir .. "/pgbouncer.ini"))
    put('{"formatVersion": 1, "dbs": ')
    assert(D.eventually(10, function()
      return metric('stolon_pgbouncer_clusterdata_errors_total{reason="malformed"}') >= 1
    end), "malformed document not seen")
    assert.equals(config, fs.read(dir .. "/pgbouncer.ini"))
    assert.equals(HOST_B, served_by())
    assert.equals(1, reloads())
  end)

  it("keeps the config and PgBouncer serving on a document without master", function()
    local config = assert(fs.read(dir .. "/pgbouncer.ini"))
    local seen = metric('stolon_pgbouncer_clusterdata_errors_total{reason="no_master"}')
    put(docs.no_master)
    assert(D.eventually(10, function()
      return metric('stolon_pgbouncer_clusterdata_errors_total{reason="no_master"}') > seen
    end), "no-master document not seen")
    assert.equals(config, fs.read(dir .. "/pgbouncer.ini"))
    assert.equals(HOST_B, served_by())
    assert.equals(1, reloads())
    put(docs.switched)
  end)

  it("serves the original's metrics, valid for promtool", function()
    local text = metrics_text()
    assert.matches('stolon_cluster_identifier{cluster_name="sv"} 1', text, 1, true)
    for _, name in ipairs { "stolon_pgbouncer_store_poll_interval", "stolon_pgbouncer_store_last_update_seconds",
      "stolon_pgbouncer_last_keeper_seconds", "stolon_pgbouncer_last_reload_seconds" } do
      assert.matches("\n" .. name, "\n" .. text, 1, true)
    end
    assert.equals(5, metric("stolon_pgbouncer_store_poll_interval"))
    local code, out, err = proc.run { "promtool", "check", "metrics", stdin = text, timeout = 10 }
    assert.equals(0, code, (out or "") .. (err or ""))
  end)

  it("refuses a template without extra_float_digits", function()
    local bad = dir .. "/no-efd.template"
    D.write_file(bad, template_text(false))
    local code, _, err = D.run(supervise_args(dir .. "/other.ini", bad, P.free_port(BOUNCER_HOST)),
      { as_postgres = true, timeout = 20 })
    assert.equals(1, code, err)
    assert.matches("ignore_startup_parameters", err, 1, true)
    assert.matches("extra_float_digits", err, 1, true)
    assert.is_nil(fs.read(dir .. "/other.ini"))
  end)

  it("names file:line:col of a missing template field and leaves the config untouched", function()
    local bad = dir .. "/missing-field.template"
    D.write_file(bad, template_text(true, "postgres = host={{.Host}} port={{.Nope}} dbname=postgres"))
    local config = D.write_file(dir .. "/kept.ini", "; the last good config\n")
    local d = D.start(supervise_args(config, bad, P.free_port(BOUNCER_HOST)), { as_postgres = true })
    local ok = D.eventually(10, function() return d:logs():find("event=config_write_failed", 1, true) end)
    local code, _, _, err = d:stop()
    assert(ok, "no config_write_failed in: " .. tostring(err))
    assert.matches(bad .. ":2:32: executing <.Nope>", err, 1, true) -- file:line:col of {{.Nope}}
    assert.equals("; the last good config\n", fs.read(config))
    assert.equals(0, code)
  end)

  it("drains on TERM: waits for the connected client, then stops PgBouncer and exits 0", function()
    local conn = assert(pg.connect({ host = BOUNCER_HOST, port = bouncer_port, dbname = "postgres", user = "postgres" },
      { timeout = 3 }))
    assert(conn:query("SELECT 1"))
    sv:signal("TERM")
    assert(D.eventually(10, function() return sv:logs():find("event=shutdown_pending", 1, true) end),
      "supervise did not wait for the client")
    task.sleep(1)
    assert.is_true(sv:running())
    -- new connections are refused meanwhile (DISABLE), the connected client still works
    local late = pg.connect({ host = BOUNCER_HOST, port = bouncer_port, dbname = "postgres", user = "postgres" },
      { timeout = 3 })
    if late then
      assert.is_nil((late:query_opts { sql = "SELECT 1", timeout = 3 }))
      late:close()
    end
    assert(conn:query("SELECT 1"))
    conn:close()
    local code = sv.p:wait(15)
    assert.equals(0, code, sv:logs())
    local logs = sv:logs()
    assert.matches("event=idle", logs, 1, true)
    assert.is_nil((served_by()))
    sv = nil
  end)

  -- Each case below runs its own supervise on its own port and folder (issue 12).
  describe("and PgBouncers that are not its own", function()
    local cleanups = {}

    -- A folder, a free port and a template for one more supervise; o.socket_dir (the
    -- folder by default) is where its PgBouncer's unix socket goes.
    local function instance(o)
      o = o or {}
      local i = { dir = P.tmpdir("spgb-supervise-own"), port = o.port or P.free_port(BOUNCER_HOST) }
      i.socket_dir = o.socket_dir or i.dir
      D.write_file(i.dir .. "/userlist.txt", '"pgbouncer" ""\n"postgres" ""\n')
      D.write_file(i.dir .. "/pgbouncer.ini.template", template_text(true, nil, i))
      cleanups[#cleanups + 1] = function()
        if i.sv then i.sv:stop("KILL") end
        local pid = i.pid()
        if pid then proc.run { "kill", "-KILL", tostring(pid) } end
        proc.run { "rm", "-rf", i.dir }
      end
      function i.args(extra)
        local a = supervise_args(i.dir .. "/pgbouncer.ini", i.dir .. "/pgbouncer.ini.template", i.port, i.socket_dir)
        for _, x in ipairs(extra or {}) do a[#a + 1] = x end
        return a
      end
      function i.pid() -- of the PgBouncer that wrote our pidfile
        local text = fs.read(i.dir .. "/pgbouncer.pid")
        return text and tonumber(text:match("%d+"))
      end
      return i
    end

    local function alive(pid)
      return proc.run { "kill", "-0", tostring(pid) } == 0
    end

    after_each(function()
      for _, f in ipairs(cleanups) do f() end
      cleanups = {}
    end)

    it("stops a PgBouncer that was slow to become ready, starts it again, and keeps the new one alive",
      function()
      put(docs.healthy)
      local i = instance()
      -- the first start sleeps past supervise's 10 s readiness wait; later starts exec at once
      local wrapper = D.write_file(i.dir .. "/slow-pgbouncer", table.concat({
        "#!/bin/sh",
        'if [ ! -e "$0.started" ]; then echo $$ > "$0.started"; sleep 12; fi',
        "exec " .. P.pgbouncer .. ' "$@"', "" }, "\n"), "0755")
      i.sv = D.start(i.args { "--pgbouncer-binary", wrapper }, { as_postgres = true })
      assert(D.eventually(40, function() return served_by(i.port) == HOST_A end),
        "PgBouncer never served: " .. tostring(i.sv:logs()))
      local slow = assert(tonumber(assert(fs.read(wrapper .. ".started")):match("%d+")))
      local first = i.pid()
      assert.are_not.equal(slow, first, "the slow PgBouncer was kept: " .. i.sv:logs())
      assert(D.eventually(10, function() return not alive(slow) end), "the slow PgBouncer still runs")
      assert.matches("event=pgbouncer_not_ready", i.sv:logs(), 1, true)
      -- and the PgBouncer that did become ready is kept alive
      proc.run { "kill", "-KILL", tostring(first) }
      assert(D.eventually(20, function()
        local now = i.pid()
        return now and now ~= first and served_by(i.port) == HOST_A
      end), "PgBouncer was not restarted after SIGKILL: " .. i.sv:logs())
      assert.is_true(i.sv:running())
    end)

    it("without a pidfile in the template, knows its child by the config file it runs", function()
      put(docs.healthy)
      local i = instance { no_pidfile = true }
      i.sv = D.start(i.args(), { as_postgres = true })
      local ok = D.eventually(15, function() return served_by(i.port) == HOST_A end)
      local code, _, _, err = i.sv:stop("TERM", 15)
      assert(ok, "PgBouncer never served:\n" .. tostring(err))
      assert.equals(0, code, err)
      assert.is_nil(err:find("event=pgbouncer_not_ready", 1, true), err)
      assert.matches("event=idle", err, 1, true)
      assert.is_nil((served_by(i.port)))
    end)

    -- A PgBouncer the spec starts itself (not supervise's) on port and socket_dir.
    local function foreign_pgbouncer(port, socket_dir)
      local b = P.start_pgbouncer { host = BOUNCER_HOST, port = port, target = pg_a,
        settings = socket_dir and { unix_socket_dir = socket_dir } or nil }
      table.insert(cleanups, 1, function() b:destroy() end)
      function b.reloads()
        local _, text = b.proc:output()
        return reloads(text or "")
      end
      return b
    end

    -- Wait until supervise exits by itself; TERM it otherwise (what an operator does
    -- next). -> exited by itself, exit code, stderr
    local function exits(d, seconds)
      local by_itself = D.eventually(seconds, function() return not d:running() end) or false
      local code, _, _, err = d:stop("TERM", 15)
      return by_itself, code, err
    end

    it("refuses to start where another PgBouncer listens, names --no-child-process, and sends that one nothing",
      function()
      put(docs.healthy)
      local other = foreign_pgbouncer(P.free_port(BOUNCER_HOST))
      local i = instance { port = other.port, socket_dir = other.socket_dir }
      i.sv = D.start(i.args(), { as_postgres = true })
      local by_itself, code, err = exits(i.sv, 15)
      assert.equals(0, other.reloads(), "supervise RELOADed the other PgBouncer:\n" .. err)
      assert.equals(HOST_A, served_by(other.port), "the other PgBouncer no longer serves:\n" .. err)
      assert.is_true(by_itself, "supervise did not refuse to start:\n" .. err)
      assert.equals(1, code, err)
      assert.matches("--no-child-process", err, 1, true)
      assert.matches(other.socket_dir .. "/.s.PGSQL." .. other.port, err, 1, true)
      assert.is_nil(err:find("event=pgbouncer_started", 1, true), err)
    end)

    it("ENABLEs at start what an earlier supervise of its own left disabled", function()
      put(docs.healthy)
      local i = instance()
      local early = D.start(i.args(), { as_postgres = true })
      assert(D.eventually(15, function() return served_by(i.port) == HOST_A end), early:logs())
      -- the earlier supervise dies (KILL) while it drains: its PgBouncer stays, disabled
      local conn = assert(pg.connect({ host = BOUNCER_HOST, port = i.port, dbname = "postgres", user = "postgres" },
        { timeout = 3 }))
      assert(conn:query("SELECT 1"))
      early:signal("TERM")
      assert(D.eventually(10, function() return early:logs():find("event=shutdown_pending", 1, true) end),
        early:logs())
      early:stop("KILL")
      conn:close()
      local left = assert(i.pid())
      assert.is_true(alive(left))
      local _, derr = served_by(i.port)
      assert.matches("disabled", tostring(derr))
      -- a new supervise undoes that, and then refuses the port the old PgBouncer holds
      i.sv = D.start(i.args(), { as_postgres = true })
      local by_itself, code, err = exits(i.sv, 15)
      assert.equals(HOST_A, served_by(i.port), "still disabled:\n" .. err)
      assert.matches("event=enable_leftover", err, 1, true)
      assert.is_true(by_itself, "supervise did not refuse to start:\n" .. err)
      assert.equals(1, code, err)
      assert.is_true(alive(left))
    end)

    it("sends nothing to another PgBouncer that took its port while its own was down, not even on TERM",
      function()
      put(docs.healthy)
      local i = instance()
      i.sv = D.start(i.args { "--restart-backoff", "3s" }, { as_postgres = true })
      assert(D.eventually(15, function() return served_by(i.port) == HOST_A end), i.sv:logs())
      proc.run { "kill", "-KILL", tostring(i.pid()) }
      local other = foreign_pgbouncer(i.port, i.dir)
      put(docs.switched) -- a master change while the other one holds the port
      task.sleep(6)      -- past the restart backoff: supervise tries to start its own again
      assert.equals(HOST_A, served_by(i.port))
      local _, _, err = exits(i.sv, 0)
      assert.equals(0, other.reloads(), "supervise RELOADed the other PgBouncer:\n" .. err)
      assert.equals(HOST_A, served_by(i.port), "the other PgBouncer no longer serves:\n" .. err)
      assert.matches("event=pgbouncer_address_in_use", err, 1, true)
    end)
  end)
end)
