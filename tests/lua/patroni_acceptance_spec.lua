-- Acceptance on the Patroni playground (lua/playground/patroni.lua), under load: real
-- Patroni 3.0.2 running three PostgreSQL nodes (synchronous_mode, use_pg_rewind,
-- loop_wait 1, ttl 10), its REST API over HTTPS (a playground CA; the failover
-- verifies the certificate with it) with basic auth. Layout (a): a supervised
-- PgBouncer and a pauser per node, the proxy PgBouncer in front; and beside it a
-- layout (b) proxy, "direct", pointing straight at the primary. One playground for the
-- whole file, booted in setup(); each scenario leaves it healthy for the next.
--
-- Addresses: nodes 127.0.11.11-13, proxy 127.0.11.20, direct 127.0.11.21, etcd
-- 127.0.11.1:30379/30380, Postgres :30432, PgBouncers :30532, pausers :30180, REST API
-- :30008. PATRONI_ACCEPTANCE_KEEP=1 leaves the folder (logs). About 3 minutes.
local A = require "support.acceptance"
local fs = require "fs"
local load = require "playground.load"
local patroni = require "patroni"
local pg = require "pg"
local pgnode = require "playground.pgnode"
local playground = require "playground.patroni"
local task = require "task"

local PREFIX = "127.0.11."

local say = A.sayer("patroni acceptance")

local step_status = A.step_status

-- How many pausers the failover's log says it paused (one line per endpoint).
local function paused_endpoints(err)
  local n = 0
  for line in err:gmatch("[^\n]+") do
    if line:find("event=pgbouncer_pause ", 1, true) and line:find("endpoint=", 1, true) then n = n + 1 end
  end
  return n
end

