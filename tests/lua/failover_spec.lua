-- The failover command on one playground (real etcd, 3 PostgreSQL nodes, a PgBouncer
-- and a pauser per node, a proxy PgBouncer, the stand-in sentinel) on 127.0.4.x:
-- --dry-run and --health-check-only change nothing; a failover succeeds with its
-- steps in the original's order and every PgBouncer then reaches the new primary;
-- then each step is made to fail in turn and the clean-up is checked (PgBouncers
-- resumed, sleepInterval restored, lock released, exit 1 naming the step).
local D = require "support.daemon"
local P = require "support.pg"
local cjson = require "cjson"
local cluster = require "playground.cluster"
local fs = require "fs"
local jsonedit = require "jsonedit"
local pg = require "pg"
local proc = require "proc"
local stolon = require "stolon"

local HOSTS = { "127.0.4.11", "127.0.4.12", "127.0.4.13" }
local PROXY = "127.0.4.20"
local ETCD_PORT = 22770
local SLEEP_INTERVAL = "1s"

describe("failover", function()
  local c, key

  local function failover(extra, o)
    o = o or {}
    return D.run(c:failover_args(extra), {
      timeout = o.timeout or 90,
      env = { STBOUNCER_FAILOVER_TOKEN_FILE = c.base .. "/token" },
    })
  end

  local function clusterdata()
    local res = assert(c.etcd:get(key))
    local kv = assert(res.kvs and res.kvs[1], "no clusterdata")
    return assert(stolon.decode(kv.value, key)), kv, res
  end

  -- Which server a query through host:port lands on (nil, err when it hangs: paused).
  local function server_addr(host, port)
    local conn, err = pg.connect(("host=%s port=%d dbname=app user=app connect_timeout=3"):format(host, port),
      { timeout = 3 })
    if not conn then return nil, err end
    local rows, qerr = conn:query_opts { sql = "SELECT host(inet_server_addr()) AS addr", timeout = 3 }
    conn:close()
    if not rows then return nil, qerr end
    return rows[1].addr
  end

  local function wait_healthy()
    local ok, why = D.eventually(40, function()
      local cd = clusterdata()
      local healthy, reason = cd:check_healthy(1)
      return healthy, reason
    end)
    assert(ok, "cluster not healthy: " .. tostring(why))
  end

  -- The lock is free: no holder or waiter key under it, and etcd's own mutex
  -- (etcdctl lock) gets it at once.
  local function lock_free()
    local res = assert(c.etcd:get(key .. "/failover/", { prefix = true }))
    if res.kvs and #res.kvs > 0 then return false, "lock keys present: " .. res.kvs[1].key end
    local code, _, err = proc.run { "etcdctl", "--endpoints=" .. c.etcd_endpoint, "lock", key .. "/failover", "true",
      timeout = 5 }
    return code == 0, err
  end

  -- Every PgBouncer (the node ones and the proxy) answers queries: nothing is paused.
  local function all_serving()
    local all = { c.proxy }
    for _, b in ipairs(c.bouncers) do all[#all + 1] = b end
    for _, b in ipairs(all) do
      local addr, err = server_addr(b.host, b.port)
      assert(addr, ("PgBouncer %s:%d does not serve: %s"):format(b.host, b.port, tostring(err)))
    end
  end

  -- Whether one log line holds every given piece (logfmt field order is the logger's).
  local function logged(text, ...)
    local pieces = { ... }
    for line in text:gmatch("[^\n]+") do
      local all = true
      for _, piece in ipairs(pieces) do
        if not line:find(piece, 1, true) then all = false break end
      end
      if all then return true end
    end
    return false
  end

  local function stop_sentinel()
    c.sentinel:cancel()
    c.sentinel:wait(10)
  end

  local function start_sentinel()
    assert(c:start_sentinel())
  end

  -- The common clean-up checks after a failed failover.
  local function assert_failed_cleanly(step, code, out, err, interval)
    assert.equals(1, code, err)
    assert(logged(err, "event=step_failed", "step=" .. step), "no step_failed for " .. step .. " in:\n" .. err)
    assert.matches("failover FAILED: " .. step, out, 1, true)
    all_serving()
    assert.equals(interval or SLEEP_INTERVAL, clusterdata():sleep_interval())
    assert.is_true((lock_free()))
    assert.is_nil(err:find("event=defer_failed", 1, true), err)
  end

  setup(function()
    local err
    c, err = cluster.boot {
      hosts = HOSTS, proxy_host = PROXY, etcd_port = ETCD_PORT, pg_port = P.free_port(HOSTS[1]),
      bouncer_port = P.free_port(HOSTS[1]), pauser_port = P.free_port(HOSTS[1]), sleep_interval = SLEEP_INTERVAL,
    }
    assert(c, err)
    key = stolon.key("stolon/cluster", c.o.cluster_name)
  end)

  teardown(function()
    if c then c:stop() end
  end)

  it("--dry-run prints the plan and writes nothing to the store", function()
    wait_healthy()
    stop_sentinel() -- the sentinel writes every tick: quiet the store while we look
    local _, kv, before = clusterdata()
    local code, out, err = failover { "--dry-run" }
    local _, kv2, after = clusterdata()
    start_sentinel()
    assert.equals(0, code, err)
    assert.matches("failover plan for " .. key, out, 1, true)
    assert.matches("pause  (undo: resume)", out, 1, true)
    assert.matches("event=checks_passed", err, 1, true)
    assert.equals(kv.mod_revision, kv2.mod_revision)
    assert.equals(before.revision, after.revision) -- no lock, no edit, nothing at all
    all_serving()
  end)

  it("--health-check-only checks the cluster and every pauser", function()
    local code, _, err = failover { "--health-check-only" }
    assert.equals(0, code, err)
    assert.matches("event=clients_health_check", err, 1, true)
    assert.matches("msg=\"all clients healthy\"", err, 1, true)
    assert.is_nil(err:find("pgbouncer_pause", 1, true))
  end)

  it("fails over, logs the steps in order, and every PgBouncer reaches the new primary", function()
    wait_healthy()
    local old = c:primary()
    local report = c.base .. "/report.json"
    local code, out, err = failover { "--report-file", report }
    assert.equals(0, code, err)
    io.stderr:write("\n---- failover log (spec run) ----\n", err, "---- end ----\n")
    assert.matches("failover succeeded", out, 1, true)
    assert.matches("pause window", out, 1, true)
    -- the original's order of events
    local events = {}
    for ev in err:gmatch("event=([%w_%.]+)") do events[#events + 1] = ev end
    local want = { "check_cluster_healthy", "clients_health_check", "etcd_lock_acquire", "apply_short_sleep_interval",
      "pgbouncer_pause", "failkeeper", "write_probe", "routed", "pgbouncer_resume", "restore_sleep_interval",
      "etcd_lock_release", "failover_summary" }
    local pos = 0
    for _, w in ipairs(want) do
      local found
      for i = pos + 1, #events do
        if events[i] == w then found = i break end
      end
      assert(found, ("event %s missing or out of order in: %s"):format(w, table.concat(events, " ")))
      pos = found
    end
    -- the master's only sync standby is the new master: its probe connection was
    -- opened while the sentinel switched
    assert.matches("event=write_probe[^\n]*connection=preconnected", err)
    -- the report file
    local r = cjson.decode((assert(fs.read(report))))
    assert.is_true(r.ok)
    assert.is_true(r.pause_window_seconds > 0)
    assert.is_true(r.paused_at <= r.resumed_at)
    for _, st in ipairs(r.steps) do
      assert.equals("ok", st.status)
      assert.is_nil(st.error, st.name) -- a successful step carries no error (was "true")
    end
    assert.matches(old.host, r.old_master, 1, true)
    assert.is_string(r.new_master_host)
    assert.are_not.equals(old.host, r.new_master_host)
    local new = c:primary()
    assert.equals(r.new_master_host, new.host)
    -- every PgBouncer now routes to the new primary
    local all = { c.proxy }
    for _, b in ipairs(c.bouncers) do all[#all + 1] = b end
    for _, b in ipairs(all) do
      assert(D.eventually(15, function() return server_addr(b.host, b.port) == new.host end),
        ("PgBouncer %s:%d does not reach the new primary %s"):format(b.host, b.port, new.host))
    end
    assert.equals(SLEEP_INTERVAL, clusterdata():sleep_interval())
    assert.is_true((lock_free()))
  end)

  it("wait_for_routing: a PgBouncer nobody re-points delays RESUME by --routing-timeout only", function()
    wait_healthy()
    local old = c:primary()
    -- a node PgBouncer whose supervise is frozen keeps sending clients to the old
    -- primary: the failover waits for it, gives up after the timeout, resumes
    local b = c.bouncers[1]
    assert.equals(old.host, server_addr(b.host, b.port))
    b.supervise:signal("STOP")
    local ok, code, out, err = pcall(failover, { "--routing-timeout", "1s" })
    b.supervise:signal("CONT")
    assert(ok, code)
    assert.equals(0, code, err)
    assert.matches("failover succeeded", out, 1, true)
    local line = err:match("[^\n]*event=routing_timeout[^\n]*")
    assert(line, "no routing_timeout event in: " .. err)
    assert.matches("databases=app", line, 1, true)
    assert.matches(old.host, line, 1, true)
    -- the other PgBouncers were re-pointed and waited for
    assert.matches("event=routed", err, 1, true)
    -- the step waited the whole timeout (a lower bound only: the machine is shared)
    local ms = tonumber(out:match("step%s+wait_for_routing%s+([%d%.]+) ms%s+ok"))
    assert(ms and ms >= 900, "wait_for_routing did not wait for the timeout: " .. out)
    -- thawed, its supervise re-points it
    local new = c:primary()
    assert(D.eventually(15, function() return server_addr(b.host, b.port) == new.host end),
      "the thawed supervise did not re-point its PgBouncer")
  end)

  it("check_cluster_healthy: refuses an unhealthy cluster and changes nothing", function()
    -- unhealthy-async.json under another cluster name in the same etcd: no pausers
    local text = assert(fs.read("tests/fixtures/stolon/unhealthy-async.json"))
    for i, h in ipairs(HOSTS) do text = text:gsub("127%.0%.0%.1" .. i, h) end
    local other = stolon.key("stolon/cluster", "unhealthy")
    assert(c.etcd:put(other, text))
    local code, out, err = failover { "--cluster-name", "unhealthy" }
    assert.equals(1, code, err)
    assert.is_true(logged(err, "event=step_failed", "step=check_cluster_healthy"))
    assert.matches("insufficient standbys for failure", out, 1, true)
    assert.is_nil(err:find("etcd_lock_acquire", 1, true))
    assert.is_nil(err:find("pgbouncer_pause", 1, true))
    local res = assert(c.etcd:get(other))
    assert.equals(text, res.kvs[1].value)
    all_serving()
  end)

  it("health_check_clients: a wrong token fails before the lock", function()
    wait_healthy()
    local bad = c.base .. "/wrong-token"
    assert(fs.write_atomic(bad, "not-the-token\n", "0600"))
    local code, out, err = failover { "--token-file", bad }
    assert_failed_cleanly("health_check_clients", code, out, err)
    assert.matches("401", err, 1, true)
    assert.is_nil(err:find("etcd_lock_acquire", 1, true))
  end)

  it("acquire_lock: gives up after --lock-timeout while etcdctl holds the lock", function()
    wait_healthy()
    local holder = assert(proc.spawn { "etcdctl", "--endpoints=" .. c.etcd_endpoint, "lock", key .. "/failover",
      "sleep", "4", stdin = "null", stdout = "capture", stderr = "capture" })
    assert(D.eventually(10, function()
      local res = c.etcd:get(key .. "/failover", { prefix = true })
      return res and res.kvs and #res.kvs > 0
    end), "etcdctl did not take the lock")
    local code, out, err = failover { "--lock-timeout", "1s" }
    assert.equals(0, holder:wait(15)) -- etcdctl unlocks when its command is done
    assert.equals(1, code, err)
    assert.is_true(logged(err, "event=step_failed", "step=acquire_lock"))
    assert.matches("failover FAILED: acquire_lock", out, 1, true)
    assert.is_nil(err:find("apply_short_sleep_interval", 1, true))
    assert.is_nil(err:find("pgbouncer_pause", 1, true))
    all_serving()
    assert.is_true((lock_free()))
  end)

  it("shorten_sleep_interval: an invalid sleepInterval fails it; the lock is released", function()
    -- Nothing short of a broken document makes the compare-and-swap fail: write
    -- one (sentinel stopped, it reads the interval too), then put it back.
    wait_healthy()
    stop_sentinel()
    local _, kv = clusterdata()
    local bad = assert(stolon.with_sleep_interval(kv.value, "soon"))
    assert(c.etcd:put(key, bad))
    local code, out, err = failover {}
    local _, kv2 = clusterdata()
    assert(c.etcd:put(key, assert(stolon.with_sleep_interval(kv2.value, SLEEP_INTERVAL))))
    start_sentinel()
    assert.equals(1, code, err)
    assert.is_true(logged(err, "event=step_failed", "step=shorten_sleep_interval"))
    assert.matches("invalid sleepInterval", out, 1, true)
    assert.equals("soon", stolon.decode(kv2.value):sleep_interval())
    assert.is_nil(err:find("event=pgbouncer_pause", 1, true))
    assert.matches("event=etcd_lock_release", err, 1, true)
    assert.is_true((lock_free()))
    all_serving()
  end)

  it("pause: a transaction open through the proxy times PAUSE out; all resumed, the client survives", function()
    wait_healthy()
    local primary = c:primary()
    local client = assert(pg.connect(c.app_conninfo, { timeout = 5 }))
    assert(client:query("BEGIN"))
    assert(client:query("SELECT txid_current()"))
    local code, out, err = failover { "--pause-timeout", "1s", "--failover-sleep-interval", "500ms" }
    assert_failed_cleanly("pause", code, out, err)
    assert.matches("event=pgbouncer_resume", err, 1, true)
    assert.is_nil(err:find("event=failkeeper", 1, true))
    -- the client's transaction is still there and can roll back
    assert(client:query("ROLLBACK"))
    local rows = assert(client:query("SELECT host(inet_server_addr()) AS addr"))
    assert.equals(primary.host, rows[1].addr)
    client:close()
    assert.equals(primary.host, c:primary().host)
  end)

  it("failkeeper: a failing --stolonctl leaves the master in place, everything undone", function()
    wait_healthy()
    local primary = c:primary()
    local code, out, err = failover { "--stolonctl", "/bin/false", "--failover-sleep-interval", "500ms" }
    assert_failed_cleanly("failkeeper", code, out, err)
    assert.matches("failed to run stolonctl failkeeper", out, 1, true)
    assert.is_true(logged(err, "event=restore_sleep_interval", "interval=1s"))
    assert.equals(primary.host, c:primary().host)
  end)

  it("wait_for_recovery: no recovery before the pause expiry fails it; everything undone", function()
    wait_healthy()
    local primary = c:primary()
    stop_sentinel() -- nobody acts on the failkeeper mark
    local code, out, err = failover { "--pause-expiry", "3s", "--failover-sleep-interval", "500ms" }
    -- take the mark back before the sentinel returns, so later specs find the cluster as it was
    local _, kv = clusterdata()
    local master = clusterdata():master()
    assert(c.etcd:put(key, assert(jsonedit.set(kv.value, { "keepers", master.keeper, "status", "forceFail" },
      "false"))))
    start_sentinel()
    assert_failed_cleanly("wait_for_recovery", code, out, err)
    assert.matches("timed out waiting for successful recovery", out, 1, true)
    assert.matches("event=failkeeper", err, 1, true)
    assert.equals(primary.host, c:primary().host)
    assert.is_true(stolon.decode(kv.value):master().keeper == master.keeper)
    wait_healthy()
  end)

  it("is interrupted by TERM mid-failover and still cleans up", function()
    wait_healthy()
    stop_sentinel()
    local d = D.start(c:failover_args { "--pause-expiry", "20s" },
      { env = { STBOUNCER_FAILOVER_TOKEN_FILE = c.base .. "/token" } })
    assert(D.eventually(15, function() return d:logs():find("event=failkeeper", 1, true) end),
      "failover did not reach failkeeper")
    d:signal("TERM")
    local code = d.p:wait(20)
    local out, err = d.p:output()
    local _, kv = clusterdata()
    local master = clusterdata():master()
    assert(c.etcd:put(key, assert(jsonedit.set(kv.value, { "keepers", master.keeper, "status", "forceFail" },
      "false"))))
    start_sentinel()
    assert.matches("event=interrupted", err, 1, true)
    assert_failed_cleanly("wait_for_recovery", code, out, err)
    wait_healthy()
  end)
end)
