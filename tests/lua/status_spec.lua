-- The status command against real etcd (stolon's healthy.json, addresses rewritten to
-- 127.0.4.51-53), one PgBouncer and a pauser per keeper address: every keeper is
-- listed HEALTHY; a pauser that is down (or a wrong token) shows UNHEALTHY and the
-- exit status is 1.
local D = require "support.daemon"
local E = require "support.etcd"
local P = require "support.pg"
local fs = require "fs"
local http = require "http"
local proc = require "proc"

local ETCD_HOST, ETCD_PORT = "127.0.4.50", 22784
local KEEPER_HOSTS = { "127.0.4.51", "127.0.4.52", "127.0.4.53" }
local BOUNCER_HOST = "127.0.4.54"
local CLUSTER = "st"
local TOKEN = "status-spec-token"

describe("status", function()
  local dir, etcd_srv, endpoint, client, db, bouncer, pauser_port
  local pausers = {}

  local function status(extra)
    local argv = { "status", "--cluster-name", CLUSTER, "--store-endpoints", endpoint, "--metrics-port", "0",
      "--pauser-port", tostring(pauser_port), "--token-file", dir .. "/token", "--timeout", "2s" }
    for _, a in ipairs(extra or {}) do argv[#argv + 1] = a end
    return D.run(argv, { timeout = 30 })
  end

  -- The line of one keeper in the table.
  local function row(out, keeper)
    return out:match("\n(" .. keeper .. " [^\n]*)")
  end

  local function start_pauser(host)
    local d = D.start { "pauser", "--bind-address", ("%s:%d"):format(host, pauser_port), "--pgbouncer-host",
      BOUNCER_HOST, "--pgbouncer-port", tostring(bouncer.port), "--metrics-port", "0", "--token-file",
      dir .. "/token" }
    assert(D.eventually(10, function()
      local r = http.request { url = ("http://%s:%d/health"):format(host, pauser_port), timeout = 1,
        headers = { Authorization = TOKEN } }
      return r and r.status == 200
    end), "pauser on " .. host .. " did not start")
    return d
  end

  local function put_fixture(name)
    local text = assert(fs.read("tests/fixtures/stolon/" .. name .. ".json"))
    for i, h in ipairs(KEEPER_HOSTS) do text = text:gsub("127%.0%.0%.1" .. i, h) end
    assert(client:put("stolon/cluster/" .. CLUSTER .. "/clusterdata", text))
  end

  setup(function()
    dir = P.tmpdir("spgb-status")
    etcd_srv = E.start { members = 1, hosts = { ETCD_HOST }, port = ETCD_PORT - 2 }
    endpoint = etcd_srv.endpoints[1]
    client = assert(require("etcd").connect { endpoints = { endpoint }, timeout = 3 })
    put_fixture("healthy")
    db = P.start_postgres { host = BOUNCER_HOST, port = P.free_port(BOUNCER_HOST) }
    bouncer = P.start_pgbouncer { host = BOUNCER_HOST, port = P.free_port(BOUNCER_HOST), target = db }
    D.write_file(dir .. "/token", TOKEN .. "\n", "0600")
    pauser_port = P.free_port(KEEPER_HOSTS[1])
    for i, h in ipairs(KEEPER_HOSTS) do pausers[i] = start_pauser(h) end
  end)

  teardown(function()
    for _, p in pairs(pausers) do p:stop() end
    if bouncer then bouncer:destroy() end
    if db then db:destroy() end
    if etcd_srv then etcd_srv:stop() end
    if dir then proc.run { "rm", "-rf", dir } end
  end)

  it("lists every keeper HEALTHY and exits 0", function()
    local code, out, err = status()
    assert.equals(0, code, err)
    assert.matches("cluster st: master keeper0 (127.0.4.51); can lose one node", out, 1, true)
    for i, keeper in ipairs { "keeper0", "keeper1", "keeper2" } do
      local line = assert(row(out, keeper), "no line for " .. keeper .. " in:\n" .. out)
      assert.matches(KEEPER_HOSTS[i] .. ":" .. pauser_port, line, 1, true)
      assert.matches("HEALTHY", line, 1, true)
      assert.is_nil(line:find("UNHEALTHY", 1, true))
    end
  end)

  it("prints the same report as JSON with --format json (the documented fields)", function()
    local cjson = require "cjson"
    local code, out, err = status { "--format", "json" }
    assert.equals(0, code, err)
    local r = cjson.decode(out)
    assert.equals(CLUSTER, r.cluster)
    assert.equals("keeper0", r.master.keeper)
    assert.equals(KEEPER_HOSTS[1], r.master.host)
    assert.equals("number", type(r.master.port))
    assert.equals("string", type(r.master.db_uid))
    assert.is_true(r.can_lose_one_node)
    assert.equals(cjson.null, r.health_detail)
    assert.equals(3, #r.pausers)
    for i, keeper in ipairs { "keeper0", "keeper1", "keeper2" } do
      local p = r.pausers[i]
      assert.equals(keeper, p.name)
      assert.equals(("%s:%d"):format(KEEPER_HOSTS[i], pauser_port), p.endpoint)
      assert.equals("healthy", p.status)
      assert.equals(cjson.null, p.error)
      assert.is_true(#p.databases > 0)
      assert.equals("string", type(p.databases[1].name))
    end
    local bad = D.write_file(dir .. "/bad-token", "nope\n", "0600")
    code, out = status { "--format", "json", "--token-file", bad }
    assert.equals(1, code)
    r = cjson.decode(out)
    for _, p in ipairs(r.pausers) do
      assert.equals("unhealthy", p.status)
      assert.equals("string", type(p.error))
      assert.equals(cjson.null, p.databases)
    end
    local ecode, _, eerr = status { "--format", "yaml" }
    assert.equals(2, ecode)
    assert.matches("--format \"yaml\": want table or json", eerr, 1, true)
  end)

  it("shows every pauser UNHEALTHY and exits 1 with a wrong token", function()
    local bad = D.write_file(dir .. "/bad-token", "nope\n", "0600")
    local code, out = status { "--token-file", bad }
    assert.equals(1, code)
    for _, keeper in ipairs { "keeper0", "keeper1", "keeper2" } do
      assert.matches("UNHEALTHY", row(out, keeper), 1, true)
    end
  end)

  it("reports the cluster's own health from clusterdata", function()
    put_fixture("unhealthy-async")
    local code, out = status()
    put_fixture("healthy")
    assert.equals(0, code)
    assert.matches("NOT healthy: insufficient standbys for failure", out, 1, true)
  end)

  it("shows a pauser that is down as UNHEALTHY and exits 1", function()
    pausers[3]:stop()
    pausers[3] = nil
    local code, out = status()
    assert.equals(1, code, out)
    assert.matches("UNHEALTHY", row(out, "keeper2"), 1, true)
    assert.is_nil(row(out, "keeper0"):find("UNHEALTHY", 1, true))
    assert.is_nil(row(out, "keeper1"):find("UNHEALTHY", 1, true))
  end)
end)