local function conninfos(c, names)
  local out = {}
  for _, b in ipairs(A.all_bouncers(c)) do
    if names[b.name] then out[#out + 1] = b.conninfo end
  end
  return out
end

-- under_load(c, {conninfos=}, fn) -> report (see playground.load), missing ids, the
-- new primary: 8 clients through the given PgBouncers, 2 s before fn() and 2 s after.
local function under_load(c, through, fn)
  local run = load.start { conninfos = through, clients = 8 }
  local stopped = false
  finally(function()
    if not stopped then run:stop() end
  end)
  task.sleep(2)
  fn()
  task.sleep(2)
  stopped = true
  local r = run:stop()
  local new = assert(c:primary())
  local missing, unknown_committed = load.verify(r, pgnode.conninfo(new, "app"))
  assert.truthy(missing, tostring(unknown_committed))
  say("load: %d committed, %d failed, %d unknown outcome (%s of them committed), %d connect errors, "
    .. "max latency %.0f ms, %d missing", r.committed, r.failed, r.unknown, tostring(unknown_committed),
    r.connect_errors, r.max_latency * 1000, #missing)
  return r, missing, new
end

local function errors_of(r)
  local errs = {}
  for k = 1, math.min(#r.errors, 5) do errs[k] = r.errors[k].kind .. " " .. r.errors[k].error end
  return table.concat(errs, "\n")
end

describe("acceptance on the Patroni playground", function()
  local c
  local hooks = { setup = setup, teardown = teardown, before_each = before_each, after_each = after_each }
  A.shared_playground(hooks, say, function()
    local err
    c, err = playground.boot {
      scope = "acceptance",
      hosts = { PREFIX .. "11", PREFIX .. "12", PREFIX .. "13" },
      proxy_host = PREFIX .. "20", direct_host = PREFIX .. "21", etcd_host = PREFIX .. "1",
      etcd_port = 30379, pg_port = 30432, bouncer_port = 30532, pauser_port = 30180, api_port = 30008,
      metrics_port = 30546, https = true, keep = os.getenv("PATRONI_ACCEPTANCE_KEEP") == "1",
    }
    return c, err
  end)

  it("the REST API is HTTPS with basic auth, and the failover verifies its certificate", function()
    local p = patroni.primary(assert(c:view()))
    assert.matches("^https://", p.api_url)
    -- without the playground's CA the leader's REST API does not pass the pre-flight
    local argv = A.failover_argv(c, {})
    local kept = {}
    local skip = false
    for i, a in ipairs(argv) do
      if a == "--patroni-ca-file" then skip = true
      elseif skip then skip = false
      else kept[#kept + 1] = argv[i] end
    end
    kept.env, kept.stdin, kept.timeout = argv.env, "null", 60
    local code, out, err = require("proc").run(kept)
    assert.equals(1, code, out .. err)
    assert.matches("Patroni REST API of the leader", err, 1, true)
    assert.is_nil(step_status(out, "pause"), out)
    assert.equals(p.name, c:view().leader)
  end)

  it("a failover through every PgBouncer under load: 0 failed, 0 unknown outcome, 0 missing", function()
    local old = assert(c:primary())
    local code, out, err
    local r, missing, new = under_load(c, conninfos(c, { proxy = true, ["node1-pgbouncer"] = true,
      ["node2-pgbouncer"] = true, ["node3-pgbouncer"] = true }), function()
      code, out, err = A.run_failover(c, { "--report-file", c.base .. "/failover-a.json" })
    end)
    assert.are.equal(0, code, out .. err)
    assert.are_not.equal(old.host, new.host)
    assert.are.equal(4, paused_endpoints(err), err)
    assert.truthy(r.committed > 0)
    assert.are.equal(0, r.failed, errors_of(r))
    assert.are.equal(0, r.unknown, errors_of(r))
    assert.are.equal(0, r.connect_errors, errors_of(r))
    assert.are.same({}, missing)
    local s = require("cjson").decode((assert(fs.read(c.base .. "/failover-a.json"))))
    say("layout (a): pause window %.1f ms (Patroni %.1f ms, ours %.1f ms)", s.pause_window_seconds * 1000,
      s.manager_seconds * 1000, s.ours_seconds * 1000)
    assert.truthy(A.eventually(15, function()
      local _, same = A.routes(c, new.host)
      return same
    end), "every PgBouncer routes to the new primary")
  end)

  it("layout (b): only the proxy's pauser, straight at the primary: 0 failed, 0 unknown, 0 missing", function()
    local old = assert(c:primary())
    local code, out, err
    local r, missing, new = under_load(c, conninfos(c, { ["direct-pgbouncer"] = true }), function()
      code, out, err = A.run_failover(c, {}, { how = { layout = "b" } })
    end)
    assert.are.equal(0, code, out .. err)
    assert.are_not.equal(old.host, new.host)
    assert.are.equal(1, paused_endpoints(err), err)
    assert.truthy(r.committed > 0)
    assert.are.equal(0, r.failed, errors_of(r))
    assert.are.equal(0, r.unknown, errors_of(r))
    assert.are.same({}, missing)
  end)

  it("an open transaction makes the pause time out: nothing moves, everything resumed, lock free", function()
    local old = assert(c:primary())
    local leader = c:view().leader
    local conn = assert(pg.connect(c.app_conninfo, { timeout = 5, query_timeout = 60 }))
    finally(function() conn:close() end)
    assert(conn:query("BEGIN"))
    assert(conn:query("INSERT INTO acceptance (id, note) VALUES (1, 'rolled back')"))
    local code, out, err = A.run_failover(c, { "--pause-timeout", "2s" })
    assert.are.equal(1, code, out .. err)
    assert.are.equal("failed", step_status(out, "pause"), out)
    assert.is_nil(step_status(out, "switchover"), out)
    assert.are.equal("ok", step_status(out, "resume"), out)
    assert.are.equal("ok", step_status(out, "release_lock"), out)
    assert(conn:query("ROLLBACK"))
    assert(conn:query("INSERT INTO acceptance (id, note) VALUES (2, 'committed')"))
    assert.are.equal(leader, c:view().leader)
    assert.are.equal(old.host, c:primary().host)
    local routes, same = A.routes(c, old.host)
    assert.truthy(same, require("cjson").encode(routes))
    assert.truthy(A.try_lock(c, 2))
    assert.truthy(A.healthy(c))
  end)

  it("with both replicas stopped (no candidate) the failover is refused before any PAUSE", function()
    local v = assert(c:view())
    local stopped = {}
    finally(function()
      for _, n in ipairs(stopped) do c:start_node(n) end
    end)
    for _, n in ipairs(c.nodes) do
      if n.name ~= v.leader then
        c:stop_node(n)
        stopped[#stopped + 1] = n
      end
    end
    assert.truthy(A.eventually(30, function() return not patroni.can_lose_primary(assert(c:view())) end),
      "the replicas are still candidates")
    local code, out, err = A.run_failover(c, {})
    assert.are.equal(1, code, out .. err)
    assert.are.equal("failed", step_status(out, "check_cluster_healthy"), out)
    assert.is_nil(step_status(out, "pause"), out)
    assert.are.equal(0, paused_endpoints(err), err)
    assert.are.equal(v.leader, c:view().leader)
    for _, n in ipairs(stopped) do assert(c:start_node(n)) end
    stopped = {}
    assert(c:ready(90))
  end)

  it("an unreachable Patroni REST API (SIGSTOP) fails before any PAUSE", function()
    local v = assert(c:view())
    local leader = c:node(v.leader)
    assert(leader.patroni:signal("STOP"))
    local continued = false
    finally(function()
      if not continued then leader.patroni:signal("CONT") end
    end)
    local code, out, err, secs = A.run_failover(c, { "--health-check-timeout", "1s" }, { timeout = 30 })
    continued = true
    leader.patroni:signal("CONT")
    assert.are.equal(1, code, out .. err)
    assert.matches("Patroni REST API of the leader", err, 1, true)
    assert.is_nil(step_status(out, "pause"), out)
    assert.are.equal(0, paused_endpoints(err), err)
    assert.truthy(secs < 10, ("took %.1f s"):format(secs))
    assert.are.equal(v.leader, c:view().leader)
  end)

  it("a failover killed (KILL) after PAUSE: the pausers resume by the lease/expiry, the lock frees by its lease",
    function()
      local logf = c.base .. "/failover-killed.log"
      local p = A.spawn_failover(c, { "--pause-expiry", "5s", "--lock-ttl", "3s" }, { log = logf })
      local killed = false
      finally(function()
        if not killed then p:signal("KILL") end
      end)
      local want = #c:all_bouncers() - 1 -- every pauser but the direct proxy's (layout a)
      local seen = A.eventually(30, function()
        if not p:running() then error("failover exited before pausing:\n" .. A.tail(logf)) end
        return paused_endpoints(fs.read(logf) or "") >= want
      end, 0.02)
      assert.truthy(seen, "no pause seen:\n" .. A.tail(logf))
      assert(p:signal("KILL"))
      local t_kill = task.now()
      killed = true
      p:wait(10)
      local _, body = A.pauser_health(c, c.proxy)
      assert.truthy(body and body.paused, "the proxy's pauser is not paused after the kill")
      local took, lerr = A.try_lock(c, 10)
      assert.truthy(took, tostring(lerr))
      local lock_after = task.now() - t_kill
      local flowing, why = A.eventually(15, function()
        for _, b in ipairs(c:all_bouncers()) do
          local s, hb = A.pauser_health(c, b, 1)
          if s ~= 200 or hb.paused then return nil, b.dir .. " still paused" end
        end
        for _, b in ipairs(A.all_bouncers(c)) do
          local ok, qerr = A.query_ok(b.conninfo, 1)
          if not ok then return nil, b.name .. ": " .. tostring(qerr) end
        end
        return true
      end, 0.1)
      local resumed_after = task.now() - t_kill
      assert.truthy(flowing, tostring(why))
      assert.truthy(lock_after < 8, ("lock freed only after %.1f s"):format(lock_after))
      assert.truthy(resumed_after < 9, ("queries flow only after %.1f s"):format(resumed_after))
      say("killed failover: lock free %.1f s, queries flow %.1f s after the kill", lock_after, resumed_after)
    end)

  -- The negative control: the same load through the same PgBouncers, and a plain
  -- `patronictl switchover --force` without our PAUSE: the harness must see failures.
  it("a plain patronictl switchover under the same load fails transactions", function()
    local v = assert(c:view())
    local cand = assert(patroni.can_lose_primary(v))
    local code, out, err
    local r = under_load(c, conninfos(c, { proxy = true, ["node1-pgbouncer"] = true,
      ["node2-pgbouncer"] = true, ["node3-pgbouncer"] = true }), function()
      code, out, err = c:patronictl { "switchover", "--leader", v.leader, "--candidate", cand.name, "--force" }
      assert.truthy(A.eventually(30, function() return patroni.switch_finished(assert(c:view()), v.members[v.leader]) end))
      assert.truthy(A.eventually(15, function()
        local _, same = A.routes(c, cand.host)
        return same
      end))
    end)
    assert.are.equal(0, code, tostring(out) .. tostring(err))
    say("plain patronictl switchover: first errors:\n%s", errors_of(r))
    assert.truthy(r.failed + r.unknown > 0, "no failure seen: the load cannot see what the pause prevents")
  end)

  -- Run last: every error a daemon logged was one a scenario provoked on purpose.
  it("no daemon logged an unexpected error", function()
    local expected = {
      "event=pause_failed code=timeout", -- the open transaction
    }
    assert.are.same({}, A.unexpected_errors(c, expected))
  end)
end)
