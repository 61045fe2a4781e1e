-- Against real Patroni (the Debian package's `patroni`, 3.0.2): etcd on 127.0.9.60
-- (22972), two members n1/n2 on 127.0.9.61-62 (PostgreSQL 29001, REST API
-- 29061-29062; synchronous_mode, loop_wait 1, ttl 10), and on 127.0.9.64 a supervised
-- PgBouncer (29010) with its pauser (29011), the layout where PgBouncer runs only on
-- a proxy host. Checks that the DCS keys Patroni writes are the layout lua/patroni.lua
-- reads, that supervise follows a Patroni switchover, and that `failover --manager
-- patroni` switches under a write load with no failed transaction.
local D = require "support.daemon"
local E = require "support.etcd"
local P = require "support.pg"
local T = require "support.template"
local PT = require "support.patroni"
local fs = require "fs"
local loadgen = require "playground.load"
local patroni = require "patroni"
local pgbouncer = require "pgbouncer"
local proc = require "proc"
local task = require "task"

local ETCD_HOST, ETCD_PORT = "127.0.9.60", 22970
local NODES = { n1 = "127.0.9.61", n2 = "127.0.9.62" }
local API_PORT = { n1 = 29061, n2 = 29062 }
local PG_PORT = 29001
local PROXY, BOUNCER_PORT, PAUSER_PORT = "127.0.9.64", 29010, 29011
local SCOPE = "pcl"
local BASE = "/service/" .. SCOPE .. "/"
-- Patroni's restapi.authentication: POST /switchover needs it (basic auth)
local AUTH = { user = "spgb", password = "pw-not-in-argv" }

describe("real Patroni", function()
  local dir, etcd_srv, endpoint, client, sv, pauser, admin
  local members = {}

  local function write(path, text)
    D.write_file(path, text)
    if P.is_root() then proc.run { "chown", "postgres:postgres", path } end
  end

  -- the playground's Patroni configuration (lua/playground/patroni.lua), on this spec's addresses
  local function patroni_yaml(name)
    local host = NODES[name]
    local sock = dir .. "/" .. name .. ".sock"
    proc.run { "mkdir", "-p", sock }
    if P.is_root() then proc.run { "chown", "postgres:postgres", sock } end
    return require("playground.patroni").config { scope = SCOPE, name = name, host = host, pg_port = PG_PORT,
      api_port = API_PORT[name], etcd = ("%s:%d"):format(ETCD_HOST, ETCD_PORT + 2), data_dir = dir .. "/" .. name,
      sock = sock, pgpass = dir .. "/" .. name .. ".pgpass", auth = AUTH }
  end

  local function start_member(name)
    local yml = dir .. "/" .. name .. ".yml"
    write(yml, patroni_yaml(name))
    local argv = { "patroni", yml, stdout = "file:" .. dir .. "/" .. name .. ".log",
      stderr = "file:" .. dir .. "/" .. name .. ".log" }
    -- as root, Patroni runs as postgres, which cannot enter a checkout in /root: its
    -- bootstrap's multiprocessing child then dies in its start-up and the bootstrap
    -- never ends. Its own folder is its working directory, as in the playground.
    if P.is_root() then argv.user, argv.cwd = "postgres", dir end
    members[name] = assert(proc.spawn(argv))
  end

  -- view() -> the model's view of what Patroni wrote now
  local function view()
    local res = assert(client:get(BASE, { prefix = true }))
    return assert(patroni.decode(res.kvs, BASE))
  end

  local function patroni_log(name)
    local text = fs.read(dir .. "/" .. name .. ".log") or ""
    if #text <= 4000 then return text end
    -- the start (bootstrap, initdb) and the end: a stuck bootstrap repeats one line
    return text:sub(1, 2000) .. "\n[...]\n" .. text:sub(-2000)
  end

  -- ready(leader, candidate): leader runs as primary, candidate is a good candidate
  local function ready(leader, candidate)
    return D.eventually(60, function()
      local v = view()
      local p = patroni.primary(v)
      local c = patroni.can_lose_primary(v, candidate)
      return p and p.name == leader and c and c.name == candidate
    end, 0.2)
  end

  local function db_host() return PT.db_host(admin) end

  local function reloads() return PT.reloads(dir) end

  -- start_load() -> {stop = fn -> stats}: 8 clients inserting through the proxy
  -- PgBouncer (lua/playground/load.lua) until stopped; stats = {ok=, failed= (failed,
  -- unknown outcome or refused), errors=}. Runs a second before it returns and after stop.
  local function start_load()
    local conninfo = ("host=%s port=%d dbname=postgres user=postgres"):format(PROXY, BOUNCER_PORT)
    assert(loadgen.ensure_table(conninfo))
    local run = loadgen.start { conninfo = conninfo, clients = 8 }
    task.sleep(1)
    return { stop = function()
      task.sleep(1)
      local r = run:stop()
      local errors = {}
      for i = 1, math.min(#r.errors, 10) do errors[i] = r.errors[i].kind .. " " .. r.errors[i].error end
      return { ok = r.committed, failed = r.failed + r.unknown + r.connect_errors, errors = errors }
    end }
  end

  setup(function()
    dir = P.tmpdir("spgb-patroni")
    etcd_srv = E.start { members = 1, hosts = { ETCD_HOST }, port = ETCD_PORT }
    endpoint = etcd_srv.endpoints[1]
    client = assert(require("etcd").connect { endpoints = { endpoint }, timeout = 3 })
    start_member("n1")
    -- initdb and the first start take seconds; the margin is for a loaded machine
    -- (a bootstrap that never ended on a fresh root was the working directory above)
    assert(D.eventually(90, function() return patroni.primary(view()) end, 0.2),
      "n1 did not become leader: " .. patroni_log("n1"))
    start_member("n2")
    assert(ready("n1", "n2"), "n2 did not become a sync replica: " .. patroni_log("n2"))
    admin = pgbouncer.connect { host = PROXY, port = BOUNCER_PORT, user = "pgbouncer", timeout = 3, lazy = true }
  end)

  teardown(function()
    if pauser then pauser:stop("KILL") end
    if sv then sv:stop("KILL") end
    local pid = dir and fs.read(dir .. "/pgbouncer.pid")
    if pid and pid:match("%d+") then proc.run { "kill", "-KILL", pid:match("%d+") } end
    for _, p in pairs(members) do p:signal("TERM") end
    for name, p in pairs(members) do
      if not p:wait(20) then
        p:signal("KILL")
        p:wait(5)
      end
      local argv = { P.bindir .. "/pg_ctl", "stop", "-m", "immediate", "-D", dir .. "/" .. name }
      if P.is_root() then argv.user, argv.cwd = "postgres", dir end
      proc.run(argv)
    end
    if etcd_srv then etcd_srv:stop() end
    if dir then proc.run { "rm", "-rf", dir } end
  end)

  it("writes the DCS layout the model reads", function()
    local v = view()
    assert.equals("n1", v.leader)
    local p = assert(patroni.primary(v))
    assert.equals(NODES.n1, p.host)
    assert.equals(tostring(PG_PORT), p.port)
    assert.is_true(p.role == "master" or p.role == "primary")
    assert.equals(("http://%s:%d/patroni"):format(NODES.n1, API_PORT.n1), p.api_url)
    assert.is_number(p.timeline)
    assert.is_number(p.xlog_location)
    local r = v.members.n2
    assert.equals("replica", r.role)
    assert.equals("running", r.state)
    assert.equals(NODES.n2, r.host)
    assert.is_true(patroni.synchronous_mode(v))
    assert.same({ "n2" }, v.sync.members)
    assert.equals("n1", v.sync.leader)
    assert.equals(1, v.config.loop_wait)
    assert.is_number(v.leader_lsn) -- the status key's optime
    assert.same({}, v.invalid)
    assert.is_true(patroni.api_check(p))
  end)

  it("supervise --manager patroni follows a Patroni switchover with one RELOAD", function()
    D.write_file(dir .. "/userlist.txt", '"pgbouncer" ""\n"postgres" ""\n')
    write(dir .. "/pgbouncer.ini.template", PT.pgbouncer_template { dir = dir, host = PROXY, port = BOUNCER_PORT })
    sv = D.start(T.supervise_argv({ dir = dir, port = BOUNCER_PORT }, { "--manager", "patroni", "--patroni-scope",
      SCOPE, "--store-endpoints", endpoint, "--metrics-port", "0", "--poll-interval", "5s" }), { as_postgres = true })
    assert(D.eventually(15, function() return db_host() == NODES.n1 end), "PgBouncer not at n1: " .. sv:logs())
    local v = view()
    local status = patroni.request_switch(v.members.n1, v.members.n2, { timeout = 30, auth = AUTH })
    assert.is_true(status == 200 or status == 503, tostring(status))
    assert(D.eventually(30, function() return db_host() == NODES.n2 end), "PgBouncer did not follow: " .. sv:logs())
    assert.equals(1, reloads())
    assert.is_nil(sv:logs():find("level=error", 1, true))
  end)

  it("a switchover Patroni refuses (401: no credentials) resumes at once and moves nothing", function()
    assert(ready("n2", "n1"), "n1 did not rejoin as a sync replica: " .. patroni_log("n1"))
    -- with store access under the scope: it follows each failover's pause lease
    pauser = D.start({ "pauser", "--bind-address", PROXY .. ":" .. PAUSER_PORT, "--pgbouncer-host", PROXY,
      "--pgbouncer-port", tostring(BOUNCER_PORT), "--metrics-port", "0", "--manager", "patroni",
      "--patroni-scope", SCOPE, "--store-endpoints", endpoint })
    assert(D.eventually(10, function()
      local r = require("http").request { url = ("http://%s:%d/health"):format(PROXY, PAUSER_PORT), timeout = 2 }
      return r and r.status == 200
    end), "the pauser did not come up")
    local t0 = task.now()
    local code, out, err = D.run({ "failover", "--manager", "patroni", "--patroni-scope", SCOPE,
      "--store-endpoints", endpoint, "--no-node-pausers", "--extra-pauser", PROXY .. ":" .. PAUSER_PORT,
      "--metrics-port", "0" }, { timeout = 60, env = { PATRONI_RESTAPI_USERNAME = "", PATRONI_RESTAPI_PASSWORD = "" } })
    assert.equals(1, code, out)
    assert.matches("Patroni refused the switchover: HTTP 401", err, 1, true)
    assert.matches("event=pgbouncer_resume", err, 1, true)
    assert.is_true(task.now() - t0 < 15, "the refusal was not acted on at once")
    assert.equals("n2", view().leader)
    assert.is_nil(err:find(AUTH.password, 1, true))
    -- the pause carried a lease under the scope, and the pauser took it (its watch
    -- starts on its own, and a refusal this quick may resume before it logs)
    local paused = pauser:logs():match("[^\n]*event=paused [^\n]*")
    assert.is_string(paused, "the pauser was not paused: " .. pauser:logs())
    assert.matches("lease_key=" .. BASE .. "stolon-pgbouncer/pause/", paused, 1, true)
  end)

  it("failover --manager patroni switches under a write load with 0 failed transactions", function()
    assert(ready("n2", "n1"), "n1 did not rejoin as a sync replica: " .. patroni_log("n1"))
    local auth_file = dir .. "/patroni-auth"
    D.write_file(auth_file, AUTH.user .. ":" .. AUTH.password .. "\n", "0600")
    local load = start_load()
    local report = dir .. "/report.json"
    local code, out, err = D.run({ "failover", "--manager", "patroni", "--patroni-scope", SCOPE,
      "--store-endpoints", endpoint, "--no-node-pausers", "--extra-pauser", PROXY .. ":" .. PAUSER_PORT,
      "--candidate", "n1", "--patroni-auth-file", auth_file,
      "--write-probe", "host={{.Host}} port={{.Port}} dbname=postgres user=postgres",
      "--report-file", report, "--metrics-port", "0" }, { timeout = 60 })
    local stats = load.stop()
    assert.equals(0, code, (out or "") .. (err or ""))
    local s = require("cjson").decode((assert(fs.read(report))))
    io.stderr:write(("\n  patroni failover: pause window %.1f ms (Patroni %.1f ms, of it %.1f ms until the "
      .. "leader key left the old leader; ours %.1f ms); %d transactions ok, %d failed\n"):format(
      s.pause_window_seconds * 1000, s.manager_seconds * 1000, (s.reaction_wait_seconds or 0) * 1000,
      s.ours_seconds * 1000, stats.ok, stats.failed))
    assert.equals(0, stats.failed, table.concat(stats.errors, "\n"))
    assert.is_true(stats.ok > 0)
    assert.equals("n1", view().leader)
    assert.is_truthy(patroni.primary(view()))
    assert(D.eventually(15, function() return db_host() == NODES.n1 end), "PgBouncer did not follow back")
    assert.matches("n2 .- %-> new master n1", out)
    -- the probe's connection to the candidate was opened while Patroni switched
    assert.matches("event=write_probe[^\n]*connection=preconnected", err)
    -- the proxy routed straight to n2's PostgreSQL: RESUME waited for its RELOAD
    assert.matches("event=routed[^\n]*endpoint=" .. PROXY:gsub("%.", "%%."), err)
    assert.is_nil(err:find(AUTH.password, 1, true))
  end)

  it("status --manager patroni reports the leader and the pausers", function()
    assert(ready("n1", "n2"), "n2 did not rejoin as a sync replica: " .. patroni_log("n2"))
    local code, out, err = D.run({ "status", "--manager", "patroni", "--patroni-scope", SCOPE,
      "--store-endpoints", endpoint, "--extra-pauser", PROXY .. ":" .. PAUSER_PORT, "--format", "json",
      "--timeout", "1s", "--metrics-port", "0" }, { timeout = 30 })
    -- no pauser runs on the members (port 8080): those rows are unhealthy, exit 1
    assert.equals(1, code, (out or "") .. (err or ""))
    local r = require("cjson").decode(out)
    assert.equals(SCOPE, r.cluster)
    assert.equals("n1", r.master.keeper)
    assert.equals(NODES.n1, r.master.host)
    assert.is_true(r.can_lose_one_node, tostring(r.health_detail))
    local by = {}
    for _, p in ipairs(r.pausers) do by[p.name] = p.status end
    assert.equals("healthy", by[PROXY .. ":" .. PAUSER_PORT])
    assert.equals("unhealthy", by.n2)
    assert.same({ "n1", "Leader", "running" }, { r.members[1].name, r.members[1].role, r.members[1].state })
    assert.same({ "n2", "Sync Standby", "running" }, { r.members[2].name, r.members[2].role, r.members[2].state })
    assert.is_number(r.members[2].lag)
    assert.is_number(r.members[1].timeline)
    code, out = D.run({ "status", "--manager", "patroni", "--patroni-scope", SCOPE, "--store-endpoints", endpoint,
      "--extra-pauser", PROXY .. ":" .. PAUSER_PORT, "--timeout", "1s", "--metrics-port", "0" }, { timeout = 30 })
    assert.equals(1, code)
    assert.matches("MEMBER +HOST +ROLE +STATE +TL +LAG %(B%) +PAUSER", out)
    assert.matches("n1 +" .. NODES.n1:gsub("%.", "%%.") .. ":29001 +Leader +running", out)
  end)

  it("failover --manager patroni refuses before any PAUSE: unknown candidate, unreachable REST API", function()
    local base = { "failover", "--manager", "patroni", "--patroni-scope", SCOPE, "--store-endpoints", endpoint,
      "--no-node-pausers", "--extra-pauser", PROXY .. ":" .. PAUSER_PORT, "--metrics-port", "0" }
    local function argv(...)
      local t = { table.unpack(base) }
      for _, a in ipairs { ... } do t[#t + 1] = a end
      return t
    end
    local code, out, err
    -- the checks alone, as an operator runs them before the real thing: no PAUSE, no switch
    for _, mode in ipairs { "--health-check-only", "--dry-run" } do
      code, out, err = D.run(argv(mode), { timeout = 30 })
      assert.equals(0, code, (out or "") .. (err or ""))
      assert.matches("event=checks_passed", err, 1, true)
      assert.is_nil(err:find("event=pgbouncer_pause", 1, true), mode)
      assert.is_nil(err:find("event=switchover_requested", 1, true), mode)
      assert.equals("n1", view().leader)
    end
    code, out, err = D.run(argv("--candidate", "n9"), { timeout = 30 })
    assert.equals(1, code, out)
    assert.matches("candidate n9 is not a member", err, 1, true)
    assert.is_nil(err:find("event=pgbouncer_pause", 1, true))
    -- the leader's REST API stopped (SIGSTOP: the port accepts nothing within the timeout)
    members.n1:signal("STOP")
    code, out, err = D.run(argv("--health-check-timeout", "1s"), { timeout = 30 })
    members.n1:signal("CONT")
    assert.equals(1, code, out)
    assert.matches("Patroni REST API of the leader", err, 1, true)
    assert.is_nil(err:find("event=pgbouncer_pause", 1, true))
    assert.equals("n1", view().leader)
  end)

  -- The negative control: the same load through the same PgBouncer, and a plain REST
  -- switchover without our PAUSE: the harness must see failed transactions.
  it("a plain Patroni switchover without the pause fails transactions (the harness sees them)", function()
    assert(ready("n1", "n2"), "n2 is no sync replica: " .. patroni_log("n2"))
    local load = start_load()
    local v = view()
    patroni.request_switch(v.members.n1, v.members.n2, { timeout = 30, auth = AUTH })
    assert(D.eventually(30, function() return patroni.switch_finished(view(), v.members.n1) end))
    assert(D.eventually(15, function() return db_host() == NODES.n2 end))
    local stats = load.stop()
    io.stderr:write(("\n  plain patroni switchover: %d transactions ok, %d failed\n"):format(stats.ok, stats.failed))
    assert.is_true(stats.failed > 0, "no failure seen: the load cannot see what the pause prevents")
  end)
end)
