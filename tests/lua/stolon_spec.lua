local jsonedit = require "jsonedit"
local stolon = require "stolon"
local cjson = require "cjson"

local function fixture(name)
  local f = assert(io.open("tests/fixtures/stolon/" .. name .. ".json"))
  local text = f:read("a")
  f:close()
  return text
end

local function load(name)
  return assert(stolon.decode(fixture(name), name))
end

describe("stolon model on stolon's own documents", function()
  -- The table in tests/fixtures/stolon/README.md: what the original tool returns.
  local cases = {
    { "healthy", true, "pending", "127.0.0.11" },
    { "failkeeper-requested", true, "pending", "127.0.0.11" },
    { "no-master", "master unhealthy", "no_master", nil },
    { "switched-insufficient-standbys", "insufficient standbys", "insufficient_standbys", "127.0.0.12" },
    { "switched", true, "recovered", "127.0.0.12" },
    { "unhealthy-async", "insufficient standbys for failure", "pending", "127.0.0.11" },
  }
  for _, c in ipairs(cases) do
    local name, healthy, recovery, host = c[1], c[2], c[3], c[4]
    it(name, function()
      local cd = load(name)
      local ok, why = cd:check_healthy(1)
      if healthy == true then
        assert.is_true(ok, why)
      else
        assert.is_nil(ok)
        assert.equals(healthy, why)
      end
      local m, state = cd:recovered("keeper0")
      if recovery == "recovered" then
        assert.is_table(m)
        assert.equals("keeper1", m.keeper)
      else
        assert.is_nil(m)
        assert.equals(recovery, state)
      end
      local master = cd:master()
      assert.equals(host, master and master.host)
    end)
  end

  it("counts a dangling masterDbUid as no master", function()
    local raw = fixture("healthy"):gsub('"masterDbUid": "5e1b7a3c"', '"masterDbUid": "deadbeef"')
    local cd = assert(stolon.decode(raw))
    assert.is_nil(cd:master())
    assert.equals("master unhealthy", select(2, cd:check_healthy(1)))
  end)

  it("follows stolon where the original was wrong", function()
    -- absent minSynchronousStandbys is stolon's default 1, not 0
    local raw = fixture("switched-insufficient-standbys"):gsub('"minSynchronousStandbys": 1,', "")
    local cd = assert(stolon.decode(raw))
    assert.equals(1, cd:min_sync())
    assert.equals("insufficient_standbys", select(2, cd:recovered("keeper0")))
    -- without synchronous replication no sync standby is required
    raw = fixture("healthy"):gsub('"synchronousReplication": true', '"synchronousReplication": false', 1)
    assert.equals(0, assert(stolon.decode(raw)):min_sync())
    -- absent sleepInterval is stolon's default
    raw = fixture("healthy"):gsub('"sleepInterval": "5s",', "")
    assert.equals("5s", assert(stolon.decode(raw)):sleep_interval())
  end)

  it("does not count the placeholder standby, even as status, nor an unpromoted master", function()
    local raw = fixture("switched"):gsub('"synchronousStandbys": %[%s*"9a27e6b4"%s*%]',
      '"synchronousStandbys": ["stolonfakestandby"]')
    local cd = assert(stolon.decode(raw))
    assert.equals("insufficient_standbys", select(2, cd:recovered("keeper0")))
    -- "slow promotion" variant of the fixtures README: generation ahead of currentGeneration
    local doc = cjson.decode(fixture("switched"))
    doc.dbs.c0d4f812.status.currentGeneration = doc.dbs.c0d4f812.generation - 1
    cd = assert(stolon.decode(cjson.encode(doc)))
    assert.equals("not_promoted", select(2, cd:recovered("keeper0")))
  end)

  it("lists the keepers with their pauser addresses", function()
    local ks = load("healthy"):keepers()
    assert.same({ "keeper0", "keeper1", "keeper2" }, { ks[1].keeper, ks[2].keeper, ks[3].keeper })
    assert.same({ "127.0.0.11", "127.0.0.12", "127.0.0.13" }, { ks[1].host, ks[2].host, ks[3].host })
  end)

  it("rejects malformed documents with the key named", function()
    local cd, err = stolon.decode("{not json", "stolon/cluster/x/clusterdata")
    assert.is_nil(cd)
    assert.matches("stolon/cluster/x/clusterdata: invalid JSON", err, 1, true)
    assert.is_nil((stolon.decode("", "k")))
  end)

  it("marks a keeper failed and changes nothing else", function()
    local raw = fixture("healthy")
    local out = assert(stolon.with_force_fail(raw, "keeper0"))
    local want = cjson.decode(fixture("failkeeper-requested"))
    assert.same(want, cjson.decode(out))
    assert.is_nil((stolon.with_force_fail(raw, "keeper9")))
  end)

  it("tells when the manager began the switch a forceFail asked for (the failover's reaction)", function()
    local old = load("healthy"):master()
    assert.is_nil(load("failkeeper-requested"):switch_began(old)) -- our own write: nothing yet
    assert.equals("no_master", load("no-master"):switch_began(old))
    assert.equals("master_changed", load("switched-insufficient-standbys"):switch_began(old))
    -- a sentinel that takes the mark and keeps the master for now
    local raw = assert(stolon.with_force_fail(fixture("healthy"), "keeper0"))
    local taken = assert(jsonedit.set(raw, { "keepers", "keeper0", "status", "forceFail" }, "false"))
    assert.equals("force_fail_consumed", assert(stolon.decode(taken)):switch_began(old))
  end)

  it("shortens and restores sleepInterval byte for byte", function()
    local raw = fixture("healthy")
    local short = assert(stolon.with_sleep_interval(raw, "1s"))
    assert.equals("1s", stolon.decode(short):sleep_interval())
    assert.equals(#raw, #short)
    assert.not_equals(raw, short)
    assert.equals(raw, assert(stolon.with_sleep_interval(short, "5s")))
  end)
end)
