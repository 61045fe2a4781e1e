-- failover: the zero-downtime switch of the primary, as steps the policy puts in
-- order (policies/failover.lua holds the procedure). Each step is a method taking the
-- shared context; a site policy can reorder them, drop one, or add its own.
--
-- Steps (the original tool's pipeline, with the clean-up it defers):
--   check_cluster_healthy     the cluster can lose one node
--   health_check_clients      every pauser answers /health (PgBouncer reachable)
--   acquire_lock              etcd lock <clusterdata key>/failover  -> release_lock
--   shorten_sleep_interval    cluster.spec.sleepInterval CAS to 1s   -> restore_sleep_interval
--   pause                     every PgBouncer, in parallel           -> resume
--                             (first align_to_sentinel: wait for the moment that puts
--                             forceFail just before the sentinel's next read)
--   failkeeper                mark the master keeper failed (CAS, or stolonctl); when
--                             aligned, the write waits for its moment (what the PAUSE
--                             took less than planned)
--   wait_for_recovery         watch clusterdata until a new healthy master has its sync standbys
--   write_probe               optional: a write on the new master before RESUME
local common = require "common"
local duration = require "duration"
local fs = require "fs"
local log = require "log"
local pause_lease = require "pause_lease"
local pauser_client = require "pauser_client"
local patroni = require "patroni"
local pipeline = require "pipeline"
local proc = require "proc"
local sentinel_clock = require "sentinel_clock"
local stolon = require "stolon"
local task = require "task"

local M = {}
M.__index = M

M.flags = common.spec(common.global_flags, common.stolon_flags, common.manager_flags, common.token_flags, {
  { name = "health-check-only", type = "bool", help = "Only run the health checks, don't failover" },
  { name = "dry-run", type = "bool", help = "Print the plan and run the checks; change nothing" },
  { name = "pauser-port", default = "8080", help = "Port on which the pauser APIs are listening" },
  { name = "pauser-scheme", default = "http", help = "http or https for the pauser API" },
  { name = "pauser-ca-file", default = "", help = "CA bundle to verify HTTPS pausers" },
  { name = "extra-pauser", type = "list", default = "",
    help = "More pausers to pause (host:port, comma separated), e.g. on proxy nodes" },
  { name = "node-pausers", type = "bool", default = "true",
    help = "Pause a pauser on every database node (--no-node-pausers: only the --extra-pauser ones)" },
  { name = "candidate", default = "",
    help = "With --manager patroni: the member to switch over to (default: the first good replica)" },
  { name = "patroni-ca-file", default = "", help = "CA bundle to verify Patroni's HTTPS REST API" },
  { name = "patroni-auth-file", env = "PATRONI_AUTH_FILE", default = "",
    help = "File holding user:password for Patroni's REST API (else $PATRONI_RESTAPI_USERNAME/_PASSWORD)" },
  { name = "switchover-timeout", type = "duration", default = "30s",
    help = "With --manager patroni: how long the POST /switchover request may take" },
  { name = "health-check-timeout", type = "duration", default = "2s", help = "Timeout for health checking pause clients" },
  { name = "cleanup-timeout", type = "duration", default = "10s", help = "Timeout for running deferred cleanup operations" },
  { name = "lock-timeout", type = "duration", default = "5s", help = "Timeout for acquiring failover lock" },
  { name = "lock-ttl", type = "duration", default = "15s",
    help = "Lease of the failover lock: how long it outlives a killed failover" },
  { name = "pause-timeout", type = "duration", default = "5s", help = "Timeout for pausing PgBouncer" },
  { name = "pause-expiry", type = "duration", default = "25s", help = "Time to wait before resuming PgBouncer after pause" },
  { name = "pause-lease-ttl", type = "duration", default = "3s",
    help = "TTL of the etcd lease every pause is tied to: a killed failover's pauses end this soon (0: expiry only)" },
  { name = "resume-timeout", type = "duration", default = "5s", help = "Timeout for issuing PgBouncer resumes" },
  { name = "stolonctl-timeout", type = "duration", default = "5s", help = "Timeout for executing stolonctl commands" },
  { name = "stolonctl", default = "",
    help = "Mark the keeper failed with this stolonctl binary instead of our compare-and-swap" },
  { name = "failover-sleep-interval", type = "duration", default = "1s",
    help = "sleepInterval stolon uses during the failover (restored afterwards)" },
  { name = "align-to-sentinel", type = "bool", default = "true",
    help = "Learn the sentinel's tick from its clusterdata writes and pause so forceFail lands just before its next read" },
  { name = "write-probe", default = "",
    help = "libpq conninfo template ({{.Host}}, {{.Port}}) for a write on the new master before RESUME" },
  { name = "routing-timeout", type = "duration", default = "2s",
    help = "Before RESUME, wait at most this long for PgBouncers that sent clients straight to the old primary "
      .. "to be re-pointed (0: do not wait)" },
  { name = "report-file", default = "",
    help = "Also write the summary as JSON to this file (times are CLOCK_MONOTONIC seconds)" },
  { name = "allow-session-pooling", type = "bool",
    help = "Fail over even if a PgBouncer uses pool_mode=session (PAUSE then waits for clients to leave)" },
})

-- prepare(argv) -> f. Parses flags, connects to the store, reads clusterdata and
-- builds a client per pauser. Exits 2 on bad flags; raises on an unusable setup.
function M.prepare(argv, info)
  local opts = require("flags").parse_or_exit(M.flags, argv, info or {
    command = "failover", description = "Run a zero-downtime failover of the Postgres primary" })
  return M.setup(opts)
end

-- setup(opts) -> f, from parsed options (the store, token and pauser flags).
function M.setup(opts)
  common.setup_logging(opts)
  local self = setmetatable({ opts = opts, log = log.with { component = "failover" }, ctx = {} }, M)
  local token, terr = common.token(opts)
  if not token then error(terr, 0) end
  self.token = token
  local client, cerr = common.connect_store(opts)
  if not client then error(cerr, 0) end
  self.client = client
  self.patroni = opts.manager == "patroni"
  self.model = common.model(opts)
  if self.patroni then
    local auth, aerr = patroni.credentials(opts.patroni_auth_file, os.getenv)
    if aerr then error(aerr, 0) end
    self.patroni_auth = auth
  end
  -- key: the clusterdata key, or Patroni's scope prefix
  self.key = self.patroni and common.patroni_base(opts) or common.clusterdata_key(opts)
  local cd, kv = self:read_view()
  if not cd then error("failed to get clusterdata: " .. tostring(kv), 0) end
  self.initial = cd
  self.pausers = {}
  if opts.node_pausers ~= false then
    for _, k in ipairs(self:nodes(cd)) do
      self.pausers[#self.pausers + 1] = self:pauser(k.keeper, k.host, opts.pauser_port)
    end
  end
  for _, addr in ipairs(opts.extra_pauser) do
    local h, p = addr:match("^%[?([^%]]+)%]?:(%d+)$")
    if not h then error(("--extra-pauser %q: expected host:port"):format(addr), 0) end
    local c = self:pauser(addr, h, p)
    c.extra = true
    self.pausers[#self.pausers + 1] = c
  end
  -- Patroni sites often run PgBouncer only on proxy hosts (--no-node-pausers
  -- --extra-pauser ...): a failover that pauses nothing would only cause failures.
  if #self.pausers == 0 and (self.patroni or opts.node_pausers == false) then
    error("no pausers to pause: give --extra-pauser host:port (or let it find the nodes' pausers)", 0)
  end
  return self
end

-- read_view() -> the cluster as the model sees it (stolon's clusterdata, or every
-- Patroni key under the scope) | nil, err. Task only; yields.
function M:read_view()
  if not self.patroni then return common.read_clusterdata(self.client, self.key) end
  local res, err = self.client:get(self.key, { prefix = true })
  if not res then return nil, ("get %s: %s"):format(self.key, tostring(err)) end
  if not res.kvs or #res.kvs == 0 then return nil, ("no Patroni keys under %s"):format(self.key) end
  return patroni.decode(res.kvs, self.key)
end

-- nodes(view) -> {{keeper=, host=}, ...}: where the node pausers are: stolon's keepers,
-- or Patroni's members (named by member, at their conn_url host).
function M:nodes(view)
  if not self.patroni then return view:keepers() end
  local out = {}
  for _, name in ipairs(view.names) do
    out[#out + 1] = { keeper = name, host = view.members[name].host }
  end
  return out
end

function M:pauser(name, host, port)
  return pauser_client.new {
    name = name, host = host, port = port, token = self.token, scheme = self.opts.pauser_scheme,
    ca_file = self.opts.pauser_ca_file ~= "" and self.opts.pauser_ca_file or nil,
  }
end

-- each(event, fn [, which]) -> results | nil, err: fn(client) on every pauser (or
-- only the "keeper" or the "extra" ones) in parallel; every failure is reported,
-- each pauser's time logged.
function M:each(event, fn, which)
  local fns = {}
  for _, c in ipairs(self.pausers) do
    if which == nil or (which == "extra") == (c.extra == true) then
      fns[#fns + 1] = function()
        local t0 = task.now()
        local r, err = fn(c)
        self.log.info { event = event, endpoint = c.name, elapsed = ("%.4f"):format(task.now() - t0),
          error = err and tostring(err) or nil }
        if r == nil then error(err, 0) end
        return r
      end
    end
  end
  local res, err = task.all(fns)
  if err then return nil, err end
  return res
end

-- Compare-and-swap edit of clusterdata: edit(raw) -> new raw | nil, err. Retries
-- when stolon wrote in between. Returns the new mod_revision.
function M:cas(what, edit)
  self.ctx.cas_attempts = self.ctx.cas_attempts or {}
  for attempt = 1, 10 do
    self.ctx.cas_attempts[what] = attempt
    local res, err = self.client:get(self.key)
    if not res then return nil, ("%s: get: %s"):format(what, tostring(err)) end
    local kv = res.kvs and res.kvs[1]
    if not kv then return nil, ("%s: no clusterdata at %s"):format(what, self.key) end
    local new, eerr = edit(kv.value)
    if not new then return nil, ("%s: %s"):format(what, eerr) end
    if new == kv.value then return kv.mod_revision end
    local r, terr = self.client:txn {
      compare = { { key = self.key, target = "mod", result = "==", value = kv.mod_revision } },
      success = { { put = { key = self.key, value = new } } },
    }
    if not r then
      -- A txn etcd applied whose answer was lost (a timeout, a member gone): judge
      -- by what is there now, or a forceFail that applied would be taken for a
      -- failure and PgBouncer resumed while the primary moves.
      local now = self.client:get(self.key)
      local cur = now and now.kvs and now.kvs[1]
      if cur and cur.value == new then
        self.log.warn { event = "cas_ambiguous", what = what, error = tostring(terr), msg = "the write had applied" }
        return cur.mod_revision
      end
      return nil, ("%s: txn: %s"):format(what, tostring(terr))
    end
    if r.succeeded then return r.revision end
    self.log.debug { event = "cas_retry", what = what, msg = "clusterdata changed underneath, retrying" }
  end
  return nil, what .. ": clusterdata kept changing (10 compare-and-swap attempts)"
end

-- ---- the steps ------------------------------------------------------------------

-- Patroni: a running leader and a candidate replica (running, in sync under
-- synchronous_mode, no nofailover, lag within maximum_lag_on_failover), kept in
-- ctx.candidate.
function M:check_cluster_healthy()
  self.log.info { event = "check_cluster_healthy", msg = "checking health of cluster" }
  local cd, err = self:read_view()
  if not cd then return nil, err end
  local ok, why = self.model.can_lose_primary(cd, self.opts.candidate)
  if not ok then return nil, why end
  self.ctx.old_master = self.model.primary(cd)
  if self.patroni then
    self.ctx.candidate = ok
    local aok, aerr = patroni.api_check(self.ctx.old_master, { timeout = self.opts.health_check_timeout,
      ca_file = self.opts.patroni_ca_file ~= "" and self.opts.patroni_ca_file or nil })
    if not aok then return nil, "Patroni REST API of the leader: " .. aerr end
    self.log.info { event = "candidate", leader = self.ctx.old_master.name, candidate = ok.name }
  end
  return true
end

-- routes_to(health_body, m) -> names of the databases the pauser's PgBouncer sends
-- straight to m's host and port (SHOW DATABASES, as /health reports it).
local function routes_to(body, m)
  local names = {}
  if not m or not m.host or type(body) ~= "table" or type(body.databases) ~= "table" then return names end
  for _, db in ipairs(body.databases) do
    if type(db) == "table" and db.host == m.host and tostring(db.port) == tostring(m.port or "5432") then
      names[#names + 1] = tostring(db.name)
    end
  end
  return names
end

-- The checks go out in the PAUSE's rounds (the extra pausers, then the keepers'), and
-- each round's slowest round trip is kept as the measure of what that round's PAUSE
-- will take, for align_to_sentinel: checked all at once, each pauser shares the two
-- cores with every other, which a PAUSE round does not (measured 8 ms for each of 4
-- checked together, 2-6 ms for their PAUSEs in rounds).
function M:health_check_clients()
  self.log.info { event = "clients_health_check", msg = "health checking all clients" }
  local slowest = { keeper = 0, extra = 0 }
  self.ctx.health_slowest = slowest
  local bodies = {} -- by pauser client
  local function check(c)
    local t0 = task.now()
    local body, herr, code = c:health(self.opts.health_check_timeout)
    local round = c.extra and "extra" or "keeper"
    slowest[round] = math.max(slowest[round], task.now() - t0)
    bodies[c] = body
    return body, herr, code
  end
  for _, round in ipairs { "extra", "keeper" } do
    local res, err = self:each("client_health_check", check, round)
    if not res then return nil, err end
  end
  self.ctx.old_routes = {}
  for i, c in ipairs(self.pausers) do
    local body = bodies[c]
    local names = routes_to(body, self.ctx.old_master)
    if #names > 0 then self.ctx.old_routes[i] = names end
    local cfg = body.config or {}
    if cfg.pool_mode == "session" and not self.opts.allow_session_pooling then
      return nil, ("%s: PgBouncer uses pool_mode=session, where PAUSE waits for every client to disconnect "
        .. "(pass --allow-session-pooling to fail over anyway)"):format(self.pausers[i].name)
    end
    if tonumber(cfg.server_login_retry) and tonumber(cfg.server_login_retry) > 2 then
      self.log.warn { event = "server_login_retry_high", endpoint = self.pausers[i].name, value = cfg.server_login_retry,
        msg = "a login that fails against the old primary stalls clients this many seconds after RESUME" }
    end
  end
  return true
end

-- wait_for_routing: a PgBouncer that sent a database straight to the old primary
-- before the pause is re-pointed by its supervise when the manager's record
-- changes, at the same moment this failover sees it. Resuming before that RELOAD
-- makes PgBouncer log in to the old primary while it is shut down or restarted
-- (Patroni restarts it as a replica at once), and every client waiting on it gets
-- "server login has been failing" for server_login_retry. Wait until each such
-- PgBouncer routes elsewhere, at most --routing-timeout; past that, resume anyway
-- with a warning (never worse than not waiting).
function M:wait_for_routing()
  local limit = self.opts.routing_timeout or 0
  local tracked = self.ctx.old_routes or {}
  if limit <= 0 or next(tracked) == nil then return true end
  local old = self.ctx.old_master
  local deadline = task.now() + math.min(limit, math.max(0, self:remaining()))
  local fns = {}
  for i, names in pairs(tracked) do
    local c = self.pausers[i]
    fns[#fns + 1] = function()
      local t0 = task.now()
      local still = names
      repeat
        local body = c:health(math.max(0.2, deadline - task.now()))
        if body then
          still = {}
          local now = {}
          for _, n in ipairs(routes_to(body, old)) do now[n] = true end
          for _, n in ipairs(names) do
            if now[n] then still[#still + 1] = n end
          end
          if #still == 0 then
            self.log.info { event = "routed", endpoint = c.name, waited = ("%.4f"):format(task.now() - t0) }
            return true
          end
        end
        task.sleep(0.002) -- a poll is a few ms already; RESUME waits on it
      until task.now() >= deadline
      self.log.warn { event = "routing_timeout", endpoint = c.name, databases = table.concat(still, ","),
        old_master = self.model.describe(old),
        msg = "still routed to the old primary; resuming anyway (is its supervise following the cluster?)" }
      return true
    end
  end
  task.all(fns)
  return true
end

function M:acquire_lock()
  self.log.info { event = "etcd_lock_acquire", msg = "acquiring failover lock in etcd" }
  local h, err = self.client:lock(common.lock_name(self.opts), { timeout = self.opts.lock_timeout, ttl = self.opts.lock_ttl })
  if not h then return nil, "failed to acquire failover lock: " .. tostring(err) end
  self.ctx.lock = h
  return true
end

function M:release_lock()
  self.log.info { event = "etcd_lock_release", msg = "releasing failover lock in etcd" }
  local h = self.ctx.lock
  if not h then return true end
  self.ctx.lock = nil
  return h:unlock()
end

-- The original is recorded before each write, not after the compare-and-swap
-- returns: a txn etcd applied whose answer was lost (a timeout, a signal) must still
-- be restored. restore_sleep_interval leaves alone a write that did not apply.
--
-- With --align-to-sentinel the wait also watches clusterdata (observe): the
-- sentinel's writes at the short interval are what align_to_sentinel learns from.
function M:shorten_sleep_interval()
  local short = duration.format(self.opts.failover_sleep_interval)
  local original
  local t_cas = task.now()
  local rev, err = self:cas("shorten_sleep_interval", function(raw)
    local cd, derr = stolon.decode(raw, self.key)
    if not cd then return nil, derr end
    original = cd:sleep_interval()
    if not duration.parse(original) then return nil, ("invalid sleepInterval %q"):format(original) end
    self.ctx.original_sleep_interval, self.ctx.short_sleep_interval = original, short
    return stolon.with_sleep_interval(raw, short)
  end)
  if not rev then return nil, err end
  self.ctx.store_cas_seconds = task.now() - t_cas
  self.log.info { event = "apply_short_sleep_interval", interval = short, original = original }
  if self.opts.align_to_sentinel then
    self.ctx.clock = sentinel_clock.new { interval = self.opts.failover_sleep_interval,
      previous = duration.parse(original) }
    self.ctx.watch_from = rev + 1
  end
  -- stolon components read the interval at their next tick: wait for them as the
  -- original did (two of the old intervals), before anything is paused.
  local wait = math.min(2 * duration.parse(original), 2 * 60)
  if duration.parse(original) > self.opts.failover_sleep_interval then
    self.log.info { event = "wait_until_sleep_interval_applies", seconds = wait }
    local until_t = task.now() + wait
    self:observe(function() return until_t end)
  end
  return true
end

-- observe(deadline): until task.now() >= deadline() (asked again after every write
-- seen), record the arrival time of every clusterdata revision in ctx.clock. Without
-- a clock (alignment off) it only sleeps. A watch that cannot go on (compaction, a
-- store error) stops the recording, notes why in ctx.clock_broken, and sleeps out
-- the rest. Task only; yields.
function M:observe(deadline)
  local clock = self.ctx.clock
  if not clock or self.ctx.clock_broken then
    local left = deadline() - task.now()
    if left > 0 then task.sleep(left) end
    return
  end
  local w <close> = self.client:watch(self.key, { start_revision = self.ctx.watch_from })
  while true do
    local left = deadline() - task.now()
    if left <= 0 then return end
    local evs, err, code = w:next(left)
    local t = task.now()
    if evs then
      for _, ev in ipairs(evs) do
        if ev.key == self.key and ev.mod_revision >= self.ctx.watch_from then
          clock:add(t, ev.mod_revision)
          self.ctx.watch_from = ev.mod_revision + 1
          self.log.debug { event = "sentinel_write_seen", revision = ev.mod_revision }
        end
      end
    elseif code ~= "timeout" then
      self.ctx.clock_broken = ("watching clusterdata failed: %s"):format(tostring(err))
      self.log.warn { event = "align_watch_failed", error = tostring(err), code = tostring(code) }
      w:close()
      left = deadline() - task.now()
      if left > 0 then task.sleep(left) end
      return
    end
  end
end

-- write_lead() -> seconds from the failkeeper write started to forceFail in etcd:
-- 1.25 x the shorten_sleep_interval compare-and-swap (the same get and txn; the txn
-- applies before its answer comes back, so this errs early) + 1 ms, or 100 ms for
-- --stolonctl, a process to start.
function M:write_lead()
  if self.opts.stolonctl ~= "" then return 0.1 end
  return 1.25 * (self.ctx.store_cas_seconds or 0.01) + 0.001
end

-- pause_lead() -> seconds from the first PAUSE sent to forceFail in etcd: 1.5 x the
-- sum over the pause rounds (the extra pausers first, then the keepers') of each
-- round's slowest health check (HTTP, the pauser, PgBouncer's admin console), + 10 ms
-- once for PgBouncer to drain the transactions in flight (with a front PgBouncer
-- paused first, what passes through it has drained before the keepers' round), at
-- least 20 ms; then failkeeper's write
-- (write_lead: its compare-and-swap reads the master too; with --stolonctl a read of
-- the master comes first, the compare-and-swap's length again). What PAUSE
-- takes less than this costs no reaction time (failkeeper waits for its moment:
-- wait_for_write_moment) but stalls the clients. It stays generous: with 1 x + 5 ms a
-- PAUSE of 154 ms on a loaded VM overran its 88 ms lead, forceFail landed inside the
-- sentinel's check and the reaction took a whole period (1.2 s) more, where the lead's
-- slack costs some 40 ms (bench/failover.lua, 2026-12-02, 1 of 5 runs at 1s).
function M:pause_lead()
  local h = self.ctx.health_slowest or {}
  local lead = math.max(0.02, 1.5 * ((h.keeper or 0) + (h.extra or 0)) + 0.01)
  -- --stolonctl: failkeeper reads the master before its moment (a round trip more)
  if self.opts.stolonctl ~= "" then lead = lead + (self.ctx.store_cas_seconds or 0.01) end
  return lead + self:write_lead()
end

-- wait_for_write_moment(): with a plan (align_to_sentinel), sleep until the
-- failkeeper write, started now, puts forceFail in etcd a margin before the predicted
-- read: the PAUSE's own time varies by tens of milliseconds, and every one it comes in
-- under its lead would otherwise be spent by the sentinel's read, after the write, as
-- the clients' stall. Records the wait in ctx.align.write_wait; a moment already past
-- writes at once. Task only; yields.
function M:wait_for_write_moment()
  local a = self.ctx.align
  if not (a and a.aligned and a.predicted_read) then return end
  local at = a.predicted_read - a.margin - self:write_lead()
  local wait = at - task.now()
  a.write_wait = math.max(0, wait)
  if wait > 0 then task.sleep(wait) end
end

-- align_to_sentinel: wait until the moment whose PAUSE, then failkeeper, put
-- forceFail in etcd a margin before the sentinel's next read (sentinel_clock's plan,
-- re-made after every write seen). Learns for up to 6 intervals + 1 s more if the
-- wait in shorten_sleep_interval did not suffice (it is before any PAUSE: clients do
-- not see it), or 3 intervals + 0.5 s after the last write seen, whichever is
-- sooner (a sentinel that stopped writing will not teach us its tick); when the
-- period cannot be learned it logs why and goes on at once, as without alignment.
-- Never fails the failover. The pause step calls it first, so that a site's step
-- inserted before "pause" runs before the moment is chosen, not after.
function M:align_to_sentinel()
  local c = self.ctx
  if self.patroni then return true end -- Patroni acts on the request at once: no tick to meet
  if not c.clock then
    c.align = { aligned = false, reason = self.opts.align_to_sentinel
      and "shorten_sleep_interval did not run: the sentinel's writes were not watched" or "--no-align-to-sentinel" }
    return true
  end
  local lead = self:pause_lead()
  local S = self.opts.failover_sleep_interval
  local t0 = task.now()
  local learn_until = t0 + 6 * S + 1
  local plan, why
  self:observe(function()
    local now = task.now()
    if plan and now >= plan.start then return plan.start end -- the moment came: keep its plan
    plan, why = c.clock:plan(now, lead)
    if plan then return plan.start end
    if c.clock_broken then return 0 end
    local last = c.clock.arrivals[#c.clock.arrivals] or t0
    return math.min(learn_until, math.max(last, t0) + 3 * S + 0.5)
  end)
  if not plan then
    why = c.clock_broken or why
    c.align = { aligned = false, reason = why, waited = task.now() - t0 }
    self.log.warn { event = "align_to_sentinel_fallback", reason = why,
      msg = "could not learn the sentinel's tick; pausing now, as without --align-to-sentinel" }
    return true
  end
  -- the newest writes seen (arrival times), for the report: what the plan rests on
  local arr = c.clock.arrivals
  c.align = { aligned = true, period = plan.period, spread = plan.spread, margin = plan.margin, lead = lead,
    write_lead = self:write_lead(), health_slowest = c.health_slowest,
    planned_start = plan.start, predicted_read = plan.read, k = plan.k, waited = task.now() - t0, late = plan.late,
    arrivals = table.move(arr, math.max(1, #arr - 5), #arr, 1, {}) }
  self.log.info { event = "align_to_sentinel", period = ("%.4f"):format(plan.period),
    spread = ("%.4f"):format(plan.spread), lead = ("%.4f"):format(lead), margin = ("%.4f"):format(plan.margin),
    read_in = ("%.4f"):format(plan.read - task.now()), waited = ("%.4f"):format(task.now() - t0),
    late_write = plan.late and ("%.4f"):format(plan.late) or nil,
    msg = "pausing so that forceFail lands just before the sentinel's next read" }
  return true
end

function M:restore_sleep_interval()
  local original, short = self.ctx.original_sleep_interval, self.ctx.short_sleep_interval
  if not original then return true end
  local rev, err = self:cas("restore_sleep_interval", function(raw)
    local cd, derr = stolon.decode(raw, self.key)
    if not cd then return nil, derr end
    if cd:sleep_interval() == original then return raw end -- our write never applied
    if cd:sleep_interval() ~= short then
      -- someone changed it meanwhile: theirs wins
      self.log.warn { event = "sleep_interval_changed", found = cd:sleep_interval(), msg = "not restoring" }
      return raw
    end
    return stolon.with_sleep_interval(raw, original)
  end)
  if not rev then return nil, err end
  self.log.info { event = "restore_sleep_interval", interval = original }
  return true
end

-- Extra pausers (--extra-pauser: PgBouncers in front of the node ones, e.g. on proxy
-- nodes) are paused first and resumed last: a front PgBouncer left running while the
-- ones behind it are paused would start server logins that the pause interrupts, and
-- PgBouncer then rejects clients for server_login_retry after RESUME (pgbouncer#420).
--
-- The pause lease is taken before the wait for the sentinel's moment: its two etcd
-- writes then lie outside the lead that the moment is planned with (it is kept alive
-- meanwhile, and losing it cancels the failover as it would during the pause).
function M:pause()
  local o = self.opts
  local tie, terr = self:take_pause_lease()
  if terr then return nil, terr end
  self:align_to_sentinel()
  self.log.info { event = "pgbouncer_pause", msg = "requesting all pgbouncers pause" }
  self.ctx.paused_at = task.now()
  -- Patroni: the switchover step's re-check of the leader and the candidate reads
  -- the DCS while the PAUSEs are out, so that read is not on the pause window's path
  if self.patroni then self.ctx.view_read = task.observed(function() return self:read_view() end) end
  local function pause(c) return c:pause(o.pause_timeout, o.pause_expiry, o.pause_timeout + 2, tie) end
  local res, err = self:each("pgbouncer_pause", pause, "extra")
  if res then res, err = self:each("pgbouncer_pause", pause, "keeper") end
  self.ctx.pause_done_at = task.now()
  if not res then return nil, "failed to pause pgbouncers: " .. err end
  return true
end

-- take_pause_lease() -> the fields every PAUSE carries | nil (--pause-lease-ttl 0) |
-- nil, err. The lease (lua/pause_lease.lua) outlives a cancel of this task; losing
-- it while the failover runs cancels the failover with the reason, so its undos run
-- (resume, restore, release) and the summary says why. From `resume` on a loss
-- changes nothing: the pausers are being resumed anyway.
function M:take_pause_lease()
  local ttl = self.opts.pause_lease_ttl
  if not ttl or ttl <= 0 then return nil end
  local victim = task.current()
  local h, err = pause_lease.take { client = self.client, prefix = common.pause_prefix(self.opts), ttl = ttl,
    on_lost = function(why)
      if self.ctx.resuming then return end
      self.ctx.cancel_reason = "pause lease lost (" .. why .. "): the pausers resume by themselves"
      victim:cancel()
    end }
  if not h then return nil, "failed to take the pause lease: " .. tostring(err) end
  self.ctx.pause_lease = h
  return h:body()
end

-- Each of the two rounds gets at most half the cleanup timeout, so a keeper that does
-- not answer cannot use up the defer's time before the front ones are sent theirs.
-- The pause lease is revoked last: a pauser whose RESUME failed but that reaches etcd
-- resumes when its key goes.
function M:resume()
  self.log.info { event = "pgbouncer_resume", msg = "requesting all pgbouncers resume" }
  self.ctx.resuming = true
  local each = math.min(self.opts.resume_timeout, math.max(0.5, (self.opts.cleanup_timeout - 0.5) / 2))
  local function resume(c) return c:resume(each) end
  local res, err = self:each("pgbouncer_resume", resume, "keeper")
  -- the front ones last, even when a keeper's resume failed (it expires by itself)
  local res2, err2 = self:each("pgbouncer_resume", resume, "extra")
  if not res2 then res, err = nil, err and (err .. "; " .. err2) or err2 end
  local lease = self.ctx.pause_lease
  if lease then
    local ok, lerr = lease:release()
    if not ok then
      self.log.warn { event = "pause_lease_revoke_failed", error = tostring(lerr), msg = "its key ends with the TTL" }
    end
  end
  self.ctx.resumed_at = task.now()
  if self.ctx.paused_at then
    self.log.info { event = "pgbouncer_resumed", duration = ("%.4f"):format(self.ctx.resumed_at - self.ctx.paused_at),
      msg = "resumed all PgBouncers after duration seconds" }
  end
  if not res then return nil, "failed to resume pgbouncers: " .. err end
  return true
end

-- With a plan from align_to_sentinel, the master is read first and the write waits
-- for its moment (wait_for_write_moment).
function M:failkeeper()
  local o = self.opts
  if o.stolonctl ~= "" then
    local cd, err = common.read_clusterdata(self.client, self.key)
    if not cd then return nil, err end
    local master, merr = stolon.master_keeper(cd)
    if not master then return nil, merr end
    self.ctx.old_master, self.ctx.failkeeper_cd = master, cd
    self:wait_for_write_moment()
    local code, out, serr = proc.run {
      o.stolonctl, "failkeeper", master.keeper,
      "--cluster-name", o.cluster_name, "--store-backend", o.store_backend,
      "--store-prefix", o.store_prefix, "--store-endpoints", table.concat(o.store_endpoints, ","),
      timeout = o.stolonctl_timeout,
    }
    if code ~= 0 then
      return nil, ("failed to run stolonctl failkeeper: %s %s %s"):format(tostring(code), out or "", serr or "")
    end
  else
    -- the master is read in the compare-and-swap's own read: one store round trip
    -- between the moment and forceFail in etcd, so the PAUSE's lead holds no other
    self:wait_for_write_moment()
    local rev, cerr = stolon.request_switch(nil, nil, {
      key = self.key,
      cas = function(what, edit) return self:cas(what, edit) end,
      on_master = function(master, cd) self.ctx.old_master, self.ctx.failkeeper_cd = master, cd end,
    })
    if not rev then return nil, cerr end
    self.ctx.failkeeper_rev = rev
  end
  local master = self.ctx.old_master
  -- the sentinel promotes one of the master's sync standbys: with exactly one, that
  -- is the new master, and the write probe's connection is opened while it switches
  local sync = {}
  for _, sb in ipairs(stolon.sync_standbys(self.ctx.failkeeper_cd)) do
    if sb.healthy and sb.host then sync[#sync + 1] = sb end
  end
  if #sync == 1 then self:preconnect_write_probe(sync[1]) end
  self.ctx.failkeeper_at = task.now()
  local a = self.ctx.align
  local before_read = a and a.predicted_read and (a.predicted_read - self.ctx.failkeeper_at)
  self.log.info { event = "failkeeper", keeper = master.keeper, msg = "marked the master keeper failed",
    before_predicted_read = before_read and ("%.4f"):format(before_read) or nil,
    waited = a and a.write_wait and ("%.4f"):format(a.write_wait) or nil,
    attempts = self.ctx.cas_attempts and self.ctx.cas_attempts.failkeeper }
  if before_read and before_read < 0 then
    self.log.warn { event = "align_moment_missed", late = ("%.4f"):format(-before_read),
      msg = "PAUSE took longer than planned: forceFail written after the sentinel's predicted read" }
  end
  return true
end

-- Remaining time before the pausers resume by themselves.
function M:remaining()
  local started = self.ctx.paused_at or task.now()
  return self.opts.pause_expiry - (task.now() - started) - 0.5
end

-- switchover (Patroni): ask the leader's REST API for the switch to the candidate
-- the pre-flight chose, re-checked on what the DCS holds now. The POST runs in a
-- task of its own: Patroni answers only once it sees the switch or gives up (503
-- "status unknown" while demotion is slow), so wait_for_recovery watches the DCS
-- meanwhile and trusts it, not the reply. A refusal (4xx) cancels the failover
-- with Patroni's words, and its undos run.
function M:switchover()
  local view, err
  local pending = self.ctx.view_read
  self.ctx.view_read = nil
  if pending then
    local r = table.pack(pending:wait())
    if r[1] then view, err = r[2], r[3] else err = r[2] end
  else
    view, err = self:read_view()
  end
  if not view then return nil, err end
  local old = patroni.primary(view)
  if not old or old.name ~= self.ctx.old_master.name then
    return nil, "the leader changed since the pre-flight: " .. patroni.describe(old)
  end
  local cand, why = patroni.can_lose_primary(view, self.ctx.candidate.name)
  if not cand then return nil, why end
  self.ctx.old_master, self.ctx.candidate = old, cand
  local victim = task.current()
  local o = self.opts
  self.ctx.failkeeper_at = task.now()
  self.ctx.switch_request = task.named("switchover_request", function()
    local status, body, code = patroni.request_switch(old, cand, {
      timeout = o.switchover_timeout, ca_file = o.patroni_ca_file ~= "" and o.patroni_ca_file or nil,
      auth = self.patroni_auth })
    self.ctx.switch_reply = { status = status, body = body, code = code, at = task.now() }
    local short = type(body) == "string" and body:sub(1, 200) or nil
    self.log.info { event = "switchover_reply", status = tostring(status), body = short,
      after = ("%.4f"):format(task.now() - self.ctx.failkeeper_at) }
    if patroni.switch_refused(status, code) and not self.ctx.new_master and not self.ctx.resuming then
      self.ctx.cancel_reason = status and ("Patroni refused the switchover: HTTP %d %s"):format(status, short or "")
        or ("the switchover request did not reach Patroni: " .. tostring(body))
      victim:cancel()
    end
  end)
  self.log.info { event = "switchover_requested", leader = old.name, candidate = cand.name, api = old.api_url }
  self:preconnect_write_probe(cand)
  return true
end

-- wait_for_switch (Patroni): follow the scope's keys until the leader key names
-- another member and that member runs as master/primary.
function M:wait_for_switch()
  local old = self.ctx.old_master
  local logger = log.with { component = "failover", key = self.key }
  logger.info { msg = "waiting for Patroni to report the new leader" }
  local left = self:remaining()
  if left <= 0 then return nil, "no time left before the pause expires" end
  local found
  local r = table.pack(task.timeout(left, function()
    return common.follow_prefix(self.client, self.key, { poll_interval = 1 }, function(snap)
      local view, err = patroni.decode(snap.kvs, self.key)
      if not view then
        logger.error { error = err, msg = "failed to parse Patroni's keys" }
        return false
      end
      if not self.ctx.reacted_at and view.leader ~= old.name then
        self.ctx.reacted_at, self.ctx.reaction = task.now(), view.leader and "leader_changed" or "no_leader"
        logger.info { event = "manager_reacted", how = self.ctx.reaction, revision = snap.mod_revision,
          after = ("%.4f"):format(self.ctx.reacted_at - self.ctx.failkeeper_at) }
      end
      local m, state, detail = patroni.switch_finished(view, old)
      if m then
        found = m
        return true
      end
      logger.info { event = state, leader = tostring(view.leader), detail = detail }
      return false
    end)
  end))
  if not found then
    return nil, r[1] == nil and "timed out waiting for the new leader" or "leader watch ended"
  end
  self.ctx.new_master = found
  self.ctx.recovered_at = task.now()
  logger.info { master = patroni.describe(found), msg = "new leader is running as primary" }
  return true
end

function M:wait_for_recovery()
  if self.patroni then return self:wait_for_switch() end
  local old = self.ctx.old_master
  local logger = log.with { component = "failover", key = self.key }
  logger.info { msg = "waiting for stolon to report master change" }
  local found
  local left = self:remaining()
  if left <= 0 then return nil, "no time left before the pause expires" end
  local r = table.pack(task.timeout(left, function()
    return common.follow(self.client, self.key, { poll_interval = 1 }, function(kv)
      local cd, err = stolon.decode(kv.value, self.key)
      if not cd then
        logger.error { error = err, msg = "failed to parse clusterdata update" }
        return false
      end
      if not self.ctx.reacted_at and kv.mod_revision > (self.ctx.failkeeper_rev or 0) then
        local how = cd:switch_began(old)
        if how then
          self.ctx.reacted_at, self.ctx.reaction = task.now(), how
          logger.info { event = "manager_reacted", how = how, revision = kv.mod_revision,
            after = ("%.4f"):format(self.ctx.reacted_at - self.ctx.failkeeper_at) }
        end
      end
      local m, state, detail = cd:recovered(old.keeper)
      if m then
        found = m
        return true
      end
      logger.info { event = state, master = stolon.describe(cd:master()), detail = detail }
      return false
    end)
  end))
  if not found then
    return nil, r[1] == nil and "timed out waiting for successful recovery" or "recovery watch ended"
  end
  self.ctx.new_master = found
  self.ctx.recovered_at = task.now()
  logger.info { master = stolon.describe(found), msg = "master is available for writes" }
  return true
end

-- probe_conninfo(m) -> the --write-probe conninfo for member m | nil (no probe) | nil, err
function M:probe_conninfo(m)
  local tmpl_text = self.opts.write_probe
  if tmpl_text == "" then return nil end
  local template = require "template"
  local t, terr = template.compile(tmpl_text, "--write-probe")
  if not t then return nil, terr end
  return t:render { Host = m.host, Port = m.port or "5432" }
end

-- preconnect_write_probe(m): the new master is known before it is promoted (Patroni:
-- we chose the candidate; stolon: the master's only sync standby), so the probe's
-- connection is opened while the manager switches, in a task of its own; a session on a
-- hot standby can write once the standby is promoted, so write_probe then skips the
-- connection set-up inside the pause window. Anything wrong here only loses the
-- head start: write_probe falls back to connecting itself.
function M:preconnect_write_probe(m)
  local conninfo = self:probe_conninfo(m)
  if not conninfo then return end
  local pg = require "pg"
  local ctx = self.ctx
  ctx.probe_preconnect = task.named("write_probe_connect", function()
    local conn = pg.connect(conninfo, { timeout = 2 })
    if not conn then return end
    if ctx.probe_done then
      conn:close()
      return
    end
    ctx.probe_conn = { conn = conn, host = m.host, port = m.port }
  end)
end

-- drop_probe_connection(): close a pre-opened probe connection nobody used.
function M:drop_probe_connection()
  local ctx = self.ctx
  ctx.probe_done = true
  if ctx.probe_preconnect then ctx.probe_preconnect:cancel() end
  if ctx.probe_conn then
    ctx.probe_conn.conn:close()
    ctx.probe_conn = nil
  end
end

-- probe_once(conn, m, how) -> true | nil, err: the write (an xid) on the new master;
-- how ("preconnected" or "connected") goes to the log
function M:probe_once(conn, m, how)
  local rows, qerr = conn:query("SELECT txid_current() AS xid, pg_is_in_recovery() AS recovery")
  conn:close()
  if rows and rows[1] and rows[1].recovery == "f" then
    self.log.info { event = "write_probe", host = m.host, xid = rows[1].xid, connection = how }
    return true
  end
  return nil, qerr or "new master still in recovery"
end

function M:write_probe()
  local m = self.ctx.new_master
  local conninfo, rerr = self:probe_conninfo(m)
  if not conninfo then
    if rerr then return nil, rerr end
    return true
  end
  -- take the pre-opened connection and stop its task (it may still be connecting)
  local pre = self.ctx.probe_conn
  self.ctx.probe_conn = nil
  self:drop_probe_connection()
  if pre and pre.host == m.host and pre.port == m.port then
    -- probe_once closes the connection, whatever the answer
    if self:probe_once(pre.conn, m, "preconnected") then return true end
  elseif pre then
    pre.conn:close()
  end
  local pg = require "pg"
  local deadline = task.now() + math.max(0.5, self:remaining())
  local last
  repeat
    local conn, cerr = pg.connect(conninfo, { timeout = 2 })
    if conn then
      local ok, perr = self:probe_once(conn, m, "connected")
      if ok then return true end
      last = perr
    else
      last = cerr
    end
    task.sleep(0.05)
  until task.now() > deadline
  return nil, "write probe on the new master failed: " .. tostring(last)
end

-- ---- the pipeline and the run ------------------------------------------------------

-- new_pipeline() -> an empty pipeline for this failover (its cleanup timeout, the
-- live display on a terminal, its logger); the policy adds the steps.
function M:new_pipeline()
  return pipeline.new { cleanup_timeout = self.opts.cleanup_timeout, on_event = M.display(), logger = self.log }
end

-- step(name) -> a function running the step method `name` on this failover, for
-- p:step(name, f:step(name)) and :defer(name, f:step(name)).
function M:step(name)
  local method = self[name]
  assert(type(method) == "function", "failover: no step " .. tostring(name))
  return function() return method(self) end
end

-- display(): live progress on a terminal (stdout), nothing otherwise.
function M.display()
  if not fs.isatty(1) then return nil end
  return function(ev)
    if ev.phase == "start" then
      io.stdout:write(("  … %-24s"):format(ev.name))
    else
      io.stdout:write(("\r  %s %-24s %8.1f ms%s\n"):format(ev.ok and "✓" or "✗", ev.name, ev.duration * 1000,
        ev.error and ("  " .. ev.error) or ""))
    end
    io.stdout:flush()
  end
end

-- summary(p) -> table of figures; also printed and logged.
function M:summary(p, ok, err)
  local c = self.ctx
  local s = {
    ok = ok and true or false,
    error = err,
    total_seconds = p.report.total,
    pause_window_seconds = c.paused_at and c.resumed_at and (c.resumed_at - c.paused_at) or nil,
    manager_seconds = c.failkeeper_at and c.recovered_at and (c.recovered_at - c.failkeeper_at) or nil,
    old_master = c.old_master and self.model.describe(c.old_master) or nil,
    new_master = c.new_master and self.model.describe(c.new_master) or nil,
    new_master_host = c.new_master and c.new_master.host or nil,
    steps = p.report.steps,
    paused_at = c.paused_at, pause_done_at = c.pause_done_at, resumed_at = c.resumed_at,
    failkeeper_at = c.failkeeper_at, recovered_at = c.recovered_at,
    reacted_at = c.reacted_at, reaction = c.reaction,
    reaction_wait_seconds = c.failkeeper_at and c.reacted_at and (c.reacted_at - c.failkeeper_at) or nil,
    -- > 1: the clusterdata changed between failkeeper's read and its write (when
    -- aligned: the sentinel's check came before the moment chosen for it)
    failkeeper_attempts = c.cas_attempts and c.cas_attempts.failkeeper or nil,
    align = c.align,
  }
  if s.pause_window_seconds and s.manager_seconds then
    s.ours_seconds = s.pause_window_seconds - s.manager_seconds
  end
  local a = c.align
  if a and a.period then s.sentinel_check_seconds = math.max(0, a.period - self.opts.failover_sleep_interval) end
  local function ms(v) return v and ("%.1f ms"):format(v * 1000) or "-" end
  local lines = { "", ok and "failover succeeded" or ("failover FAILED: " .. tostring(err)) }
  for _, st in ipairs(p.report.steps) do
    lines[#lines + 1] = ("  %-7s %-24s %10s  %s%s"):format(st.kind, st.name, ms(st.duration), st.status,
      st.error and ("  " .. st.error) or "")
  end
  lines[#lines + 1] = ("  total %s; pause window %s (cluster manager %s, ours %s)"):format(ms(s.total_seconds),
    ms(s.pause_window_seconds), ms(s.manager_seconds), ms(s.ours_seconds))
  if a then
    lines[#lines + 1] = ("  forceFail -> manager's first reaction %s%s%s; %s"):format(ms(s.reaction_wait_seconds),
      s.reaction and (" (" .. s.reaction .. ")") or "",
      s.sentinel_check_seconds and (", of it the sentinel's own check ~" .. ms(s.sentinel_check_seconds)) or "",
      a.aligned and ("aligned to the sentinel's %s period"):format(ms(a.period)) or ("not aligned: " .. a.reason))
  end
  lines[#lines + 1] = ("  old master %s -> new master %s"):format(s.old_master or "-", s.new_master or "-")
  io.stdout:write(table.concat(lines, "\n") .. "\n")
  io.stdout:flush()
  self.log.info { event = "failover_summary", ok = s.ok, error = err, total = ("%.4f"):format(s.total_seconds or 0),
    pause_window = s.pause_window_seconds and ("%.4f"):format(s.pause_window_seconds) or nil,
    manager = s.manager_seconds and ("%.4f"):format(s.manager_seconds) or nil,
    reaction_wait = s.reaction_wait_seconds and ("%.4f"):format(s.reaction_wait_seconds) or nil,
    aligned = a and a.aligned or nil, align_reason = a and a.reason or nil,
    old_master = s.old_master, new_master = s.new_master }
  if self.opts.report_file ~= "" then
    local _, werr = fs.write_atomic(self.opts.report_file, common.json(s) .. "\n", "0644")
    if werr then self.log.error { event = "report_file_failed", error = werr } end
  end
  return s
end

-- plan(): what a run would do, for --dry-run.
function M:plan(p)
  local lines = { ("failover plan for %s (%d pausers):"):format(self.key, #self.pausers) }
  for i, s in ipairs(p.steps) do
    lines[#lines + 1] = ("  %d. %s%s"):format(i, s.name, s.defer and ("  (undo: " .. s.defer.name .. ")") or "")
  end
  for _, c in ipairs(self.pausers) do lines[#lines + 1] = "  pauser " .. c.name .. " at " .. c.base end
  local m = self.model.primary(self.initial)
  lines[#lines + 1] = "  current master: " .. self.model.describe(m)
  return table.concat(lines, "\n") .. "\n"
end

-- run(p) -> exit status. Runs p in its own task; INT/TERM/QUIT cancel it (its
-- defers still run: resume, restore, unlock). Clean-up is never cut short by a
-- signal: a second one is logged and changes nothing, so every RESUME is sent (each
-- defer is bounded by --cleanup-timeout; SIGKILL leaves the pauses to expire).
function M:run(p)
  local o = self.opts
  if o.health_check_only or o.dry_run then
    if o.dry_run then io.stdout:write(self:plan(p)) end
    local ok, err = self:check_cluster_healthy()
    if ok then ok, err = self:health_check_clients() end
    if not ok then
      self.log.error { error = tostring(err), msg = "exiting with error" }
      return 1
    end
    self.log.info { event = "checks_passed", msg = o.dry_run and "dry run: nothing changed" or "all clients healthy" }
    return 0
  end
  local h = task.named("failover", function() return p:run(self.ctx) end)
  local signals = {}
  for _, sig in ipairs { "INT", "TERM", "QUIT" } do
    signals[#signals + 1] = task.on_signal(sig, function(name)
      if self.ctx.interrupted then
        -- Exiting now would skip RESUMEs and leave PgBouncers paused until their
        -- expiry: clean-up goes on, each undo bounded by --cleanup-timeout.
        self.log.warn { event = "second_signal", signal = name, cleanup_timeout = o.cleanup_timeout,
          msg = "clean-up is running and is not interrupted; each undo is bounded by the cleanup timeout" }
        return
      end
      self.ctx.interrupted = name
      self.log.warn { event = "interrupted", signal = name, msg = "cancelling the failover; clean-up runs" }
      h:cancel()
    end)
  end
  local _, ok, err = h:wait()
  for _, s in ipairs(signals) do s:stop() end
  -- Patroni's reply to a switchover that is over changes nothing: stop waiting for it
  if self.ctx.switch_request then self.ctx.switch_request:cancel() end
  if self.ctx.view_read then self.ctx.view_read:cancel() end
  self:drop_probe_connection()
  self:summary(p, ok, err)
  if not ok then
    self.log.error { error = tostring(err), msg = "exiting with error" }
    return 1
  end
  return 0
end

return M
