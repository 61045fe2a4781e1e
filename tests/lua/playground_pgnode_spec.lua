-- playground.pgnode on real PostgreSQL 15: a primary with a synchronous and an
-- asynchronous standby on 127.0.0.11..13, then a full switchover (promote, re-point,
-- rewind-demote) with every committed row on the new primary.
local pgnode = require "playground.pgnode"

local PORT = tonumber(os.getenv("PGNODE_SPEC_PORT") or "26432")

describe("playground.pgnode", function()
  local base, n0, n1, n2

  local function insert(node, from, to)
    return pgnode.query(node, string.format(
      "INSERT INTO loadgen (id, client) SELECT g, 0 FROM generate_series(%d, %d) g", from, to), "app")
  end

  local function count(node)
    local rows, err = pgnode.query(node, "SELECT count(*) AS n, coalesce(max(id), 0) AS m FROM loadgen", "app")
    assert.truthy(rows, err)
    return tonumber(rows[1].n), tonumber(rows[1].m)
  end

  local function wait_count(node, n)
    return pgnode.wait_for("rows on " .. node.name, 30, function() return (count(node)) == n end)
  end

  local function by_app(st)
    local t = {}
    for _, r in ipairs(st.replication) do t[r.application_name] = r end
    return t
  end

  setup(function()
    base = assert(pgnode.tmpdir("spgb-pgnode-spec"))
    n0 = assert(pgnode.init_primary{name = "keeper0", host = "127.0.0.11", port = PORT, dir = base,
                                    db_uid = "5e1b7a3c"})
    n1 = assert(pgnode.init_standby{name = "keeper1", host = "127.0.0.12", port = PORT + 1,
                                    primary = n0, sync = true, db_uid = "c0d4f812"})
    n2 = assert(pgnode.init_standby{name = "keeper2", host = "127.0.0.13", port = PORT + 2,
                                    primary = n0, sync = false, db_uid = "9a27e6b4"})
  end)

  teardown(function()
    for _, n in ipairs{n2, n1, n0} do
      if n then pgnode.stop(n, "immediate", 20) end
    end
    if base then pgnode.remove_dir(base) end
  end)

  it("runs a primary with one sync and one async standby, each on its own address", function()
    local st = pgnode.status(n0)
    assert.is_true(st.healthy)
    assert.is_false(st.in_recovery)
    assert.equals(1, st.timeline)
    assert.equals('FIRST 1 ("c0d4f812")', st.sync_names)
    local rep = by_app(st)
    assert.equals("sync", rep.c0d4f812.sync_state)
    assert.equals("async", rep["9a27e6b4"].sync_state)
    assert.equals("streaming", rep["9a27e6b4"].state)
    for _, n in ipairs{n1, n2} do
      local s = pgnode.status(n)
      assert.is_true(s.in_recovery)
      assert.equals(st.system_id, s.system_id)
      assert.equals("127.0.0.11", s.receiver.sender_host)
    end
    local r = pgnode.query(n1, "SELECT host(inet_server_addr()) AS a")
    assert.equals("127.0.0.12", r[1].a)
    assert.is_number(pgnode.pid(n0))
  end)

  it("replicates the application's writes to both standbys", function()
    assert.truthy(insert(n0, 1, 100))
    assert.truthy(wait_count(n1, 100))
    assert.truthy(wait_count(n2, 100))
  end)

  it("reports a stopped node as unhealthy without raising", function()
    assert.truthy(pgnode.stop(n2))
    local st = pgnode.status(n2)
    assert.is_false(st.healthy)
    assert.is_string(st.error)
    assert.truthy(pgnode.start(n2))
    assert.truthy(pgnode.wait_streaming(n0, "9a27e6b4", false, 30))
  end)

  it("switches over: promote the sync standby, re-point, rewind the old primary", function()
    assert.truthy(insert(n0, 101, 200))
    -- stolon's order: the old master stops (its walsenders flush everything first),
    -- the sync standby is promoted with the fake standby, the other one re-pointed.
    assert.truthy(pgnode.stop(n0, "fast"))
    assert.truthy(pgnode.set_sync_standbys(n1, {"stolonfakestandby"}))
    assert.truthy(pgnode.promote(n1))
    local st1 = pgnode.status(n1)
    assert.is_false(st1.in_recovery)
    assert.equals(2, st1.timeline)
    assert.truthy(pgnode.repoint(n2, n1, 30))

    local ok, how = pgnode.demote_to_standby(n0, n1, {app_name = "e43f0b9d"})
    assert.truthy(ok, how)
    assert.equals("rewind", how)
    assert.truthy(pgnode.set_sync_standbys(n1, {"9a27e6b4"}))
    assert.truthy(pgnode.wait_streaming(n1, "9a27e6b4", true, 30))

    local rep = by_app(pgnode.status(n1))
    assert.equals("sync", rep["9a27e6b4"].sync_state)
    assert.equals("async", rep.e43f0b9d.sync_state)
    local st0 = pgnode.status(n0)
    assert.is_true(st0.in_recovery)
    assert.equals("127.0.0.12", st0.receiver.sender_host)

    -- every row committed before is on the new primary; new writes reach everyone
    assert.equals(200, (count(n1)))
    assert.truthy(insert(n1, 201, 300))
    assert.truthy(wait_count(n2, 300))
    assert.truthy(wait_count(n0, 300))
  end)

  it("falls back to a fresh base backup when pg_rewind cannot run", function()
    -- n2 (a standby) is demoted "again" after its data folder lost pg_control: rewind
    -- fails, base backup succeeds.
    assert.truthy(pgnode.stop(n2))
    local code = require("proc").run{"rm", "-f", n2.dir .. "/global/pg_control", timeout = 10}
    assert.equals(0, code)
    local ok, how = pgnode.demote_to_standby(n2, n1)
    assert.truthy(ok, how)
    assert.equals("basebackup", how)
    assert.truthy(pgnode.wait_streaming(n1, "9a27e6b4", true, 30))
    assert.truthy(wait_count(n2, 300))
  end)
end)
