-- The pauser command against a real PgBouncer: health, pause/resume, expiry,
-- token, start-up RESUME, PAUSE timeout with a transaction held open, RESUME on
-- TERM mid-PAUSE, bounded metrics and logs under junk requests, RESUMEs that fail
-- tried again.
local P = require "support.pg"
local D = require "support.daemon"
local http = require "http"
local pg = require "pg"
local pgbouncer = require "pgbouncer"
local task = require "task"
local cjson = require "cjson"

describe("pauser", function()
  local db, bouncer, admin, dir
  local port, metrics_port, token = nil, nil, "s3cret-token"
  local daemon

  local function url(path) return ("http://127.0.0.1:%d%s"):format(port, path) end

  local function call(method, path, body, auth)
    local res, err = http.request {
      method = method, url = url(path), timeout = 10,
      headers = { ["Authorization"] = auth, ["Content-Type"] = body and "application/json" or nil },
      body = body,
    }
    assert(res, err)
    return res.status, cjson.decode(res.body ~= "" and res.body or "{}")
  end

  local function paused() return bouncer:paused() end

  local function healthy()
    local res = http.request { url = url("/health"), headers = { Authorization = token }, timeout = 1 }
    return res and res.status == 200
  end

  -- The pauser reaches PgBouncer through its unix socket (the default), the spec
  -- through TCP: hiding the socket file makes the pauser's new admin connections
  -- fail while PgBouncer and the spec's connections carry on.
  local function start_pauser(o)
    local argv = { "pauser", "--bind-address", "127.0.0.1:" .. port, "--pgbouncer-socket-dir", bouncer.socket_dir,
      "--pgbouncer-port", tostring(bouncer.port), "--metrics-port", tostring(metrics_port), "--token-file", dir .. "/token" }
    for _, a in ipairs(o and o.args or {}) do argv[#argv + 1] = a end
    local d = D.start(argv)
    if not (o and o.nowait) then D.eventually(10, healthy) end
    return d
  end

  local function socket() return ("%s/.s.PGSQL.%d"):format(bouncer.socket_dir, bouncer.port) end

  -- cut_off(restart, fn): PAUSE PgBouncer behind the pauser's back and run fn while
  -- the pauser cannot reach PgBouncer. restart first: the pauser's admin connection
  -- is gone and PgBouncer stands for one that kept the pause.
  local function cut_off(restart, fn)
    if restart then bouncer:restart() end
    assert(os.rename(socket(), socket() .. ".hidden"))
    local ok, err = pcall(function()
      assert(admin:pause())
      fn()
    end)
    assert(os.rename(socket() .. ".hidden", socket()))
    assert(ok, err)
  end

  -- Whether PgBouncer gets resumed within `seconds`; resumes it when not, so the
  -- specs after still start from a resumed PgBouncer.
  local function resumed_within(seconds)
    local ok = D.eventually(seconds, function() return not paused() end)
    if not ok then assert(admin:resume()) end
    return ok and true or false
  end

  setup(function()
    db = P.start_postgres { host = "127.0.0.1", port = P.free_port() }
    bouncer = P.start_pgbouncer { host = "127.0.0.1", port = P.free_port(), target = db }
    admin = assert(pgbouncer.connect { host = "127.0.0.1", port = bouncer.port, user = "pgbouncer", timeout = 5 })
    dir = P.tmpdir("spgb-pauser")
    D.write_file(dir .. "/token", token .. "\n", "0600")
    port = P.free_port()
    metrics_port = P.free_port()
    daemon = start_pauser()
  end)

  teardown(function()
    if daemon then daemon:stop() end
    if bouncer then bouncer:destroy() end
    if db then db:destroy() end
    if dir then require("proc").run { "rm", "-rf", dir } end
  end)

  it("reports health with PgBouncer's databases and config", function()
    local status, body = call("GET", "/health", nil, token)
    assert.equals(200, status)
    assert.equals("healthy", body.status)
    assert.equals("transaction", body.config.pool_mode)
    assert.equals("postgres", body.databases[1].name)
  end)

  it("requires the token, plain or Bearer, and nothing else", function()
    assert.equals(401, (call("GET", "/health")))
    assert.equals(401, (call("GET", "/health", nil, "wrong")))
    assert.equals(401, (call("GET", "/health", nil, token .. "x")))
    assert.equals(200, (call("GET", "/health", nil, "Bearer " .. token)))
    assert.equals(401, (call("POST", "/pause", '{"timeout":1,"expiry":1}')))
    assert.is_false(paused())
  end)

  it("pauses and resumes PgBouncer", function()
    local status, body = call("POST", "/pause", '{"timeout": 5, "expiry": 30}', token)
    assert.equals(200, status)
    assert.is_string(body.expires_at)
    assert.is_true(paused())
    status = call("POST", "/resume", "{}", token)
    assert.equals(200, status)
    assert.is_false(paused())
  end)

  it("resumes by itself when the expiry passes", function()
    assert.equals(200, (call("POST", "/pause", '{"timeout": 5, "expiry": 1}', token)))
    assert.is_true(paused())
    assert.is_true(D.eventually(10, function() return not paused() end))
  end)

  it("keeps a PAUSE with a lease key until the expiry when it has no store access, and says so", function()
    local status, body = call("POST", "/pause",
      '{"timeout": 5, "expiry": 2, "lease_key": "stolon/cluster/x/clusterdata/pause/1", "lease": "1"}', token)
    assert.equals(200, status, body.error)
    local _, h = call("GET", "/health", nil, token)
    assert.is_true(h.paused)
    assert.is_false(h.store)
    assert.equals("no_store", h.lease.state)
    assert.equals("stolon/cluster/x/clusterdata/pause/1", h.lease.key)
    task.sleep(1)
    assert.is_true(paused())
    assert.is_true(D.eventually(10, function() return not paused() end))
    _, h = call("GET", "/health", nil, token)
    assert.is_nil(h.lease)
    assert.equals(400, (call("POST", "/pause", '{"timeout": 5, "expiry": 2, "lease_key": 7}', token)))
    assert.is_false(paused())
    -- null is as good as absent: the original's pause
    assert.equals(200, (call("POST", "/pause", '{"timeout": 5, "expiry": 30, "lease_key": null, "lease": null}', token)))
    _, h = call("GET", "/health", nil, token)
    assert.is_nil(h.lease)
    assert.equals(200, (call("POST", "/resume", "{}", token)))
  end)

  it("never lets an older pause's expiry resume a newer pause", function()
    assert.equals(200, (call("POST", "/pause", '{"timeout": 5, "expiry": 1}', token)))
    task.sleep(0.3)
    assert.equals(200, (call("POST", "/pause", '{"timeout": 5, "expiry": 30}', token)))
    task.sleep(1.5)
    assert.is_true(paused(), "the first pause's timer resumed the second pause")
    assert.equals(200, (call("POST", "/resume", "{}", token)))
    assert.is_false(paused())
  end)

  -- queue_behind_slow_health(requests [, hold=0.3]): with PgBouncer stopped a /health
  -- hangs holding the pauser's lock; each { delay, method, path, body } is sent
  -- `delay` s after the one before and queues behind it. `hold` s after the last,
  -- PgBouncer goes on, and every request must answer 200.
  local function queue_behind_slow_health(requests, hold)
    assert(bouncer:signal("STOP"))
    local ok, err = pcall(function()
      local hs = { task.spawn(call, "GET", "/health", nil, token) }
      for _, r in ipairs(requests) do
        task.sleep(r[1])
        hs[#hs + 1] = task.spawn(call, r[2], r[3], r[4], token)
      end
      task.sleep(hold or 0.3)
      assert(bouncer:signal("CONT"))
      for i, h in ipairs(hs) do
        local done, status = h:wait(10)
        assert.is_true(done, status)
        assert.equals(200, status, "request " .. i)
      end
    end)
    bouncer:signal("CONT")
    assert(ok, err)
  end

  -- The first pause's expiry comes due while a /health holds the pauser's lock and a
  -- newer /pause queues behind it, before the expiry or after: the newer pause must
  -- keep PgBouncer paused until its own expiry, whichever the lock serves first.
  it("never lets an expiry that waited behind a slow request resume a newer pause", function()
    for _, t in ipairs { { queued_after = 1.5, hold = 0.3 }, { queued_after = 0.3, hold = 1.5 } } do
      assert.equals(200, (call("POST", "/pause", '{"timeout": 5, "expiry": 1}', token)))
      queue_behind_slow_health({ { t.queued_after, "POST", "/pause", '{"timeout": 5, "expiry": 30}' } }, t.hold)
      task.sleep(1)
      assert.is_true(paused(), ("the first pause's expiry resumed the newer pause (queued after %gs)")
        :format(t.queued_after))
      assert.equals(200, (call("POST", "/resume", "{}", token)))
    end
    assert.is_false(paused())
  end)

  -- A client's /pause then /resume, queued behind a slow /health, must be served
  -- in that order: the other way round PgBouncer stays paused until the expiry.
  it("serves requests waiting for PgBouncer in the order they came", function()
    queue_behind_slow_health { { 0.3, "POST", "/pause", '{"timeout": 5, "expiry": 30}' }, { 0.3, "POST", "/resume", "{}" } }
    local still_paused = paused()
    if still_paused then assert(admin:resume()) end
    assert.is_false(still_paused, "the /resume ran before the /pause that came first")
  end)

  it("rejects bad requests", function()
    assert.equals(400, (call("POST", "/pause", "{not json", token)))
    assert.equals(400, (call("POST", "/pause", "1", token)))
    assert.equals(400, (call("POST", "/pause", "null", token)))
    assert.equals(400, (call("POST", "/pause", '{"timeout": -1, "expiry": 1}', token)))
    assert.equals(405, (call("GET", "/pause", nil, token)))
    assert.equals(404, (call("GET", "/nope", nil, token)))
    assert.is_false(paused())
  end)

  it("answers 504 and leaves PgBouncer resumed when a transaction blocks PAUSE", function()
    local client = assert(pg.connect(bouncer:conninfo("postgres")))
    assert(client:query("BEGIN"))
    assert(client:query("SELECT 1"))
    local status, body = call("POST", "/pause", '{"timeout": 1, "expiry": 30}', token)
    assert.equals(504, status)
    assert.matches("pause timeout", body.error)
    assert.is_false(paused())
    -- the client's transaction survived and can still roll back
    assert(client:query("ROLLBACK"))
    assert(client:query("SELECT 1"))
    client:close()
  end)

  -- TERM while a PAUSE waits on an open transaction: the handler is cancelled, but
  -- PgBouncer keeps the PAUSE and would pause once the transaction ends.
  it("leaves PgBouncer resumed when TERMed while a PAUSE is in flight", function()
    local client = assert(pg.connect(bouncer:conninfo("postgres")))
    assert(client:query("BEGIN"))
    assert(client:query("SELECT 1"))
    local pending = task.spawn(http.request, { method = "POST", url = url("/pause"), timeout = 10,
      headers = { Authorization = token }, body = '{"timeout": 10, "expiry": 30}' })
    task.sleep(1)
    assert.equals("waiting", pending:status(), "the PAUSE should still wait on the transaction")
    local code, _, _, logs = daemon:stop()
    assert.equals(0, code, logs)
    pending:wait(10)
    assert(client:query("ROLLBACK"))
    client:close()
    local still_paused = paused()
    if still_paused then assert(admin:resume()) end
    daemon = start_pauser()
    assert.is_false(still_paused, "the pauser stopped and left PgBouncer paused:\n" .. logs)
  end)

  -- Junk requests, unauthenticated ones included, must not add metric series or
  -- info log lines without bound: paths are labelled as known or "other".
  it("keeps its metrics and logs bounded whatever paths are requested", function()
    local function series()
      local res = assert(http.request { url = ("http://127.0.0.1:%d/metrics"):format(metrics_port), timeout = 5 })
      local n = 0
      for line in res.body:gmatch("[^\n]+") do
        if line:find("^stolon_pgbouncer_pauser_requests_total{") then n = n + 1 end
      end
      return n, #res.body
    end
    local before = series()
    for i = 1, 300 do
      local path = "/" .. string.char(97 + i % 26, 97 + (i // 26) % 26, 97 + i // 676)
      call("GET", path, nil, i % 3 == 0 and token or nil)
    end
    local after, size = series()
    assert.is_true(after - before <= 3, ("300 junk paths added %d series (%d bytes of /metrics)")
      :format(after - before, size))
    local logged = 0
    for line in daemon:logs():gmatch("[^\n]+") do
      if line:find("level=info", 1, true) and line:find("status=401", 1, true) then logged = logged + 1 end
    end
    assert.is_true(logged <= 5, ("200 unauthorized requests logged %d info lines"):format(logged))
    assert.matches("event=requests_rejected", daemon:logs())
  end)

  it("bounds every admin command by --pgbouncer-timeout (a frozen PgBouncer)", function()
    daemon:stop()
    daemon = start_pauser { args = { "--pgbouncer-timeout", "1s" } }
    assert(bouncer.proc:signal("STOP"))
    local t0 = task.now()
    local ok, status, body = pcall(call, "GET", "/health", nil, token)
    local took = task.now() - t0
    assert(bouncer.proc:signal("CONT"))
    assert(ok, status)
    assert.equals(503, status)
    assert.equals("unhealthy", body.status)
    -- the default command timeout is 10 s; 1 s + the reconnect's 1 s is what it may take
    assert(took < 6, ("/health took %.1f s with --pgbouncer-timeout 1s"):format(took))
    assert(D.eventually(10, healthy), "the pauser did not recover once PgBouncer ran again")
    daemon:stop()
    daemon = start_pauser()
  end)

  -- PgBouncer restarts and is paused again behind the pauser's back (standing for a
  -- PgBouncer that kept the pause) while the pauser cannot reach it: the RESUME at the
  -- expiry fails, and the pauser still owes it.
  it("retries a RESUME at expiry that failed until PgBouncer answers", function()
    assert.equals(200, (call("POST", "/pause", '{"timeout": 5, "expiry": 3}', token)))
    cut_off(true, function()
      assert(D.eventually(10, function() return daemon:logs():find("ok=false reason=expiry", 1, true) end),
        "the RESUME at expiry did not fail")
    end)
    assert.is_true(resumed_within(20), "the failed RESUME at expiry was never tried again")
  end)

  -- A /pause that fails must leave PgBouncer resumed, an earlier pause included, and
  -- must not cancel the RESUME the earlier pause is owed.
  it("still owes a RESUME after a /pause that failed", function()
    assert.equals(200, (call("POST", "/pause", '{"timeout": 5, "expiry": 60}', token)))
    cut_off(true, function()
      assert.equals(500, (call("POST", "/pause", '{"timeout": 1, "expiry": 60}', token)))
    end)
    assert.is_true(resumed_within(20), "after the failed /pause PgBouncer stayed paused")
  end)

  it("retries the start-up RESUME until PgBouncer answers", function()
    daemon:stop()
    cut_off(false, function() -- PgBouncer as a pauser that died mid-pause left it
      daemon = start_pauser { nowait = true }
      assert(D.eventually(10, function() return daemon:logs():find("startup_resume_failed", 1, true) end),
        "the start-up RESUME did not fail")
    end)
    -- the first /health that reaches PgBouncer settles the RESUME owed, and says so
    local status, body = call("GET", "/health", nil, token)
    assert.equals(200, status)
    assert.is_false(body.paused, "/health reported a pause nobody holds")
    assert.is_true(resumed_within(20), "the failed start-up RESUME was never tried again")
  end)

  it("resumes at start-up a PgBouncer left paused by a dead pauser", function()
    daemon:stop("KILL")
    assert(admin:pause())
    assert.is_true(paused())
    daemon = start_pauser()
    assert.is_false(paused())
  end)

  it("refuses a non-loopback address without a token", function()
    local code, _, err = D.run { "pauser", "--bind-address", "0.0.0.0:" .. P.free_port(), "--pgbouncer-host",
      "127.0.0.1", "--pgbouncer-port", tostring(bouncer.port), "--metrics-port", "0" }
    assert.equals(1, code)
    assert.matches("without a token", err)
  end)
end)
