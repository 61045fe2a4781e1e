-- A pause that dies with its failover, on real processes (docs/faults.md, "A pause
-- tied to the failover's lease"). The failover ties every PAUSE to an etcd lease of
-- its own (`--pause-lease-ttl`); pausers with store access watch its key and RESUME
-- as soon as it is gone, the expiry staying the upper bound.
--
-- First part: one etcd member, one PostgreSQL on 127.0.8.1, a PgBouncer and a pauser
-- (with store access) on each of 127.0.8.1-3, clusterdata with three keepers. No
-- sentinel: a failover that pauses waits for a master change that never comes, so the
-- faults (a SIGKILL, a lease revoked under it, etcd stopped) arrive while it waits.
-- Second part: the playground (lua/playground/) on 127.0.8.11-13 and .20 with the
-- stand-in sentinel's promotion delayed past several TTLs: a healthy slow failover.
--
-- Addresses and ports: 127.0.8.x only; etcd 22882-22883 and 22890-22891; PostgreSQL
-- 26802 and 26902; PgBouncer 26831 and 26931; pausers 26841 and 26941.
local P = require "support.pg"
local D = require "support.daemon"
local E = require "support.etcd"
local N = require "support.nosentinel"
local cjson = require "cjson.safe"
local etcd = require "etcd"
local http = require "http"
local pgbouncer = require "pgbouncer"
local task = require "task"

local HOSTS = { "127.0.8.1", "127.0.8.2", "127.0.8.3" }
local PG_PORT, BOUNCER_PORT, PAUSER_PORT = 26802, 26831, 26841
local CLUSTER = "lease-fo"
local KEY = "stolon/cluster/" .. CLUSTER .. "/clusterdata"
local TOKEN = "lease-" .. tostring(os.time()) .. "-token"
local TTL = 3

-- Whether the pauser's log holds a line with every given "k=v".
local function logged(text, ...)
  for line in (text or ""):gmatch("[^\n]+") do
    local all = true
    for _, kv in ipairs { ... } do
      if not line:find(kv, 1, true) then all = false end
    end
    if all then return true end
  end
  return false
end

describe("a pause tied to the failover's lease", function()
  local srv, client, db, dir, env
  local bouncers, pausers = {}, {}

  local function pauser_args(i)
    return { "pauser", "--bind-address", HOSTS[i] .. ":" .. PAUSER_PORT, "--pgbouncer-host", HOSTS[i],
      "--pgbouncer-port", tostring(BOUNCER_PORT), "--metrics-port", "0", "--token-file", dir .. "/token",
      "--cluster-name", CLUSTER, "--store-endpoints", srv.endpoints[1] }
  end

  local function health(i) return env:health(i) end

  local function post(i, path, body)
    local r = assert(http.request { method = "POST", url = ("http://%s:%d%s"):format(HOSTS[i], PAUSER_PORT, path),
      headers = { Authorization = TOKEN, ["Content-Type"] = "application/json" }, body = cjson.encode(body),
      timeout = 10 })
    return r.status, cjson.decode(r.body) or {}
  end

  local function start_pauser(i)
    pausers[i] = D.start(pauser_args(i))
    assert(D.eventually(10, function() return health(i) end), "pauser " .. i .. " did not come up")
  end

  -- watching(i): pauser i holds a pause whose lease it watches.
  local function watching(i)
    local h = health(i)
    return h and h.paused and h.lease and h.lease.state == "watching"
  end

  local function count(suffix) return env:count(suffix) end

  local function start_failover(extra)
    return D.start(env:failover_args(srv.endpoints[1], extra), { env = { STBOUNCER_FAILOVER_TOKEN = TOKEN } })
  end

  -- resumed_after(t0, limit) -> {seconds per pauser}: when each pauser stopped
  -- reporting a pause (polled every 0.1 s, all at once), nil for one that did not
  -- within limit seconds of t0.
  local function resumed_after(t0, limit)
    local fns = {}
    for i = 1, 3 do
      fns[i] = function()
        while task.now() - t0 < limit do
          local h = health(i)
          if h and not h.paused then return task.now() - t0 end
          task.sleep(0.1)
        end
      end
    end
    local res = task.all(fns)
    local out = {}
    for i = 1, 3 do out[i] = res[i][1] end
    return out
  end

  setup(function()
    srv = E.start { members = 1, hosts = { HOSTS[1] }, port = 22880 }
    client = assert(etcd.connect { endpoints = srv.endpoints, timeout = 5 })
    env = N.new { client = client, cluster = CLUSTER, hosts = HOSTS, pg_port = PG_PORT, pauser_port = PAUSER_PORT,
      token = TOKEN }
    db = P.start_postgres { host = HOSTS[1], port = PG_PORT }
    for i = 1, 3 do bouncers[i] = P.start_pgbouncer { host = HOSTS[i], port = BOUNCER_PORT, target = db } end
    dir = P.tmpdir("spgb-pause-lease")
    D.write_file(dir .. "/token", TOKEN .. "\n", "0600")
    for i = 1, 3 do start_pauser(i) end
  end)

  -- Each case starts from a healthy cluster: etcd up, clusterdata reset, no lock and
  -- no pause key left, every pauser up, every PgBouncer resumed.
  before_each(function()
    assert(srv:start_member(1))
    env:reset()
    assert(D.eventually(20, function() return count("/failover") == 0 end), "a lock was left")
    client:delete(KEY .. "/pause/", { prefix = true })
    for i = 1, 3 do
      if not pausers[i]:running() then start_pauser(i) end
      post(i, "/resume", {})
      local admin = assert(pgbouncer.connect { host = HOSTS[i], port = BOUNCER_PORT, user = "pgbouncer", timeout = 5 })
      assert(admin:resume())
      admin:close()
    end
  end)

  teardown(function()
    for _, p in pairs(pausers) do p:stop() end
    for _, b in pairs(bouncers) do b:destroy() end
    if db then db:destroy() end
    if srv then srv:stop() end
    if dir then require("proc").run { "rm", "-rf", dir } end
  end)

  it("resumes every PgBouncer within the lease TTL + 1 s of a SIGKILL of the failover, not at the "
    .. "expiry", function()
    local f = start_failover { "--pause-expiry", "25s", "--pause-lease-ttl", TTL .. "s", "--lock-ttl", "2s" }
    finally(function() f:stop("KILL") end)
    assert(D.eventually(20, function() return watching(1) and watching(2) and watching(3) end),
      "the pausers did not hold a lease-tied pause\n" .. tostring(f:logs()))
    for i = 1, 3 do assert.is_true(bouncers[i]:paused()) end
    assert.equals(1, count("/pause/"))
    f:stop("KILL")
    local t0 = task.now()
    local took = resumed_after(t0, 30)
    print(("\n  [pause-lease] SIGKILL: pausers resumed %.2f / %.2f / %.2f s after the kill (TTL %d s, expiry 25 s)")
      :format(took[1] or -1, took[2] or -1, took[3] or -1, TTL))
    for i = 1, 3 do
      assert(took[i], ("pauser %d still paused 30 s after the kill"):format(i))
      assert.is_true(took[i] <= TTL + 1 + 1, ("pauser %d resumed %.2f s after the kill"):format(i, took[i]))
      assert.is_false(bouncers[i]:paused())
      assert.is_true(logged(pausers[i]:logs(), "event=pause_lease_gone"), "pauser " .. i .. " logged no lease_gone")
    end
    assert.equals(0, count("/pause/"))
  end)

  it("fails a running failover cleanly when its pause lease is lost: resumed, restored, released, "
    .. "and it says why", function()
    local f = start_failover { "--pause-expiry", "25s", "--pause-lease-ttl", TTL .. "s", "--lock-ttl", "15s" }
    finally(function() f:stop("KILL") end)
    assert(D.eventually(20, function() return watching(1) and watching(2) and watching(3) end),
      "the pausers did not hold a lease-tied pause\n" .. tostring(f:logs()))
    local _, kvs = count("/pause/")
    assert.equals(1, #kvs)
    local code = srv:etcdctl { "lease", "revoke", ("%x"):format(kvs[1].lease) }
    assert.equals(0, code)
    local exit = f.p:wait(20)
    local _, err = f.p:output()
    assert.equals(1, exit)
    assert.matches("pause lease lost", err)
    assert.is_true(logged(err, "event=pause_lease_lost"))
    for i = 1, 3 do
      assert.is_false(health(i).paused)
      assert.is_false(bouncers[i]:paused())
    end
    assert.equals("2s", env:doc().cluster.spec.sleepInterval)
    assert.equals(0, count("/failover"))
  end)

  it("resumes at once a PAUSE whose lease key is absent, and refuses one outside its cluster's "
    .. "pause keys", function()
    local status, body = post(1, "/pause", { timeout = 5, expiry = 30, lease_key = KEY .. "/pause/nobody" })
    assert.equals(200, status, body.error)
    assert(D.eventually(5, function() return not health(1).paused end), "a pause on an absent key was kept")
    assert.is_true(logged(pausers[1]:logs(), "event=pause_lease_gone", "how=absent"))
    status = post(1, "/pause", { timeout = 5, expiry = 30, lease_key = "stolon/cluster/other/clusterdata/pause/x" })
    assert.equals(400, status)
    status = post(1, "/pause", { timeout = 5, expiry = 30, lease_key = KEY .. "/pause/x", lease = "not hex" })
    assert.equals(400, status)
    assert.is_false(health(1).paused)
  end)

  it("keeps a lease-tied pause until the expiry, not before, when etcd is stopped under it, and "
    .. "says so in its log and /health", function()
    local lease = assert(client:lease(2))
    local key = KEY .. "/pause/" .. lease.hex
    assert(client:put(key, "spec", { lease = lease.id }))
    local expiry = 8
    local t0 = task.now()
    local status, body = post(1, "/pause", { timeout = 5, expiry = expiry, lease_key = key, lease = lease.hex })
    assert.equals(200, status, body.error)
    assert(D.eventually(5, function() return watching(1) end), "pauser 1 did not watch the lease")
    srv:kill_member(1)
    lease:revoke() -- fails with etcd gone, but stops our keep-alive (and its warnings)
    local unreachable = D.eventually(5, function()
      local h = health(1)
      return h and h.lease and h.lease.state == "unreachable" and h
    end)
    assert(unreachable, "/health did not say etcd is unreachable")
    assert.is_true(unreachable.paused)
    assert.is_true(logged(pausers[1]:logs(), "event=pause_lease_unreachable"))
    local took = resumed_after(t0, expiry + 5)[1]
    print(("\n  [pause-lease] etcd stopped: pauser resumed %.2f s after its PAUSE (expiry %d s, lease TTL 2 s)")
      :format(took or -1, expiry))
    assert(took, "the pause outlived its expiry")
    assert.is_true(took >= expiry - 1, ("resumed %.2f s after the pause, before the expiry"):format(took))
    assert.is_true(took <= expiry + 2, ("resumed %.2f s after the pause"):format(took))
    assert.is_true(logged(pausers[1]:logs(), "event=resume", "reason=expiry"))
    assert.is_false(bouncers[1]:paused())
  end)
end)

describe("a healthy slow failover on the playground", function()
  local cluster = require "playground.cluster"
  local A = require "support.acceptance"
  local fs = require "fs"
  local DELAY, PTTL = 9, 2
  local c

  setup(function()
    c = assert(cluster.boot {
      cluster_name = "lease-pg", hosts = { "127.0.8.11", "127.0.8.12", "127.0.8.13" }, proxy_host = "127.0.8.20",
      etcd_port = 22890, pg_port = 26902, bouncer_port = 26931, pauser_port = 26941, promote_delay = DELAY,
    })
    assert(A.wait_healthy(c, 90))
  end)

  teardown(function()
    if c then c:stop() end
  end)

  it("is never resumed early while the promotion takes several lease TTLs", function()
    local nodes = { { host = c.o.proxy_host, name = "proxy" } }
    for _, n in ipairs(c.nodes) do nodes[#nodes + 1] = n end
    -- per pauser: when it was first seen paused with its lease watched, and when it
    -- was first seen not paused after that
    local seen = {}
    local done = false
    local samplers = {}
    for i, n in ipairs(nodes) do
      seen[i] = {}
      samplers[i] = task.spawn(function()
        while not done do
          local status, h = A.pauser_health(c, n, 1)
          if status == 200 then
            local s = seen[i]
            if h.paused and h.lease and h.lease.state == "watching" and not s.paused then s.paused = task.now() end
            if s.paused and not h.paused and not s.resumed then s.resumed = task.now() end
          end
          task.sleep(0.2)
        end
      end)
    end
    local report = c.base .. "/lease-report.json"
    local t0 = task.now()
    local code, _, err = c:run_failover({ "--pause-lease-ttl", PTTL .. "s", "--report-file", report }, 120)
    local ended = task.now()
    task.sleep(0.5)
    done = true
    for _, h in ipairs(samplers) do h:wait(5) end
    assert.equals(0, code, err)
    local r = assert(cjson.decode((assert(fs.read(report)))))
    print(("\n  [pause-lease] slow promotion (%d s, lease TTL %d s): failover %.1f s, pause window %.2f s")
      :format(DELAY, PTTL, ended - t0, r.pause_window_seconds))
    assert.is_true(r.pause_window_seconds >= DELAY - 1, ("pause window %.2f s"):format(r.pause_window_seconds))
    for i, n in ipairs(nodes) do
      local s = seen[i]
      assert(s.paused, n.name .. ": never seen paused with its lease watched")
      local held = (s.resumed or ended) - s.paused
      print(("  [pause-lease]   %s: held %.2f s"):format(n.name, held))
      -- resumed only by the failover's own RESUME, after the new master came (the
      -- report's times are CLOCK_MONOTONIC, as task.now() here)
      assert.is_true(not s.resumed or s.resumed >= r.recovered_at,
        ("%s resumed %.2f s before the recovery"):format(n.name, r.recovered_at - (s.resumed or 0)))
      assert.is_true(held >= DELAY - 1, ("%s held only %.2f s"):format(n.name, held))
    end
    for _, d in ipairs(c.daemons) do
      if d.name:match("pauser$") then
        local text = fs.read(d.log) or ""
        assert.is_false(logged(text, "event=pause_lease_gone"), d.name .. " resumed on its lease")
        assert.is_true(logged(text, "event=resume", "reason=request"), d.name .. " got no RESUME")
      end
    end
  end)
end)
