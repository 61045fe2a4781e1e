-- The Patroni model (lua/patroni.lua) on documents shaped as Patroni 3.0.2 writes
-- them (patroni/ha.py touch_member, patroni/dcs/__init__.py), malformed ones included;
-- and the four functions of the manager interface on both models.
local cjson = require "cjson"
local patroni = require "patroni"
local stolon = require "stolon"

local BASE = "/service/pg/"

local function member(over)
  local doc = {
    conn_url = "postgres://127.0.0.1:5432/postgres", api_url = "http://127.0.0.1:8008/patroni",
    state = "running", role = "replica", version = "3.0.2", xlog_location = 100, timeline = 1,
  }
  for k, v in pairs(over or {}) do doc[k] = v end
  return cjson.encode(doc)
end

-- A healthy three-member cluster: n1 leads, n2 is its synchronous standby, n3 async.
local function cluster(edit)
  local kv = {
    leader = "n1",
    ["members/n1"] = member { conn_url = "postgres://replicator@127.0.0.11:5433/postgres", role = "master",
      api_url = "http://127.0.0.11:8008/patroni", xlog_location = 5000 },
    ["members/n2"] = member { conn_url = "postgres://127.0.0.12:5433/postgres", xlog_location = 4900 },
    ["members/n3"] = member { conn_url = "postgres://127.0.0.13:5433/postgres", xlog_location = 4000 },
    sync = cjson.encode { leader = "n1", sync_standby = "n2" },
    config = cjson.encode { ttl = 10, loop_wait = 1, synchronous_mode = true, maximum_lag_on_failover = 1048576 },
  }
  if edit then edit(kv) end
  local kvs, rev = {}, 0
  for k, v in pairs(kv) do
    rev = rev + 1
    kvs[#kvs + 1] = { key = BASE .. k, value = v, mod_revision = rev }
  end
  return kvs
end

local function view(edit)
  return assert(patroni.decode(cluster(edit), BASE))
end

describe("patroni model", function()
  it("builds Patroni's base path as patroni/dcs/__init__.py does", function()
    assert.equals("/service/pg/", patroni.base("/service", "pg"))
    assert.equals("/service/pg/", patroni.base("service", "pg"))
    assert.equals("/a/b/pg/", patroni.base("/a//b/", "pg"))
    assert.equals("/service/pg/stolon-pgbouncer/failover-lock", patroni.lock_key("/service/pg/"))
  end)

  it("finds the primary: the leader key's running master", function()
    local v = view()
    local p = assert(patroni.primary(v))
    assert.equals("n1", p.name)
    assert.equals("127.0.0.11", p.host)
    assert.equals("5433", p.port)
    assert.same({ "n2" }, v.sync.members)
    assert.is_true(patroni.synchronous_mode(v))
  end)

  it("accepts role primary (Patroni 4) and never standby_leader", function()
    local v = view(function(kv) kv["members/n1"] = member { role = "primary" } end)
    assert.equals("n1", (patroni.primary(v)).name)
    v = view(function(kv) kv["members/n1"] = member { role = "standby_leader" } end)
    local p, why = patroni.primary(v)
    assert.is_nil(p)
    assert.equals("leader_not_writable", why)
  end)

  it("has no primary without a leader key, a stopped leader or a leader without member", function()
    local _, why = patroni.primary(view(function(kv) kv.leader = nil end))
    assert.equals("no_leader", why)
    _, why = patroni.primary(view(function(kv) kv["members/n1"] = member { role = "master", state = "stopped" } end))
    assert.equals("leader_not_running", why)
    _, why = patroni.primary(view(function(kv) kv.leader = "n9" end))
    assert.equals("leader_not_member", why)
  end)

  it("parses conn_url hosts: names, IPv6 literals, default port, credentials", function()
    local u = assert(patroni.parse_url("postgres://u:p@[::1]:6000/postgres?x=1"))
    assert.equals("::1", u.host)
    assert.equals("6000", u.port)
    u = assert(patroni.parse_url("postgresql://db1.example/postgres", "5432"))
    assert.equals("db1.example", u.host)
    assert.equals("5432", u.port)
    assert.is_nil(patroni.parse_url("127.0.0.1:5432"))
  end)

  describe("candidates", function()
    it("picks the sync standby in synchronous mode", function()
      assert.equals("n2", assert(patroni.can_lose_primary(view())).name)
    end)

    it("refuses an async replica in synchronous mode, accepts it without", function()
      local _, why = patroni.can_lose_primary(view(), "n3")
      assert.matches("n3 is not in sync", why)
      local v = view(function(kv) kv.config = cjson.encode { synchronous_mode = false } end)
      assert.equals("n3", assert(patroni.can_lose_primary(v, "n3")).name)
    end)

    it("refuses nofailover, a stopped replica, lag beyond maximum_lag_on_failover", function()
      local v = view(function(kv) kv["members/n2"] = member { tags = { nofailover = true }, xlog_location = 4900 } end)
      local _, why = patroni.can_lose_primary(v)
      assert.matches("n2 has the nofailover tag", why)
      v = view(function(kv) kv["members/n2"] = member { state = "stopped", xlog_location = 4900 } end)
      _, why = patroni.can_lose_primary(v)
      assert.matches("n2 is stopped", why)
      v = view(function(kv)
        kv.config = cjson.encode { synchronous_mode = false, maximum_lag_on_failover = 500 }
      end)
      assert.equals("n2", assert(patroni.can_lose_primary(v)).name) -- lags 100
      _, why = patroni.can_lose_primary(v, "n3")
      assert.matches("n3 lags 1000 bytes", why)
    end)

    it("measures lag from the status key's optime when there is one", function()
      local v = view(function(kv)
        kv.status = cjson.encode { optime = 9999999 }
      end)
      local _, why = patroni.can_lose_primary(v)
      assert.matches("lags", why)
    end)

    it("refuses without a running leader, or with no replica at all", function()
      local _, why = patroni.can_lose_primary(view(function(kv) kv.leader = nil end))
      assert.matches("no running leader", why)
      _, why = patroni.can_lose_primary(view(function(kv) kv["members/n2"], kv["members/n3"] = nil, nil end))
      assert.equals("no candidate replica", why)
    end)
  end)

  describe("malformed documents", function()
    it("names the leader's member key when its JSON is broken", function()
      local v, err = patroni.decode(cluster(function(kv) kv["members/n1"] = "{not json" end), BASE)
      assert.is_nil(v)
      assert.matches("/service/pg/members/n1: invalid JSON", err, 1, true)
    end)

    it("names the key and field for a missing or wrong-typed field", function()
      local _, err = patroni.decode(cluster(function(kv)
        kv["members/n1"] = cjson.encode { state = "running", role = "master" }
      end), BASE)
      assert.equals("/service/pg/members/n1: conn_url is missing or not a string", err)
      _, err = patroni.decode(cluster(function(kv)
        kv["members/n1"] = member { role = 7 }
      end), BASE)
      assert.equals("/service/pg/members/n1: role is missing or not a string", err)
      _, err = patroni.decode(cluster(function(kv)
        kv["members/n1"] = member { conn_url = "postgres:///nohost", role = "master" }
      end), BASE)
      assert.matches("/service/pg/members/n1: conn_url: ", err, 1, true)
    end)

    it("names sync, config and leader when those are broken", function()
      local _, err = patroni.decode(cluster(function(kv) kv.sync = "[1,2" end), BASE)
      assert.matches("^/service/pg/sync: invalid JSON", err)
      _, err = patroni.decode(cluster(function(kv) kv.sync = cjson.encode { sync_standby = { "n2" } } end), BASE)
      assert.equals("/service/pg/sync: sync_standby is not a string", err)
      _, err = patroni.decode(cluster(function(kv) kv.config = "" end), BASE)
      assert.equals("/service/pg/config: empty value", err)
      _, err = patroni.decode(cluster(function(kv) kv.leader = "" end), BASE)
      assert.equals("/service/pg/leader: empty or not a member name", err)
    end)

    it("leaves out a broken non-leader member and says why it is no candidate", function()
      local v = view(function(kv) kv["members/n2"] = "garbage" end)
      assert.equals("n1", (patroni.primary(v)).name)
      assert.is_nil(v.members.n2)
      local _, why = patroni.can_lose_primary(v)
      assert.matches("/service/pg/members/n2 unusable", why, 1, true)
    end)

    it("ignores keys outside the base and our own lock keys", function()
      local kvs = cluster()
      kvs[#kvs + 1] = { key = "/service/other/leader", value = "x", mod_revision = 99 }
      kvs[#kvs + 1] = { key = BASE .. "stolon-pgbouncer/failover-lock/694d", value = "", mod_revision = 100 }
      local v = assert(patroni.decode(kvs, BASE))
      assert.equals("n1", v.leader)
    end)
  end)

  it("finishes a switch when another member leads, running as primary", function()
    local old = assert(patroni.primary(view()))
    local _, state = patroni.switch_finished(view(), old)
    assert.equals("pending", state)
    _, state = patroni.switch_finished(view(function(kv) kv.leader = nil end), old)
    assert.equals("no_leader", state)
    local mid = view(function(kv) kv.leader = "n2" end) -- n2 took the key, not yet promoted
    _, state = patroni.switch_finished(mid, old)
    assert.equals("leader_not_writable", state)
    local done = view(function(kv)
      kv.leader = "n2"
      kv["members/n2"] = member { conn_url = "postgres://127.0.0.12:5433/postgres", role = "primary" }
    end)
    assert.equals("n2", assert(patroni.switch_finished(done, old)).name)
  end)

  it("lists the members as patronictl does: role, state, timeline, lag", function()
    local rows = patroni.members_table(view())
    assert.equals(3, #rows)
    assert.same({ "n1", "Leader", "running" }, { rows[1].name, rows[1].role, rows[1].state })
    assert.is_nil(rows[1].lag)
    assert.same({ "n2", "Sync Standby", 100 }, { rows[2].name, rows[2].role, rows[2].lag })
    assert.same({ "n3", "Replica", 1000, 1 }, { rows[3].name, rows[3].role, rows[3].lag, rows[3].timeline })
    rows = patroni.members_table(view(function(kv) kv["members/n1"] = member { role = "standby_leader" } end))
    assert.equals("standby_leader", rows[1].role)
  end)

  it("counts 4xx replies and requests never sent as refusals; 503 and timeouts are unknown", function()
    assert.is_true(patroni.switch_refused(412))
    assert.is_true(patroni.switch_refused(nil, "connect"))
    assert.is_false(patroni.switch_refused(503))
    assert.is_false(patroni.switch_refused(200))
    assert.is_false(patroni.switch_refused(nil, "timeout"))
    assert.is_false(patroni.switch_refused(nil, "io"))
  end)
end)

describe("the manager interface", function()
  local FOUR = { "primary", "can_lose_primary", "request_switch", "switch_finished" }
  for _, model in ipairs { stolon, patroni } do
    it(model.NAME .. " exposes the four functions", function()
      for _, fn in ipairs(FOUR) do assert.is_function(model[fn], model.NAME .. "." .. fn) end
    end)
  end

  it("stolon's four are its existing rules", function()
    local f = assert(io.open("tests/fixtures/stolon/healthy.json"))
    local cd = assert(stolon.decode(f:read("a")))
    f:close()
    local p = assert(stolon.primary(cd))
    assert.equals(cd:master().uid, p.uid)
    assert.is_true(stolon.can_lose_primary(cd))
    assert.equals("pending", select(2, stolon.switch_finished(cd, p)))
    local edited
    local rev = stolon.request_switch(p, nil, { cas = function(what, edit)
      edited = assert(edit(cd.raw))
      assert.equals("failkeeper", what)
      return 42
    end })
    assert.equals(42, rev)
    assert.is_true(cjson.decode(edited).keepers[p.keeper].status.forceFail)
    -- without old: the master is the one the compare-and-swap's read finds
    local told
    edited = nil
    assert.equals(43, stolon.request_switch(nil, nil, { on_master = function(m) told = m end,
      cas = function(_, edit) edited = assert(edit(cd.raw)) return 43 end }))
    assert.equals(p.keeper, told.keeper)
    assert.is_true(cjson.decode(edited).keepers[p.keeper].status.forceFail)
    local no_master = assert(require("jsonedit").set(cd.raw, { "proxy", "spec", "masterDbUid" }, '""'))
    local _, err = stolon.request_switch(nil, nil, { cas = function(_, edit) return edit(no_master) end })
    assert.equals("could not identify master keeper", err)
  end)
end)

describe("--manager flags (lua/common.lua)", function()
  local common = require "common"
  local function opts(o)
    local t = { manager = "stolon", store_backend = "etcdv3", cluster_name = "", patroni_scope = "",
      patroni_namespace = "/service", store_prefix = "stolon/cluster", store_endpoints = { "http://127.0.0.1:1" } }
    for k, v in pairs(o) do t[k] = v end
    return t
  end

  it("picks the model, refusing an unknown manager", function()
    assert.equals(patroni, common.model(opts { manager = "patroni" }))
    assert.equals(stolon, common.model(opts {}))
    local _, err = common.model(opts { manager = "consul" })
    assert.equals('--manager "consul": want stolon or patroni', err)
    assert.equals('--manager "consul": want stolon or patroni', select(2, common.connect_store(opts { manager = "consul" })))
  end)

  it("requires the scope with patroni, the cluster name with stolon", function()
    assert.matches("--patroni-scope", select(2, common.connect_store(opts { manager = "patroni" })), 1, true)
    assert.matches("--cluster-name", select(2, common.connect_store(opts { patroni_scope = "x" })), 1, true)
  end)

  it("keeps stolon's lock name and puts Patroni's under the scope", function()
    assert.equals("stolon/cluster/c/clusterdata/failover", common.lock_name(opts { cluster_name = "c" }))
    assert.equals("/service/pg/stolon-pgbouncer/failover-lock",
      common.lock_name(opts { manager = "patroni", patroni_scope = "pg" }))
  end)
end)

describe("Patroni REST API credentials", function()
  local fs = require "fs"
  local function env(t) return function(k) return t[k] end end

  it("reads user:password from the file first, else Patroni's own variables", function()
    local path = os.tmpname()
    assert(fs.write_atomic(path, "admin:s3:cret\n"))
    local c = assert(patroni.credentials(path, env { PATRONI_RESTAPI_USERNAME = "other" }))
    assert.same({ user = "admin", password = "s3:cret" }, c)
    os.remove(path)
    c = assert(patroni.credentials("", env { PATRONI_RESTAPI_USERNAME = "u", PATRONI_RESTAPI_PASSWORD = "p" }))
    assert.same({ user = "u", password = "p" }, c)
    assert.is_nil((patroni.credentials("", env {})))
    assert.is_nil(select(2, patroni.credentials("", env {})))
  end)

  it("refuses a file that is missing or without user:password", function()
    local _, err = patroni.credentials("/nonexistent/auth", env {})
    assert.matches("--patroni-auth-file", err, 1, true)
    local path = os.tmpname()
    assert(fs.write_atomic(path, "no-colon\n"))
    _, err = patroni.credentials(path, env {})
    os.remove(path)
    assert.matches("expected user:password", err, 1, true)
  end)

  it("encodes HTTP basic auth", function()
    assert.equals("Basic YWRtaW46czNjcmV0", patroni.basic_auth { user = "admin", password = "s3cret" })
  end)
end)
