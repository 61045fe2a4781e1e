-- playground.clusterdata against the stolon fixtures (tests/fixtures/stolon).
local cd = require "playground.clusterdata"

local FIXTURES = os.getenv("STOLON_FIXTURES") or "tests/fixtures/stolon"

local function read(name)
  local f = assert(io.open(FIXTURES .. "/" .. name .. ".json", "rb"))
  local text = f:read("a")
  f:close()
  return text
end

local function load(name)
  return assert(cd.decode(read(name)))
end

-- Pretty-printed JSON -> compact JSON (drop whitespace outside strings): what Go's
-- encoder would have written for the same document.
local function minify(text)
  local out, i, n = {}, 1, #text
  while i <= n do
    local c = text:sub(i, i)
    if c == '"' then
      local j = i + 1
      while true do
        local d = text:sub(j, j)
        if d == "\\" then j = j + 2
        elseif d == '"' then break
        else j = j + 1 end
      end
      out[#out + 1] = text:sub(i, j)
      i = j + 1
    else
      if not c:match("%s") then out[#out + 1] = c end
      i = i + 1
    end
  end
  return table.concat(out)
end

local function list_str(l)
  if l == nil then return "absent" end
  if l == cd.null then return "null" end
  return "[" .. table.concat(l, ",") .. "]"
end

-- The fields the add-on (supervise, failover) and the sentinel's logic depend on.
local function project(doc)
  local p = {
    master = doc.cluster.status.master,
    masterDbUid = doc.proxy.spec.masterDbUid,
    proxy_generation = doc.proxy.generation,
    sleepInterval = doc.cluster.spec.sleepInterval,
    keepers = {},
    dbs = {},
  }
  for uid, k in pairs(doc.keepers) do
    p.keepers[uid] = {healthy = k.status.healthy, forceFail = k.status.forceFail}
  end
  for uid, db in pairs(doc.dbs) do
    local s, st = db.spec, db.status
    p.dbs[uid] = {
      keeperUID = s.keeperUID, role = s.role, initMode = s.initMode,
      follows = s.followConfig and s.followConfig.dbuid,
      synchronousReplication = s.synchronousReplication,
      followers = list_str(s.followers),
      spec_sync = list_str(s.synchronousStandbys),
      external = list_str(s.externalSynchronousStandbys),
      status_sync = list_str(st.synchronousStandbys),
      healthy = st.healthy,
      generation = db.generation, currentGeneration = st.currentGeneration,
      timelineID = st.timelineID, listenAddress = st.listenAddress, port = st.port,
    }
  end
  return p
end

describe("playground.clusterdata", function()
  local names = {"healthy", "failkeeper-requested", "no-master",
                 "switched-insufficient-standbys", "switched", "unhealthy-async"}

  it("re-encodes every fixture byte for byte as Go's compact encoder would", function()
    for _, name in ipairs(names) do
      local text = read(name)
      assert.equals(minify(text), cd.encode(cd.decode(text)), name)
    end
  end)

  it("round-trips decode(encode(x)) and keeps null versus []", function()
    local doc = load("switched-insufficient-standbys")
    local again = cd.decode(cd.encode(doc))
    assert.same(doc, again)
    assert.equals(cd.null, again.dbs["9a27e6b4"].spec.synchronousStandbys)
    assert.same({}, again.dbs.c0d4f812.spec.synchronousStandbys)
    assert.matches('"synchronousStandbys":%[%],"externalSynchronousStandbys":%["stolonfakestandby"%]',
                   cd.encode(again))
  end)

  it("omits zero values and escapes like Go", function()
    local doc = load("healthy")
    doc.keepers.keeper0.status.healthy = false
    doc.keepers.keeper0.status.forceFail = false
    doc.proxy.spec.masterDbUid = ""
    doc.cluster.status.phase = "<&>"
    local text = cd.encode(doc)
    assert.is_nil(text:find('"forceFail"'))
    assert.is_nil(text:find('"masterDbUid"'))
    assert.matches('"keeper0","generation":1,"changeTime":"[^"]+","spec":{},"status":{"lastHealthyTime"', text)
    assert.truthy(text:find('"phase":"\\u003c\\u0026\\u003e"', 1, true))
  end)

  it("rejects bad input without raising", function()
    assert.is_nil((cd.decode("{not json")))
    assert.is_nil((cd.decode(42)))
    assert.is_nil((cd.decode("[1,2]")))
  end)

  it("parses and formats Go durations and RFC3339Nano times", function()
    assert.equals(5, cd.parse_duration("5s"))
    assert.equals(172800, cd.parse_duration("48h0m0s"))
    assert.equals(90.5, cd.parse_duration("1m30.5s"))
    assert.equals(0.25, cd.parse_duration("250ms"))
    assert.is_nil((cd.parse_duration("5 s")))
    assert.equals("5s", cd.format_duration(5))
    assert.equals("48h0m0s", cd.format_duration(172800))
    assert.equals("1m30s", cd.format_duration(90))
    assert.equals("250ms", cd.format_duration(0.25))
    assert.equals("2024-05-14T10:00:05.53812Z", cd.format_time(1715680805, 538120000))
    assert.equals("2024-05-14T10:00:05Z", cd.format_time(1715680805))
  end)

  it("builds a document equivalent to healthy.json with new{}", function()
    local fx = load("healthy")
    local doc = cd.new{
      cluster_uid = "3f9d2c1a", master = "keeper0", sync = {"keeper1"},
      keepers = {
        {uid = "keeper0", host = "127.0.0.11", port = 5432, db_uid = "5e1b7a3c"},
        {uid = "keeper1", host = "127.0.0.12", port = 5432, db_uid = "c0d4f812"},
        {uid = "keeper2", host = "127.0.0.13", port = 5432, db_uid = "9a27e6b4"},
      },
      proxies = {"1b6e93d0", "6f02ac57", "d8c41e2a"},
      pg_version = {Maj = 14, Min = 11}, system_id = "7368145829376501234",
      now = "2024-05-14T10:00:00.512387204Z",
    }
    local p, want = project(doc), project(fx)
    want.proxy_generation = nil
    p.proxy_generation = nil
    assert.same(want, p)
    -- Same key order and shape: with the volatile values copied over, identical text.
    for _, uid in ipairs{"keeper0", "keeper1", "keeper2"} do
      local s, f = doc.keepers[uid].status, fx.keepers[uid].status
      s.bootUUID, s.lastHealthyTime = f.bootUUID, f.lastHealthyTime
    end
    for uid, db in pairs(doc.dbs) do
      db.status.xLogPos = fx.dbs[uid].status.xLogPos
      db.status.olderWalFile = fx.dbs[uid].status.olderWalFile
    end
    doc.cluster.changeTime = fx.cluster.changeTime
    doc.proxy.changeTime, doc.proxy.generation = fx.proxy.changeTime, fx.proxy.generation
    assert.equals(cd.encode(fx), cd.encode(doc))
  end)

  describe("switchover steps", function()
    local healthy, requested

    setup(function()
      healthy = load("healthy")
      requested = cd.copy(healthy)
      requested.keepers.keeper0.status.forceFail = true
    end)

    it("failkeeper-requested is healthy.json plus the mark", function()
      assert.equals(cd.encode(load("failkeeper-requested")), cd.encode(requested))
      assert.equals("keeper0", (cd.failed_keeper(requested)))
      assert.is_nil((cd.failed_keeper(healthy)))
    end)

    it("produce no-master -> switched-insufficient-standbys -> switched", function()
      local nm, info = cd.consume_failkeeper(requested, {now = "2024-05-14T10:00:05.538120655Z"})
      assert.truthy(nm, info)
      assert.same({failed_keeper = "keeper0", old_master = "5e1b7a3c", new_master = "c0d4f812"}, info)
      assert.same(project(load("no-master")), project(nm))
      assert.is_nil(nm.proxy.spec.masterDbUid)
      assert.is_nil(cd.encode(nm):find("masterDbUid", 1, true))
      -- the input is left alone
      assert.is_true(requested.keepers.keeper0.status.forceFail)

      local sis, info2 = cd.promoted(nm, {now = "2024-05-14T10:00:10.561843077Z",
                                          new_db_uid = "e43f0b9d", switch_point = 117443304})
      assert.truthy(sis, info2)
      assert.same({new_master = "c0d4f812", old_master = "5e1b7a3c", new_db = "e43f0b9d"}, info2)
      local want = load("switched-insufficient-standbys")
      assert.same(project(want), project(sis))
      assert.same(want.dbs.c0d4f812.status.timelinesHistory, sis.dbs.c0d4f812.status.timelinesHistory)
      assert.same(want.dbs.e43f0b9d.spec, sis.dbs.e43f0b9d.spec)
      assert.same(want.dbs.e43f0b9d.status, sis.dbs.e43f0b9d.status)

      local sw, info3 = cd.converged(sis, {
        now = "2024-05-14T10:00:41.604417329Z",
        db_status = {e43f0b9d = {listenAddress = "127.0.0.11", port = "5432"}},
      })
      assert.truthy(sw, info3)
      assert.same({master = "c0d4f812", sync = "9a27e6b4"}, info3)
      assert.same(project(load("switched")), project(sw))
      -- proxy untouched by convergence: generation and changeTime stay
      assert.equals(sis.proxy.changeTime, sw.proxy.changeTime)
    end)

    it("refuses to switch without a mark or without a healthy sync standby", function()
      assert.is_nil((cd.consume_failkeeper(healthy)))
      local bad = cd.copy(requested)
      bad.dbs.c0d4f812.status.healthy = nil
      local doc, err = cd.consume_failkeeper(bad)
      assert.is_nil(doc)
      assert.matches("no healthy synchronous standby", err)
    end)

    it("reports a silent keeper as unhealthy-async.json does", function()
      local now = "2024-05-14T10:00:30.667215038Z"
      local doc = cd.update_status(healthy, {
        keeper0 = {healthy = true, db = {xLogPos = 117449216}},
        keeper1 = {healthy = true, db = {xLogPos = 117449216}},
        keeper2 = {healthy = false},
      }, {now = now})
      local want = load("unhealthy-async")
      assert.same(project(want), project(doc))
      assert.equals(healthy.keepers.keeper2.status.lastHealthyTime,
                    doc.keepers.keeper2.status.lastHealthyTime)
      assert.equals(now, doc.keepers.keeper1.status.lastHealthyTime)
      assert.equals(now, doc.keepers.keeper1.changeTime)
    end)
  end)
end)
