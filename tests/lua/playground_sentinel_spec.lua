-- playground.sentinel on real etcd and PostgreSQL 15 (127.0.0.11..13): initial
-- clusterdata, health from the nodes, and a forceFail switch written in stolon's order.
local cd = require "playground.clusterdata"
local pgnode = require "playground.pgnode"
local sentinel = require "playground.sentinel"
local proc = require "proc"
local task = require "task"
local cjson = require "cjson.safe"

local PORT = tonumber(os.getenv("SENTINEL_SPEC_PORT") or "26442")
local ETCD_PORT = tonumber(os.getenv("SENTINEL_SPEC_ETCD_PORT") or "26479")
local ENDPOINT = "http://127.0.0.1:" .. ETCD_PORT
local KEY = sentinel.key("playground")

-- Every version of key stored since revision `from`, oldest first (etcd keeps them
-- until compaction): what a watcher would have seen.
local function versions(from)
  local out = {}
  local code, body = proc.run{"curl", "-sS", "-X", "POST", ENDPOINT .. "/v3/kv/range",
                              "--data-binary", cjson.encode{key = sentinel.b64encode(KEY)}, timeout = 10}
  assert.equals(0, code)
  local head = cjson.decode(body)
  local rev = tonumber(head.header.revision)
  for r = from, rev do
    local c, b = proc.run{"curl", "-sS", "-X", "POST", ENDPOINT .. "/v3/kv/range",
                          "--data-binary", cjson.encode{key = sentinel.b64encode(KEY), revision = tostring(r)},
                          timeout = 10}
    assert.equals(0, c)
    local res = cjson.decode(b)
    local kv = res.kvs and res.kvs[1]
    if kv and tonumber(kv.mod_revision) == r then
      out[#out + 1] = assert(cd.decode(sentinel.b64decode(kv.value)))
    end
  end
  return out, rev
end

-- The add-on's view of a document, to name the stage it is in.
local function stage(doc)
  local m = doc.cluster.status.master
  local db = doc.dbs[m]
  local ext = db and db.spec.externalSynchronousStandbys
  if not doc.proxy.spec.masterDbUid then return "no-master" end
  if type(ext) == "table" and ext[1] == cd.FAKE_STANDBY then return "switched-insufficient-standbys" end
  return "ok:" .. doc.proxy.spec.masterDbUid
end

describe("playground.sentinel", function()
  local base, etcd_dir, etcd, n0, n1, n2, store, state

  local function doc_now()
    local text, rev = store:get(KEY)
    assert.truthy(text, rev)
    return assert(cd.decode(text)), rev
  end

  -- Read-modify-CAS as stolonctl / the failover tool do.
  local function edit(fn)
    for _ = 1, 10 do
      local doc, rev = doc_now()
      fn(doc)
      if store:cas(KEY, cd.encode(doc), rev) then return true end
    end
    error("could not edit clusterdata")
  end

  local function count(node)
    local rows = assert(pgnode.query(node, "SELECT count(*) AS n FROM loadgen", "app"))
    return tonumber(rows[1].n)
  end

  setup(function()
    base = assert(pgnode.tmpdir("spgb-sentinel-spec"))
    local code, out = proc.run{"mktemp", "-d", "/tmp/spgb-etcd-spec.XXXXXX", timeout = 10}
    assert.equals(0, code)
    etcd_dir = out:gsub("%s+$", "")
    etcd = assert(proc.spawn{"etcd", "--name", "spec", "--data-dir", etcd_dir .. "/data",
      "--listen-client-urls", ENDPOINT, "--advertise-client-urls", ENDPOINT,
      "--listen-peer-urls", "http://127.0.0.1:" .. (ETCD_PORT + 1),
      "--initial-advertise-peer-urls", "http://127.0.0.1:" .. (ETCD_PORT + 1),
      "--initial-cluster", "spec=http://127.0.0.1:" .. (ETCD_PORT + 1),
      "--log-level", "error", stdin = "null", stdout = "null", stderr = "null"})
    -- the etcd module when it is linked (SENTINEL_SPEC_STORE=http forces curl)
    local has_etcd, etcd_mod = pcall(require, "etcd")
    if has_etcd and type(etcd_mod) == "table" and os.getenv("SENTINEL_SPEC_STORE") ~= "http" then
      store = sentinel.etcd_store(etcd_mod.connect{endpoints = {ENDPOINT}})
    else
      store = sentinel.http_store(ENDPOINT)
    end
    assert(pgnode.wait_for("etcd", 30, function() return store:get("probe") ~= nil end))
    n0 = assert(pgnode.init_primary{name = "keeper0", host = "127.0.0.11", port = PORT, dir = base,
                                    db_uid = "5e1b7a3c"})
    n1 = assert(pgnode.init_standby{name = "keeper1", host = "127.0.0.12", port = PORT + 1,
                                    primary = n0, sync = true, db_uid = "c0d4f812"})
    n2 = assert(pgnode.init_standby{name = "keeper2", host = "127.0.0.13", port = PORT + 2,
                                    primary = n0, db_uid = "9a27e6b4"})
    state = sentinel.new{store = store, cluster_name = "playground", nodes = {n0, n1, n2},
                         cluster_uid = "3f9d2c1a", proxies = {"1b6e93d0"},
                         sleep_interval = "5s", fail_interval = "2s"}
  end)

  teardown(function()
    for _, n in ipairs{n2 or false, n1 or false, n0 or false} do
      if n then pgnode.stop(n, "immediate", 20) end
    end
    if etcd then etcd:signal("TERM") etcd:wait(10) end
    if base then pgnode.remove_dir(base) end
    if etcd_dir then pgnode.remove_dir(etcd_dir) end
  end)

  it("writes the initial clusterdata from the nodes' real roles", function()
    assert.equals("init", sentinel.tick(state))
    assert.equals("status", sentinel.tick(state))
    local doc = doc_now()
    assert.equals("5e1b7a3c", doc.cluster.status.master)
    assert.equals("5e1b7a3c", doc.proxy.spec.masterDbUid)
    local m = doc.dbs["5e1b7a3c"]
    assert.same({"c0d4f812"}, m.spec.synchronousStandbys)
    assert.same({"c0d4f812"}, m.status.synchronousStandbys)
    assert.same({"9a27e6b4", "c0d4f812"}, m.spec.followers)
    assert.equals("127.0.0.11", m.status.listenAddress)
    assert.equals(tostring(PORT), m.status.port)
    assert.equals(cd.null, doc.dbs.c0d4f812.spec.synchronousStandbys)
    for _, k in pairs(doc.keepers) do assert.is_true(k.status.healthy) end
    assert.is_number(m.status.xLogPos)
    -- both stores read the same value and revision; a stale revision loses the CAS
    local text, rev = store:get(KEY)
    local text2, rev2 = sentinel.http_store(ENDPOINT):get(KEY)
    assert.equals(text, text2)
    assert.equals(rev, rev2)
    assert.is_false(store:cas(KEY, text, rev - 1))
  end)

  it("marks a silent keeper unhealthy after failInterval, and healthy once back", function()
    assert.truthy(pgnode.stop(n2))
    local frozen = doc_now().keepers.keeper2.status.lastHealthyTime
    local doc = assert(pgnode.wait_for("keeper2 unhealthy", 15, function()
      assert.truthy(sentinel.tick(state))
      local d = doc_now()
      return not d.keepers.keeper2.status.healthy and d
    end, 0.3))
    assert.is_nil(doc.dbs["9a27e6b4"].status.healthy)
    assert.equals(frozen, doc.keepers.keeper2.status.lastHealthyTime)
    assert.is_true(doc.keepers.keeper1.status.healthy)
    assert.equals("5e1b7a3c", doc.proxy.spec.masterDbUid)
    assert.truthy(pgnode.start(n2))
    assert.equals("status", sentinel.tick(state))
    doc = doc_now()
    assert.is_true(doc.keepers.keeper2.status.healthy)
    assert.is_true(doc.dbs["9a27e6b4"].status.healthy)
  end)

  it("switches on forceFail in stolon's order, on ticks of the document's sleepInterval", function()
    assert.truthy(pgnode.query(n0, "INSERT INTO loadgen (id, client) SELECT g, 1 FROM generate_series(1, 500) g", "app"))
    local _, rev0 = doc_now()
    local runner = task.spawn(sentinel.run, {state = state})
    -- the failover tool: shorten the interval, then mark the master's keeper failed
    edit(function(d) d.cluster.spec.sleepInterval = "1s" end)
    task.sleep(1.2)
    edit(function(d) d.keepers.keeper0.status.forceFail = true end)
    local t0 = task.now()
    local done = pgnode.wait_for("switched", 90, function()
      local d = doc_now()
      return stage(d) == "ok:c0d4f812" and #d.dbs.c0d4f812.status.synchronousStandbys == 1
    end, 0.2)
    local elapsed = task.now() - t0
    runner:cancel()
    assert.truthy(done)

    -- the stored versions, in order, went through stolon's stages
    local docs = versions(rev0 + 1)
    local seen = {}
    for _, d in ipairs(docs) do
      local s = stage(d)
      if seen[#seen] ~= s then seen[#seen + 1] = s end
    end
    local want = {"ok:5e1b7a3c", "no-master", "switched-insufficient-standbys", "ok:c0d4f812"}
    assert.same(want, seen)
    local nm, sis, sw
    for _, d in ipairs(docs) do
      local s = stage(d)
      if s == "no-master" then nm = nm or d
      elseif s == "switched-insufficient-standbys" then sis = sis or d
      elseif s == "ok:c0d4f812" then sw = d end
    end
    -- no-master: mark consumed, old master unhealthy, new master elected, not promoted
    assert.is_nil(nm.keepers.keeper0.status.forceFail)
    assert.is_nil(nm.keepers.keeper0.status.healthy)
    assert.is_nil(nm.dbs["5e1b7a3c"].status.healthy)
    assert.equals("c0d4f812", nm.cluster.status.master)
    assert.equals("master", nm.dbs.c0d4f812.spec.role)
    assert.same({"5e1b7a3c"}, nm.dbs.c0d4f812.spec.synchronousStandbys)
    assert.equals(nm.dbs.c0d4f812.generation - 1, nm.dbs.c0d4f812.status.currentGeneration)
    -- switched-insufficient-standbys: promoted, fake standby, old db replaced
    assert.equals("c0d4f812", sis.proxy.spec.masterDbUid)
    assert.equals(nm.proxy.generation + 1, sis.proxy.generation)
    assert.same({cd.FAKE_STANDBY}, sis.dbs.c0d4f812.spec.externalSynchronousStandbys)
    assert.same({}, sis.dbs.c0d4f812.spec.synchronousStandbys)
    assert.equals(2, sis.dbs.c0d4f812.status.timelineID)
    assert.is_nil(sis.dbs["5e1b7a3c"])
    local new_db = cd.keeper_db(sis, "keeper0")
    assert.equals("resync", sis.dbs[new_db].spec.initMode)
    assert.equals("c0d4f812", sis.dbs["9a27e6b4"].spec.followConfig.dbuid)
    -- switched: keeper2's db is the sync standby, the rewound keeper0 healthy again
    assert.same({"9a27e6b4"}, sw.dbs.c0d4f812.spec.synchronousStandbys)
    assert.same({"9a27e6b4"}, sw.dbs.c0d4f812.status.synchronousStandbys)
    assert.same({}, sw.dbs.c0d4f812.spec.externalSynchronousStandbys)
    assert.equals("none", sw.dbs[new_db].spec.initMode)
    assert.is_true(sw.dbs[new_db].status.healthy)
    assert.equals("127.0.0.11", sw.dbs[new_db].status.listenAddress)
    assert.is_true(sw.keepers.keeper0.status.healthy)
    assert.equals("1s", sw.cluster.spec.sleepInterval)
    assert.is_true(elapsed < 60, "switch took " .. elapsed .. "s")

    -- and on real Postgres
    local s1 = pgnode.status(n1)
    assert.is_false(s1.in_recovery)
    local rep = {}
    for _, r in ipairs(s1.replication) do rep[r.application_name] = r.sync_state end
    assert.equals("sync", rep["9a27e6b4"])
    assert.equals("async", rep[new_db])
    assert.is_true(pgnode.status(n0).in_recovery)
    assert.equals(500, count(n1))
    assert.truthy(pgnode.query(n1, "INSERT INTO loadgen (id, client) VALUES (501, 1)", "app"))
    assert.truthy(pgnode.wait_for("row on keeper0", 20, function() return count(n0) == 501 end))
  end)
end)
