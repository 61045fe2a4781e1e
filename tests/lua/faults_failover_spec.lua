-- Faults around a failover (issue 8), on real processes: a pauser restarted
-- mid-pause, `failover` interrupted with INT and killed with KILL after pausing, and a
-- pauser that never answers (SIGSTOP). One etcd member, one PostgreSQL and one
-- PgBouncer on 127.0.3.1, and a pauser per keeper address (127.0.3.1-3), all three
-- driving that PgBouncer. No sentinel runs, so a failover that pauses waits for a new
-- master that never comes: the faults arrive while it waits. docs/faults.md lists each
-- fault, what must hold and how this file checks it.
--
-- Addresses and ports: 127.0.3.x only; etcd 22682-22683; PostgreSQL 26302; PgBouncer
-- 26331; pausers 26341.
local P = require "support.pg"
local D = require "support.daemon"
local E = require "support.etcd"
local N = require "support.nosentinel"
local CD = require "playground.clusterdata"
local cjson = require "cjson.safe"
local etcd = require "etcd"
local http = require "http"
local pgbouncer = require "pgbouncer"
local stolon = require "stolon"
local task = require "task"

local HOSTS = { "127.0.3.1", "127.0.3.2", "127.0.3.3" }
local PG_PORT, BOUNCER_PORT, PAUSER_PORT = 26302, 26331, 26341
local CLUSTER = "faults-fo"
local TOKEN = "fo-" .. tostring(os.time()) .. "-token"

