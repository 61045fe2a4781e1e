-- pgbouncer: the admin-console client against a real PgBouncer 1.18 (md5 auth,
-- pool_mode=transaction) in front of a real PostgreSQL 15, on loopback.
local pg = require "pg"
local pgbouncer = require "pgbouncer"
local task = require "task"
local P = require "support.pg"

describe("pgbouncer", function()
  local db, b, admin

  setup(function()
    db = P.start_postgres{ host = "127.0.0.1" }
    b = P.start_pgbouncer{ host = "127.0.0.1", target = db, auth_type = "md5" }
    admin = assert(pgbouncer.connect(b:admin_options()))
  end)

  teardown(function()
    if admin then admin:close() end
    if b then b:destroy() end
    if db then db:destroy() end
  end)

  local function client()
    return assert(pg.connect(b:conninfo("postgres"), { timeout = 5 }))
  end

  local function find(rows, key, value)
    for _, r in ipairs(rows) do
      if r[key] == value then return r end
    end
  end

  -- A query through PgBouncer works (within a few seconds).
  local function through_works()
    local c, err = pg.connect(b:conninfo("postgres"), { timeout = 5, query_timeout = 5 })
    if not c then return false, err end
    local rows, qerr = c:query("select 1 as one")
    c:close()
    return rows ~= nil and rows[1].one == "1", qerr
  end

  it("connects over TCP and over the unix socket", function()
    local rows = assert(admin:show("version"))
    assert.equals(1, #rows)
    local a2 = assert(pgbouncer.connect{ socket_dir = b.socket_dir, port = b.port,
                                         user = "pgbouncer", password = "pgbouncer" })
    assert.truthy(a2:show("databases"))
    a2:close()
    assert.has_error(function() a2:show("pools") end, "pgbouncer.show: closed")
  end)

  it("refuses a wrong password with the server's message", function()
    local a, err, code = pgbouncer.connect{ host = b.host, port = b.port, user = "pgbouncer",
                                            password = "wrong" }
    assert.is_nil(a)
    assert.equals("connect", code)
    assert.matches("^pgbouncer%.connect: .*password", err)
  end)

  it("shows databases, pools, clients, servers keyed by column name", function()
    local c = client()
    assert(c:query("select 1"))
    local dbs = assert(admin:show("databases"))
    local row = assert(find(dbs, "name", "postgres"))
    assert.equals(db.host, row.host)
    assert.equals(tostring(db.port), row.port)
    assert.equals("0", row.paused)
    local pools = assert(admin:show("pools"))
    assert.truthy(find(pools, "database", "postgres"))
    local clients = assert(admin:show("clients"))
    assert.truthy(find(clients, "database", "postgres"))
    assert.truthy(admin:show("servers"))
    assert.truthy(admin:show("stats"))
    local r, err, code = admin:show("nosuchthing")
    assert.is_nil(r)
    assert.equals("08P01", code)
    assert.matches("^pgbouncer%.show: ", err)
    assert.has_error(function() admin:show("pools; RESUME") end)
    c:close()
  end)

  it("pauses and resumes idempotently", function()
    assert.is_true(admin:pause())
    local ok, note = admin:pause()
    assert.is_true(ok)
    assert.equals("already paused", note)
    assert.is_true(admin:resume())
    ok, note = admin:resume()
    assert.is_true(ok)
    assert.equals("not paused", note)
    assert.is_true(through_works())
  end)

  it("pauses and resumes one database", function()
    assert.is_true(admin:pause("postgres"))
    assert.is_true(admin:pause("postgres"))
    local row = find(assert(admin:show("databases")), "name", "postgres")
    assert.equals("1", row.paused)
    assert.is_true(admin:resume("postgres"))
    local ok, note = admin:resume("postgres")
    assert.is_true(ok)
    assert.equals("not paused", note)
    local r, err, code = admin:pause("nosuchdb")
    assert.is_nil(r)
    assert.equals("08P01", code)
    assert.matches("no such database", err)
    assert.is_true(through_works())
  end)

  it("times out a PAUSE blocked by an open transaction and leaves PgBouncer resumed", function()
    local holder = client()
    assert(holder:query("begin"))
    assert(holder:query("select txid_current()"))
    local t0 = task.now()
    local ok, err, code = admin:pause{ timeout = 1 }
    assert.is_nil(ok)
    assert.equals("timeout", code)
    assert.matches("^pgbouncer%.pause: timeout after 1s", err)
    assert.matches("resumed$", err)
    assert.is_true(task.now() - t0 < 10)
    assert.is_true(through_works())
    local rows = assert(holder:query("rollback"))
    assert.equals("ROLLBACK", rows.command)
    assert.is_true(through_works())
    -- Nothing is left paused: a fresh PAUSE completes and RESUME finds it paused.
    assert.is_true(admin:pause{ timeout = 5 })
    assert.is_true(admin:resume())
    holder:close()
  end)

  it("times out a PAUSE of one database and resumes that database", function()
    local holder = client()
    assert(holder:query("begin; select txid_current()"))
    local ok, err, code = admin:pause("postgres", { timeout = 1 })
    assert.is_nil(ok)
    assert.equals("timeout", code)
    assert.matches("resumed$", err)
    assert.equals("0", find(assert(admin:show("databases")), "name", "postgres").paused)
    assert.is_true(through_works())
    assert(holder:query("rollback"))
    holder:close()
  end)

  it("answers other calls while a PAUSE waits", function()
    local holder = client()
    assert(holder:query("begin; select txid_current()"))
    local results = task.all{
      function() return admin:pause{ timeout = 2 } end,
      function()
        task.sleep(0.3)
        return admin:show("databases")
      end,
    }
    assert.equals("timeout", results[1][3])
    assert.truthy(find(results[2][1], "name", "postgres"))
    assert(holder:query("rollback"))
    holder:close()
    assert.is_true(through_works())
  end)

  it("disables and enables a database", function()
    assert.is_true(admin:disable("postgres"))
    local c, err = pg.connect(b:conninfo("postgres"), { timeout = 5 })
    if c then
      -- PgBouncer may accept the login and refuse at the first query.
      local r, qerr = c:query("select 1")
      c:close()
      assert.is_nil(r)
      err = qerr
    end
    assert.matches("disabled", err)
    assert.is_true(admin:enable("postgres"))
    assert.is_true(through_works())
    assert.has_error(function() admin:disable() end)
  end)

  it("reloads, reconnects and kills", function()
    assert.is_true(admin:reload())
    local c = client()
    assert(c:query("select 1"))
    assert.is_true(admin:reconnect("postgres"))
    assert.is_true(admin:reconnect())
    assert(c:query("select 1"))
    assert.is_true(admin:kill("postgres"))
    -- KILL leaves the database paused until RESUME.
    assert.equals("1", find(assert(admin:show("databases")), "name", "postgres").paused)
    assert.is_true(admin:resume("postgres"))
    assert.is_true(through_works())
    c:close()
  end)

  it("reconnects transparently after PgBouncer restarts", function()
    assert.truthy(admin:show("pools"))
    b:restart()
    local rows, err = admin:show("pools")
    assert.truthy(rows, err)
    assert.is_true(admin:pause())
    assert.is_true(admin:resume())
  end)

  it("times out connect and commands when PgBouncer does not answer", function()
    b:signal("STOP")
    local a, err, code = pgbouncer.connect(b:admin_options{ timeout = 1 })
    b:signal("CONT")
    assert.is_nil(a)
    assert.equals("timeout", code)
    assert.equals("pgbouncer.connect: timeout", err)
    -- A command on a stopped PgBouncer times out; the next one reconnects.
    local a3 = assert(pgbouncer.connect(b:admin_options{ command_timeout = 1 }))
    b:signal("STOP")
    local r, _, c3 = a3:show("pools")
    b:signal("CONT")
    assert.is_nil(r)
    assert.equals("timeout", c3)
    assert.truthy(a3:show("pools"))
    a3:close()
  end)

  it("runs many client queries through PgBouncer in parallel", function()
    local fns = {}
    for i = 1, 50 do
      fns[i] = function()
        local c = assert(pg.connect(b:conninfo("postgres"), { timeout = 10 }))
        local r = assert(c:query("select pg_sleep(0.2), $1::int as v", i))
        c:close()
        return tonumber(r[1].v)
      end
    end
    local results, err = task.all(fns)
    assert.is_nil(err)
    for i = 1, 50 do assert.equals(i, results[i][1]) end
  end)
end)
