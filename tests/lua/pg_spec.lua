-- pg: the asynchronous libpq client against a real PostgreSQL 15 on loopback.
local pg = require "pg"
local task = require "task"
local P = require "support.pg"

describe("pg", function()
  local db

  setup(function()
    -- The server notices a vanished client during a query only with this setting.
    db = P.start_postgres{ host = "127.0.0.1", settings = { "client_connection_check_interval=500ms" } }
  end)

  teardown(function()
    if db then db:destroy() end
  end)

  local function connect(opts)
    return assert(pg.connect(db:conninfo(), opts))
  end

  it("connects with a conninfo table, a string and a URI", function()
    local c1 = connect()
    assert.equals("ok", c1:status())
    c1:close()
    local c2 = assert(pg.connect(("host=%s port=%d user=postgres dbname=postgres"):format(db.host, db.port)))
    assert.equals("1", c2:query("select 1 as one")[1].one)
    c2:close()
    local c3 = assert(pg.connect(("postgresql://postgres@%s:%d/postgres"):format(db.host, db.port)))
    assert.equals("1", c3:query("select 1 as one")[1].one)
    c3:close()
  end)

  it("connects over the unix socket", function()
    local c = assert(pg.connect{ host = db.dir, port = db.port, user = "postgres", dbname = "postgres" })
    assert.equals("1", c:query("select 1 as one")[1].one)
    c:close()
  end)

  it("converts values to strings, NULL to a missing key, and keeps column order", function()
    local c = connect()
    local rows = assert(c:query([[select 1::int as i, 'x'::text as t, true as b, 1.5::numeric as n,
      null::int as z, array[1,2] as a, '{"k":1}'::json as j, ''::text as e]]))
    assert.equals(1, #rows)
    assert.same({ "i", "t", "b", "n", "z", "a", "j", "e" }, rows.fields)
    assert.equals("SELECT 1", rows.command)
    assert.equals(1, rows.affected)
    local r = rows[1]
    assert.equals("1", r.i)
    assert.equals("x", r.t)
    assert.equals("t", r.b)
    assert.equals("1.5", r.n)
    assert.is_nil(r.z)
    assert.equals("{1,2}", r.a)
    assert.equals('{"k":1}', r.j)
    assert.equals("", r.e)
    c:close()
  end)

  it("reports command tags and affected rows", function()
    local c = connect()
    local r = assert(c:query("create temporary table t (id int primary key, v text)"))
    assert.equals("CREATE TABLE", r.command)
    assert.is_nil(r.affected)
    assert.equals(0, #r)
    r = assert(c:query("insert into t values (1, 'a'), (2, 'b'), (3, null)"))
    assert.equals("INSERT 0 3", r.command)
    assert.equals(3, r.affected)
    r = assert(c:query("update t set v = 'z' where id > 1"))
    assert.equals(2, r.affected)
    r = assert(c:query("select id, v from t order by id"))
    assert.equals(3, #r)
    assert.equals("z", r[3].v)
    r = assert(c:query(""))
    assert.equals(0, #r)
    c:close()
  end)

  it("returns the last result of several statements", function()
    local c = connect()
    local r = assert(c:query("select 1 as a; select 2 as b"))
    assert.equals("2", r[1].b)
    assert.is_nil(r[1].a)
    c:close()
  end)

  it("sends text parameters, nil as NULL", function()
    local c = connect()
    local r = assert(c:query("select $1::int + 1 as x, $2::text as n, $3::bool as b, $4::text as s",
                             41, nil, true, "it's"))
    assert.equals("42", r[1].x)
    assert.is_nil(r[1].n)
    assert.equals("t", r[1].b)
    assert.equals("it's", r[1].s)
    r = assert(c:query_opts{ sql = "select $1::text as a, $2::text as b", params = { "x", n = 2 } })
    assert.equals("x", r[1].a)
    assert.is_nil(r[1].b)
    c:close()
  end)

  it("returns errors with their SQLSTATE and stays usable", function()
    local c = connect()
    local r, err, code = c:query("selec 1")
    assert.is_nil(r)
    assert.equals("42601", code)
    assert.matches("^pg%.query: syntax error", err)
    r, err, code = c:query("select * from no_such_table")
    assert.is_nil(r)
    assert.equals("42P01", code)
    assert.matches("no_such_table", err)
    r, err, code = c:query("select $1::int", "nope")
    assert.is_nil(r)
    assert.equals("22P02", code)
    assert.matches("nope", err)
    assert.equals("ok", c:status())
    assert.equals("1", c:query("select 1 as one")[1].one)
    c:close()
  end)

  it("fails fast on a closed port", function()
    local t0 = task.now()
    local c, err, code = pg.connect{ host = "127.0.0.1", port = P.free_port(), user = "postgres",
                                     dbname = "postgres" }
    assert.is_nil(c)
    assert.equals("connect", code)
    assert.matches("^pg%.connect: ", err)
    assert.is_true(task.now() - t0 < 5)
  end)

  it("reports the server's SQLSTATE when the login is refused", function()
    local c, err, code = pg.connect{ host = db.host, port = db.port, user = "postgres", dbname = "nosuchdb" }
    assert.is_nil(c)
    assert.equals("connect", code) -- libpq keeps no SQLSTATE for a failed login
    assert.matches("nosuchdb", err)
  end)

  it("times out a connect to a server that never answers", function()
    db.proc:signal("STOP")
    local c, err, code = pg.connect(db:conninfo(), { timeout = 1 })
    db.proc:signal("CONT")
    assert.is_nil(c)
    assert.equals("timeout", code)
    assert.equals("pg.connect: timeout", err)
    assert.truthy(P.eventually(10, function() return pg.connect(db:conninfo(), { timeout = 2 }) end))
  end)

  it("times out a query, drops the connection and marks it broken", function()
    local c = connect()
    local pid = c:backend_pid()
    local r, err, code = c:query_opts{ sql = "select pg_sleep(30)", timeout = 0.5 }
    assert.is_nil(r)
    assert.equals("timeout", code)
    assert.equals("pg.query: timeout", err)
    assert.equals("broken", c:status())
    r, err, code = c:query("select 1")
    assert.is_nil(r)
    assert.equals("connection", code)
    assert.matches("broken", err)
    -- The server notices the client went away and ends the backend (before pg_sleep ends).
    local other = connect()
    assert.truthy(P.eventually(15, function()
      local rows = other:query("select count(*) as n from pg_stat_activity where pid = $1", pid)
      return rows and rows[1].n == "0"
    end))
    other:close()
    c:close()
  end)

  it("applies the connection's query_timeout to conn:query", function()
    local c = connect{ query_timeout = 0.5 }
    local r, _, code = c:query("select pg_sleep(30)")
    assert.is_nil(r)
    assert.equals("timeout", code)
    c:close()
  end)

  it("reports a connection terminated by the server", function()
    local c = connect()
    local other = connect()
    assert(other:query("select pg_terminate_backend($1)", c:backend_pid()))
    other:close()
    local r, err, code = c:query("select 1")
    assert.is_nil(r)
    assert.equals("57P01", code, err) -- the FATAL sent before closing is kept
    assert.equals("broken", c:status())
    c:close()
  end)

  it("raises on a closed connection and closes idempotently", function()
    local c = connect()
    c:close()
    c:close()
    assert.equals("closed", c:status())
    assert.has_error(function() c:query("select 1") end, "pg.query: closed")
    do
      local c2 <close> = connect()
      assert.equals("ok", c2:status())
      c = c2
    end
    assert.equals("closed", c:status())
  end)

  it("raises on misuse", function()
    assert.has_error(function() pg.connect(42) end)
    local c = connect()
    assert.has_error(function() c:query({}) end)
    assert.has_error(function() c:query("select $1", {}) end)
    local errs = {}
    local results = task.all{
      function() return c:query("select pg_sleep(0.3)") end,
      function()
        task.sleep(0.05)
        local ok, e = pcall(c.query, c, "select 1")
        errs[#errs + 1] = not ok and e or "no error"
      end,
    }
    assert.truthy(results[1][1])
    assert.matches("busy", errs[1])
    c:close()
  end)

  it("wakes a task waiting on a connection that another task closes", function()
    local c = connect()
    local results = task.all{
      function() return c:query("select pg_sleep(30)") end,
      function() task.sleep(0.1) c:close() end,
    }
    assert.is_nil(results[1][1])
    assert.equals("pg.query: closed", results[1][2])
  end)

  it("runs many queries in parallel on separate connections", function()
    local n = 20
    local fns = {}
    for i = 1, n do
      fns[i] = function()
        local c = assert(pg.connect(db:conninfo()))
        local r = assert(c:query("select pg_sleep(0.3), $1::int * 2 as v", i))
        c:close()
        return tonumber(r[1].v)
      end
    end
    local t0 = task.now()
    local results, err = task.all(fns)
    assert.is_nil(err)
    for i = 1, n do assert.equals(2 * i, results[i][1]) end
    assert.is_true(task.now() - t0 < 4, "not serial (20 x 0.3 s = 6 s)")
  end)

  it("quotes identifiers and literals", function()
    assert.equals('"a""b"', pg.escape_identifier('a"b'))
    assert.equals("'it''s'", pg.escape_literal("it's"))
  end)
end)