describe("failover and pauser faults", function()
  local srv, client, db, bouncer, dir, env
  local pausers = {}

  local function pauser_args(i)
    return { "pauser", "--bind-address", HOSTS[i] .. ":" .. PAUSER_PORT, "--pgbouncer-host", HOSTS[1],
      "--pgbouncer-port", tostring(BOUNCER_PORT), "--metrics-port", "0", "--token-file", dir .. "/token" }
  end

  local function health(i) return env:health(i) end

  local function start_pauser(i)
    pausers[i] = D.start(pauser_args(i))
    assert(D.eventually(10, function() return health(i) end), "pauser " .. i .. " did not come up")
  end

  -- Whether PgBouncer holds queries: support.pg's probe.
  local function paused() return bouncer:paused() end

  local function reset_clusterdata() env:reset() end
  local function doc() return env:doc() end
  local function lock_holders() return (env:count("/failover")) end

  -- A failover that pauses and then waits for a master change (no sentinel here).
  local function start_failover(extra)
    return D.start(env:failover_args(srv.endpoints[1], extra), { env = { STBOUNCER_FAILOVER_TOKEN = TOKEN } })
  end

  setup(function()
    srv = E.start { members = 1, hosts = { HOSTS[1] }, port = 22680 }
    client = assert(etcd.connect { endpoints = srv.endpoints, timeout = 5 })
    env = N.new { client = client, cluster = CLUSTER, hosts = HOSTS, pg_port = PG_PORT, pauser_port = PAUSER_PORT,
      token = TOKEN }
    db = P.start_postgres { host = HOSTS[1], port = PG_PORT }
    bouncer = P.start_pgbouncer { host = HOSTS[1], port = BOUNCER_PORT, target = db }
    dir = P.tmpdir("spgb-faults-fo")
    D.write_file(dir .. "/token", TOKEN .. "\n", "0600")
    for i = 1, 3 do start_pauser(i) end
    assert.is_false(paused())
  end)

  -- Each case starts from a healthy cluster: clusterdata reset, every pauser up and
  -- answering, PgBouncer resumed (whatever an earlier failing case left behind).
  before_each(function()
    reset_clusterdata()
    for i = 1, 3 do
      pausers[i]:signal("CONT")
      if not pausers[i]:running() then start_pauser(i) end
    end
    local admin = assert(pgbouncer.connect { host = HOSTS[1], port = BOUNCER_PORT, user = "pgbouncer", timeout = 5 })
    assert(admin:resume())
    admin:close()
  end)

  teardown(function()
    for _, p in pairs(pausers) do
      p:signal("CONT")
      p:stop()
    end
    if bouncer then bouncer:destroy() end
    if db then db:destroy() end
    if srv then srv:stop() end
    if dir then require("proc").run { "rm", "-rf", dir } end
  end)

  it("resumes PgBouncer when its pauser is stopped mid-pause (TERM), and a restarted pauser serves "
    .. "again; a pauser killed mid-pause resumes at its next start-up", function()
    local r = http.request { method = "POST", url = ("http://%s:%d/pause"):format(HOSTS[1], PAUSER_PORT),
      headers = { Authorization = TOKEN, ["Content-Type"] = "application/json" },
      body = '{"timeout": 5, "expiry": 60}', timeout = 10 }
    assert.equals(200, r.status)
    assert.is_true(paused())
    local code = pausers[1]:stop("TERM")
    assert.equals(0, code)
    assert.is_false(paused(), "a stopped pauser left PgBouncer paused with nobody to honour the expiry")
    start_pauser(1)
    assert.is_false(health(1).paused)

    r = http.request { method = "POST", url = ("http://%s:%d/pause"):format(HOSTS[1], PAUSER_PORT),
      headers = { Authorization = TOKEN, ["Content-Type"] = "application/json" },
      body = '{"timeout": 5, "expiry": 60}', timeout = 10 }
    assert.equals(200, r.status)
    pausers[1]:stop("KILL")
    assert.is_true(paused())
    start_pauser(1) -- start-up RESUME
    assert.is_false(paused())
  end)

  it("runs every defer when interrupted (INT) after pausing: resumed, sleepInterval restored, lock "
    .. "released; exits 1 saying interrupted", function()
    local f = start_failover { "--pause-expiry", "30s", "--lock-ttl", "30s" }
    assert(D.eventually(15, function() return health(1).paused and lock_holders() == 1 end),
      "failover did not pause\n" .. tostring(f:logs()))
    assert.is_true(paused())
    assert.equals("3s", doc().cluster.spec.sleepInterval)
    f:signal("INT") -- once: a second signal means "exit now"
    local code = f.p:wait(20)
    local _, err = f.p:output()
    assert.equals(1, code)
    assert.matches("interrupted", err)
    assert.is_false(paused())
    for i = 1, 3 do assert.is_false(health(i).paused) end
    assert.equals("2s", doc().cluster.spec.sleepInterval)
    assert.equals(0, lock_holders())
  end)

  it("cleans up after a failover killed (KILL) after pausing: the pause expires and the lock's lease "
    .. "ends (the acceptance suite covers this on the whole playground)", function()
    local f = start_failover { "--pause-expiry", "3s", "--lock-ttl", "2s" }
    assert(D.eventually(15, function() return health(1).paused and lock_holders() == 1 end),
      "failover did not pause\n" .. tostring(f:logs()))
    f:stop("KILL")
    local t0 = task.now()
    assert(D.eventually(10, function() return not paused() end), "the pause did not expire")
    assert(D.eventually(10, function() return lock_holders() == 0 end), "the lock outlived its lease")
    print(("\n  [faults] resumed and unlocked %.1f s after the kill"):format(task.now() - t0))
    for i = 1, 3 do assert.is_false(health(i).paused) end
  end)

  it("fails the health check within its timeout when a pauser never answers (SIGSTOP), pausing "
    .. "nothing and taking no lock", function()
    pausers[2]:signal("STOP")
    local ok, err = pcall(function()
      local t0 = task.now()
      local code, _, stderr = D.run({ "failover", "--cluster-name", CLUSTER, "--store-endpoints", srv.endpoints[1],
        "--pauser-port", tostring(PAUSER_PORT), "--metrics-port", "0", "--health-check-timeout", "1s" },
        { env = { STBOUNCER_FAILOVER_TOKEN = TOKEN }, timeout = 30 })
      local took = task.now() - t0
      assert.equals(1, code)
      assert.is_true(took < 10, ("took %.1f s"):format(took))
      assert.matches("keeper1", stderr)
      assert.is_false(paused())
      assert.equals(0, lock_holders())
      local d = doc()
      assert.equals("2s", d.cluster.spec.sleepInterval)
      assert.is_nil(d.keepers.keeper0.status.forceFail)
    end)
    pausers[2]:signal("CONT")
    assert(ok, err)
    assert(D.eventually(5, function() return health(2) end))
  end)
end)

