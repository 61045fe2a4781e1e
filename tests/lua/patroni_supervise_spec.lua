-- supervise --manager patroni against real etcd, two PostgreSQL servers and the
-- PgBouncer it runs, on 127.0.9.40-44 (etcd 22952): Patroni's DCS keys are written
-- here as Patroni 3.0.2 writes them (lua/patroni.lua's layout), so every case is
-- deterministic; patroni_cluster_spec.lua checks the layout against real Patroni.
-- It follows the scope's prefix: waits for a running leader, follows a switch with
-- one RELOAD, ignores what it cannot use, and never reloads while there is no leader.
local D = require "support.daemon"
local E = require "support.etcd"
local P = require "support.pg"
local T = require "support.template"
local PT = require "support.patroni"
local cjson = require "cjson"
local fs = require "fs"
local pg = require "pg"
local pgbouncer = require "pgbouncer"
local proc = require "proc"
local task = require "task"

local ETCD_HOST, ETCD_PORT = "127.0.9.40", 22950
local HOST_A, HOST_B = "127.0.9.41", "127.0.9.42"
local BOUNCER_HOST = "127.0.9.44"
local PG_PORT, BOUNCER_PORT = 29001, 29010
local SCOPE = "psv"
local BASE = "/service/" .. SCOPE .. "/"

describe("supervise --manager patroni", function()
  local dir, etcd_srv, endpoint, client, pg_a, pg_b, sv, admin

  local function member(host, role, state, xlog)
    return cjson.encode {
      conn_url = ("postgres://%s:%d/postgres"):format(host, PG_PORT),
      api_url = ("http://%s:8008/patroni"):format(host), state = state or "running", role = role,
      version = "3.0.2", xlog_location = xlog or 100, timeline = 1,
    }
  end

  local function put(rel, value) assert(client:put(BASE .. rel, value)) end

  local function reloads() return PT.reloads(dir) end

  local function db_host() return PT.db_host(admin) end

  local function served_by()
    local conn, err = pg.connect({ host = BOUNCER_HOST, port = BOUNCER_PORT, dbname = "postgres",
      user = "postgres" }, { timeout = 3 })
    if not conn then return nil, err end
    local rows, qerr = conn:query_opts { sql = "SELECT host(inet_server_addr()) AS addr", timeout = 3 }
    conn:close()
    if not rows then return nil, qerr end
    return rows[1].addr
  end

  -- the number of log lines with this event so far
  local function seen(event)
    local n = 0
    for _ in sv:logs():gmatch("event=" .. event .. "[ \n]") do n = n + 1 end
    return n
  end

  setup(function()
    dir = P.tmpdir("spgb-patroni-sv")
    etcd_srv = E.start { members = 1, hosts = { ETCD_HOST }, port = ETCD_PORT }
    endpoint = etcd_srv.endpoints[1]
    client = assert(require("etcd").connect { endpoints = { endpoint }, timeout = 3 })
    pg_a = P.start_postgres { host = HOST_A, port = PG_PORT }
    pg_b = P.start_postgres { host = HOST_B, port = PG_PORT }
    D.write_file(dir .. "/userlist.txt", '"pgbouncer" ""\n"postgres" ""\n')
    D.write_file(dir .. "/pgbouncer.ini.template", PT.pgbouncer_template {
      dir = dir, host = BOUNCER_HOST, port = BOUNCER_PORT, comment = "; member {{.Member}} of {{.Scope}}" })
    admin = pgbouncer.connect { host = BOUNCER_HOST, port = BOUNCER_PORT, user = "pgbouncer", timeout = 3, lazy = true }
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

  it("waits for a running leader before starting PgBouncer", function()
    put("config", cjson.encode { ttl = 10, loop_wait = 1 })
    put("members/a", member(HOST_A, "replica"))
    put("members/b", member(HOST_B, "replica"))
    sv = D.start(T.supervise_argv({ dir = dir, port = BOUNCER_PORT }, { "--manager", "patroni", "--patroni-scope",
      SCOPE, "--store-endpoints", endpoint, "--metrics-port", "0", "--poll-interval", "5s",
      "--pgbouncer-retry-timeout", "1s" }), { as_postgres = true })
    assert(D.eventually(10, function() return sv:logs():find("reason=no_leader", 1, true) end),
      "supervise did not see the leaderless scope: " .. tostring(sv:logs()))
    -- a leader key whose member is still a replica (taken, not yet promoted) is no primary
    put("leader", "a")
    assert(D.eventually(10, function() return sv:logs():find("reason=leader_not_writable", 1, true) end))
    task.sleep(0.3)
    assert.is_nil(fs.read(dir .. "/pgbouncer.ini"))
  end)

  it("starts PgBouncer at the leader once it runs as master, with Member and Scope", function()
    put("members/a", member(HOST_A, "master"))
    assert(D.eventually(15, function() return db_host() == HOST_A end), "PgBouncer not pointed at " .. HOST_A)
    assert.equals(HOST_A, served_by())
    assert.matches("; member a of " .. SCOPE, fs.read(dir .. "/pgbouncer.ini"), 1, true)
    assert.equals(0, reloads())
  end)

  it("does not reload when other keys or fields change", function()
    local before = seen("reloaded")
    put("members/b", member(HOST_B, "replica", "running", 200))
    put("sync", cjson.encode { leader = "a", sync_standby = "b" })
    task.sleep(1.5)
    assert.equals(0, reloads())
    assert.equals(before, seen("reloaded"))
  end)

  it("keeps the config on a malformed leader member, and while there is no leader", function()
    local config = assert(fs.read(dir .. "/pgbouncer.ini"))
    put("members/a", '{"conn_url": ')
    assert(D.eventually(10, function() return sv:logs():find("/service/psv/members/a: invalid JSON", 1, true) end),
      "malformed member not seen, or its key not named: " .. sv:logs())
    put("members/a", member(HOST_A, "master"))
    assert(client:delete(BASE .. "leader"))
    assert(D.eventually(10, function() return seen("clusterdata_no_master") >= 3 end))
    assert.equals(config, fs.read(dir .. "/pgbouncer.ini"))
    assert.equals(HOST_A, served_by())
    assert.equals(0, reloads())
  end)

  it("follows a switchover to the new leader (role primary) with one RELOAD", function()
    -- Patroni's order: the old leader demotes, the candidate takes the key, promotes
    put("members/a", member(HOST_A, "replica", "stopped"))
    put("leader", "b")
    task.sleep(0.5)
    assert.equals(0, reloads())
    put("members/b", member(HOST_B, "primary"))
    assert(D.eventually(15, function() return db_host() == HOST_B end), "PgBouncer did not follow the leader")
    assert.equals(HOST_B, served_by())
    assert.equals(1, reloads())
    assert.matches("; member b of " .. SCOPE, fs.read(dir .. "/pgbouncer.ini"), 1, true)
  end)

  it("never follows a standby_leader", function()
    local before = seen("clusterdata_no_master")
    put("members/a", member(HOST_A, "master"))
    put("members/b", member(HOST_B, "standby_leader"))
    assert(D.eventually(10, function() return seen("clusterdata_no_master") > before end))
    task.sleep(0.5)
    assert.equals(HOST_B, db_host())
    assert.equals(1, reloads())
    assert.is_nil(sv:logs():find("level=error event=apply_failed", 1, true))
  end)
end)
