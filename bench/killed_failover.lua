-- bench/killed_failover.lua [ROUNDS=2]: how long clients stall when `failover` is
-- killed outright (SIGKILL) after PAUSE, with the pause tied to the failover's lease
-- (--pause-lease-ttl 3s) and with the expiry alone (--pause-lease-ttl 0: the tool
-- before the lease), side by side in one run, rounds alternated. Run by bench/run.sh.
--
-- One etcd member, one Postgres, and on each of 127.0.2.60-62 a PgBouncer and a
-- `pauser` with store access; clusterdata with three keepers and no sentinel, so the
-- failover pauses and then waits for a master change that never comes. Each round:
-- a client connection per PgBouncer (opened while resumed), the failover started
-- (--pause-expiry 25s, the default), and once every pauser reports the pause a query
-- is sent on each connection and the failover is SIGKILLed 0.05 s later. Figure:
-- seconds from the SIGKILL until the last of the three queries answered (the client
-- stall from sending the queries is that plus 0.05 s; both are in the raw figures).
-- Writes bench/results/killed_failover.json.
package.path = package.path .. ";bench/?.lua;tests/lua/?.lua"
local B = require "benchlib"
local P = require "support.pg"
local CD = require "playground.clusterdata"
local cjson = require "cjson.safe"
local pg = require "pg"
local pauser_client = require "pauser_client"
local task = require "task"

local ROUNDS = tonumber(arg[1] or "2")
local HOSTS = { B.ADDR .. "60", B.ADDR .. "61", B.ADDR .. "62" }
local ETCD_PORT, PG_PORT, BOUNCER_PORT, PAUSER_PORT = 22884, 22662, 22660, 22661
local CLUSTER = "bench-killed"
local KEY = "stolon/cluster/" .. CLUSTER .. "/clusterdata"
local TOKEN = "bench-killed-token"
local TTL, EXPIRY = 3, 25

B.quiet()
local res = B.result("killed_failover")
local function defer(fn) res:defer(fn) end

-- one_round(env, ttl) -> stall after the kill, client stall (seconds)
local function one_round(env, ttl)
  local client, clients, conns = env.etcd.client, env.clients, {}
  local keepers = {}
  for k, h in ipairs(HOSTS) do keepers[k] = { uid = "keeper" .. (k - 1), host = h, port = PG_PORT } end
  assert(client:put(KEY, CD.encode(CD.new { keepers = keepers, master = "keeper0", sync = { "keeper1" },
    sleep_interval = "2s" })))
  assert(B.wait_until(20, function()
    local r = client:get(KEY .. "/failover", { prefix = true })
    return r and #r.kvs == 0
  end), "the previous round's lock was not released")
  for i, c in ipairs(clients) do
    assert(c:resume(5))
    conns[i] = assert(pg.connect(("host=%s port=%d dbname=postgres user=postgres"):format(HOSTS[i], BOUNCER_PORT),
      { timeout = 5 }))
    assert(conns[i]:query("SELECT 1"))
  end
  local f = B.ours({ "failover", "--cluster-name", CLUSTER, "--store-endpoints", env.etcd.endpoint,
    "--pauser-port", tostring(PAUSER_PORT), "--metrics-port", "0", "--failover-sleep-interval", "3s",
    "--health-check-timeout", "2s", "--lock-ttl", "2s", "--pause-expiry", EXPIRY .. "s",
    "--pause-lease-ttl", ttl .. "s" }, { env = { STBOUNCER_FAILOVER_TOKEN = TOKEN } })
  local ok, werr = pcall(function()
    assert(B.wait_until(20, function()
      for _, c in ipairs(clients) do
        local h = c:health(2)
        if not (h and h.paused) then return false end
        if ttl > 0 and not (h.lease and h.lease.state == "watching") then return false end
      end
      return true
    end), "the failover did not pause every PgBouncer")
  end)
  if not ok then
    f:signal("KILL")
    f:wait(5)
    error(werr, 0)
  end
  local fns, sent = {}, task.now()
  for i, conn in ipairs(conns) do
    fns[i] = function()
      local rows, err = conn:query_opts { sql = "SELECT 1", timeout = EXPIRY + 15 }
      assert(rows, err)
      return task.now()
    end
  end
  local queries = task.spawn(task.all, fns)
  task.sleep(0.05) -- the queries are in PgBouncer's queue
  f:signal("KILL")
  local killed = task.now()
  f:wait(5)
  local _, results, err = queries:wait(EXPIRY + 20)
  assert(not err, err)
  local last = 0
  for _, r in ipairs(results) do last = math.max(last, r[1]) end
  for _, conn in ipairs(conns) do conn:close() end
  return last - killed, last - sent
end

local function main()
  B.say("killed_failover: etcd, Postgres, 3 PgBouncers and 3 pausers on %s-62 ...", HOSTS[1])
  local env = { etcd = B.start_etcd { host = HOSTS[1], port = ETCD_PORT } }
  defer(env.etcd.stop)
  local db = P.start_postgres { host = HOSTS[1], port = PG_PORT }
  defer(function() db:destroy() end)
  env.clients = {}
  for i, host in ipairs(HOSTS) do
    local b = P.start_pgbouncer { host = host, port = BOUNCER_PORT, target = db }
    defer(function() b:destroy() end)
    local p = B.ours({ "pauser", "--bind-address", ("%s:%d"):format(host, PAUSER_PORT), "--pgbouncer-host", host,
      "--pgbouncer-port", tostring(BOUNCER_PORT), "--metrics-port", "0", "--cluster-name", CLUSTER,
      "--store-endpoints", env.etcd.endpoint }, { env = { STBOUNCER_FAILOVER_TOKEN = TOKEN },
      stderr = "file:" .. b.dir .. "/pauser.log" })
    defer(function() B.stop(p) end)
    env.clients[i] = pauser_client.new { name = host, host = host, port = PAUSER_PORT, token = TOKEN }
    assert(B.wait_until(20, function() return env.clients[i]:health(1) end), "pauser " .. i .. " not healthy")
  end

  local after, stall = { lease = {}, expiry = {} }, { lease = {}, expiry = {} }
  for r = 1, ROUNDS do
    for _, mode in ipairs { "lease", "expiry" } do
      local a, s = one_round(env, mode == "lease" and TTL or 0)
      after[mode][#after[mode] + 1], stall[mode][#stall[mode] + 1] = a, s
      B.say("  round %d, %-6s: stall after the kill %.2f s, client stall %.2f s", r, mode, a, s)
    end
  end
  local L, E = B.stats(after.lease), B.stats(after.expiry)
  res.raw = { after_kill_s = after, client_stall_s = stall, ttl = TTL, expiry = EXPIRY, rounds = ROUNDS }
  res:row { figure = ("stall after SIGKILL, pause lease (TTL %d s), max"):format(TTL), value = L.max, unit = "s",
    floor = E.max, floor_what = ("expiry only, %d s"):format(EXPIRY), goal = ("<= %d s (TTL + 1)"):format(TTL + 1),
    met = L.max <= TTL + 1 }
  res:row { figure = "  pause lease, median", value = L.median, unit = "s", floor = E.median }
  res:row { figure = "stall after SIGKILL, expiry only (before), max", value = E.max, unit = "s",
    goal = ("the expiry (%d s) less the pause so far"):format(EXPIRY) }
  B.say("%s", cjson.encode(res.raw))
end

return res:run(main)