-- Clean-up under signals (issue 12, items 2, 3 and 8), against fake pausers: HTTP
-- servers in this spec that answer /health and /pause at once and hold /resume for
-- as long as a case asks, which no real PgBouncer does on demand. Three keepers on
-- 127.0.7.1-3 and one extra (proxy) pauser on 127.0.7.10; no sentinel, so a failover
-- waits for a recovery that never comes.
--
-- Addresses and ports: 127.0.7.x only; etcd 22792-22793; fake pausers 26351-26352.
describe("failover clean-up against slow fake pausers", function()
  local FHOSTS = { "127.0.7.1", "127.0.7.2", "127.0.7.3" }
  local EXTRA, FPORT, EXTRA_PORT = "127.0.7.10", 26351, 26352
  local FCLUSTER = "fake-fo"
  local FKEY = "stolon/cluster/" .. FCLUSTER .. "/clusterdata"
  local failover = require "failover"
  local flags = require "flags"
  local srv, client
  local servers = {}
  -- per fake, by name ("keeper0".."keeper2", "extra"): the requests it saw, and how
  -- long it holds a /resume
  local seen, hold = {}, {}

  local function fake(name, host, port)
    seen[name] = {}
    servers[#servers + 1] = assert(http.serve { address = host, port = port, handler = function(req)
      local r = { path = req.path, at = task.now() }
      seen[name][#seen[name] + 1] = r
      if req.path == "/health" then return 200, { config = { pool_mode = "transaction" } } end
      if req.path == "/resume" and (hold[name] or 0) > 0 then task.sleep(hold[name]) end
      r.done = task.now()
      return 200, {}
    end })
  end

  -- The first request to path that fake name saw, or nil.
  local function request(name, path)
    for _, r in ipairs(seen[name]) do
      if r.path == path then return r end
    end
  end

  local function fdoc()
    local r = assert(client:get(FKEY))
    return assert(cjson.decode(r.kvs[1].value))
  end

  local function holders(name)
    local r = assert(client:get(name or (FKEY .. "/failover"), { prefix = true }))
    return #r.kvs
  end

  local function start(extra)
    local args = { "failover", "--cluster-name", FCLUSTER, "--store-endpoints", srv.endpoints[1],
      "--pauser-port", tostring(FPORT), "--extra-pauser", EXTRA .. ":" .. EXTRA_PORT, "--metrics-port", "0",
      "--failover-sleep-interval", "1s", "--health-check-timeout", "1s" }
    for _, a in ipairs(extra) do args[#args + 1] = a end
    return D.start(args, { env = { STBOUNCER_FAILOVER_TOKEN = "fake" } })
  end

  setup(function()
    srv = E.start { members = 1, hosts = { FHOSTS[1] }, port = 22790 }
    client = assert(etcd.connect { endpoints = srv.endpoints, timeout = 5 })
    for i, h in ipairs(FHOSTS) do fake("keeper" .. (i - 1), h, FPORT) end
    fake("extra", EXTRA, EXTRA_PORT)
  end)

  before_each(function()
    local keepers = {}
    for k, h in ipairs(FHOSTS) do keepers[k] = { uid = "keeper" .. (k - 1), host = h, port = 5432 } end
    assert(client:put(FKEY, CD.encode(CD.new { keepers = keepers, master = "keeper0", sync = { "keeper1" },
      sleep_interval = "2s" })))
    for name in pairs(seen) do
      seen[name] = {}
      hold[name] = 0
    end
  end)

  teardown(function()
    for _, s in ipairs(servers) do s:close() end
    if srv then srv:stop() end
  end)

  -- Every pauser got a RESUME that it answered, the extra one after every keeper's,
  -- and the failover logged each as answered.
  local function assert_all_resumed(logs)
    local last_keeper = 0
    for i = 1, 3 do
      local r = request("keeper" .. (i - 1), "/resume")
      assert(r and r.done, "keeper" .. (i - 1) .. " got no RESUME\n" .. logs)
      last_keeper = math.max(last_keeper, r.done)
      local line = logs:match("[^\n]*event=pgbouncer_resume [^\n]*endpoint=keeper" .. (i - 1) .. "[^\n]*")
      assert(line and not line:find("error=", 1, true), "keeper" .. (i - 1) .. "'s RESUME was abandoned\n" .. logs)
    end
    local x = request("extra", "/resume")
    assert(x and x.done, "the extra pauser got no RESUME\n" .. logs)
    assert.is_true(x.at >= last_keeper)
    assert.is_nil(logs:find("event=defer_failed", 1, true), logs)
  end

  it("a signal while resume waits on a slow pauser, and a second one, skip no RESUME (item 2)", function()
    for i = 1, 3 do hold["keeper" .. (i - 1)] = 3 end
    -- wait_for_recovery gives up by itself (pause expiry), then resume is slow
    local f = start { "--pause-expiry", "3s", "--cleanup-timeout", "10s" }
    assert(D.eventually(20, function() return request("keeper0", "/resume") end),
      "resume did not start\n" .. tostring(f:logs()))
    f:signal("INT")
    task.sleep(0.5)
    f:signal("INT")
    local code = f.p:wait(30)
    local _, logs = f.p:output()
    assert.equals(1, code, logs)
    assert_all_resumed(logs)
    assert.equals("2s", fdoc().cluster.spec.sleepInterval)
    assert.equals(0, holders())
  end)

  it("keeps the lock through a clean-up longer than --lock-ttl after a signal (item 3)", function()
    for i = 1, 3 do hold["keeper" .. (i - 1)] = 5 end
    local f = start { "--pause-expiry", "30s", "--lock-ttl", "2s", "--resume-timeout", "8s",
      "--cleanup-timeout", "15s" }
    assert(D.eventually(20, function() return request("extra", "/pause") and request("keeper2", "/pause") end),
      "failover did not pause\n" .. tostring(f:logs()))
    f:signal("INT")
    assert(D.eventually(10, function() return request("keeper0", "/resume") end),
      "resume did not start\n" .. tostring(f:logs()))
    task.sleep(3.5) -- > --lock-ttl after the signal, and the RESUMEs are still held
    assert.is_nil(request("keeper0", "/resume").done)
    local during = holders()
    local code = f.p:wait(30)
    local _, logs = f.p:output()
    assert.equals(1, code, logs)
    assert.equals(1, during, "the lock expired while its holder was still cleaning up\n" .. logs)
    assert_all_resumed(logs)
    assert.equals("2s", fdoc().cluster.spec.sleepInterval)
    assert.equals(0, holders())
  end)

  it("keeps a lease alive after the task that took the lock is cancelled, until unlock (item 3)", function()
    local name = FKEY .. "/keepalive"
    local h
    local t = task.spawn(function()
      h = assert(client:lock(name, { ttl = 2 }))
      task.sleep(30)
    end)
    assert(D.eventually(5, function() return h end))
    t:cancel()
    task.sleep(4)
    local during = holders(name)
    assert.is_true(h:unlock())
    assert.equals(1, during, "the lock's lease ended with the task that took it")
    assert.equals(0, holders(name))
  end)

  it("a cancelled lock acquisition deletes its key at once (item 3)", function()
    local name = FKEY .. "/queue"
    local held = assert(client:lock(name, { ttl = 30 }))
    local waiter = task.spawn(function() return client:lock(name, { timeout = 20, ttl = 30 }) end)
    assert(D.eventually(5, function() return holders(name) == 2 end), "the second lock did not queue")
    waiter:cancel()
    local gone = D.eventually(3, function() return holders(name) == 1 end)
    assert.is_true(held:unlock())
    assert(gone, "the cancelled acquisition left its key until the lease's TTL")
    assert.equals(0, holders(name))
  end)

  it("sends the extra pauser its RESUME even when a keeper's holds longer than the cleanup timeout", function()
    hold.keeper0 = 8
    local f = start { "--pause-expiry", "3s", "--resume-timeout", "12s", "--cleanup-timeout", "4s" }
    local code = f.p:wait(40)
    local _, logs = f.p:output()
    assert.equals(1, code, logs)
    local x = request("extra", "/resume")
    assert(x and x.done, "the extra pauser got no RESUME\n" .. logs)
    assert(request("keeper1", "/resume").done and request("keeper2", "/resume").done, logs)
    assert.equals("2s", fdoc().cluster.spec.sleepInterval)
    assert.equals(0, holders())
  end)

  -- A failover object (in this process) whose store client applies every txn and
  -- then loses the answer: a timeout, after sleeping `stall` seconds when given
  -- (a cancel cuts that off). f.real is the true client.
  local function lossy_failover(stall)
    local opts = assert(flags.parse(failover.flags, { "--cluster-name", FCLUSTER, "--store-endpoints",
      srv.endpoints[1], "--metrics-port", "0", "--failover-sleep-interval", "1s" }))
    local f = failover.setup(opts)
    local real = f.client
    f.real = real
    f.client = {
      get = function(_, ...) return real:get(...) end,
      watch = function(_, ...) return real:watch(...) end, -- the wait before PAUSE watches (alignment)
      txn = function(_, req)
        assert(real:txn(req))
        if stall then task.sleep(stall) end
        return nil, "etcd.txn: timeout", "timeout"
      end,
    }
    return f
  end

  it("takes a forceFail whose txn applied but timed out for done, not for a failure to undo", function()
    local f = lossy_failover()
    local ok, err = f:failkeeper()
    assert.is_true(fdoc().keepers.keeper0.status.forceFail)
    assert.is_true(ok, err)
  end)

  -- A txn etcd applied but whose answer was lost (timeout), or that a cancel cut off:
  -- restore must still put the original sleepInterval back.
  it("restores sleepInterval after a compare-and-swap that applied but timed out or was cancelled (item 8)",
    function()
      for _, how in ipairs { "timeout", "cancel" } do
        assert(client:put(FKEY, assert(stolon.with_sleep_interval(client:get(FKEY).kvs[1].value, "2s"))))
        local f = lossy_failover(how == "cancel" and 30 or nil)
        local h = task.spawn(function() return f:shorten_sleep_interval() end)
        if how == "cancel" then
          assert(D.eventually(5, function() return fdoc().cluster.spec.sleepInterval == "1s" end))
          h:cancel()
        end
        local ok = h:wait(10)
        assert.equals("1s", fdoc().cluster.spec.sleepInterval, how)
        assert.equals(how == "timeout", ok, how)
        f.client = f.real
        assert.is_true(f:restore_sleep_interval())
        assert.equals("2s", fdoc().cluster.spec.sleepInterval, how .. ": restore skipped, stolon kept 1s")
      end
    end)
end)
