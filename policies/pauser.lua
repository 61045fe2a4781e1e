-- pauser: the HTTP API that health-checks, PAUSEs and RESUMEs the node-local
-- PgBouncer for a failover.
--
--   GET  /health   200 {"status":"healthy",...} | 503 {"status":"unhealthy","components":[...]}
--   POST /pause    {"timeout": s, "expiry": s [, "lease_key": k, "lease": hex]} -> 200
--                  {"created_at","expires_at"} | 504 (not paused in time) | 500: after a
--                  failure PgBouncer is left resumed | 400 (a lease_key outside
--                  <clusterdata key>/pause/)
--   POST /resume   -> 200 {"created_at"}
--
-- Every pause carries an expiry: the pauser RESUMEs by itself when it passes. An
-- explicit RESUME clears it and a newer PAUSE replaces it; the expiry is checked
-- while holding the admin lock, so an older pause's expiry never resumes a newer one.
-- A RESUME it owes and that fails is tried again until one succeeds.
-- At start-up it RESUMEs, in case an earlier process died mid-pause; on TERM/INT/QUIT
-- it RESUMEs whenever a PAUSE may have reached PgBouncer (held, or still in flight),
-- since nobody would be left to honour the expiry.
--
-- A pause tied to a lease (`lease_key`, with store access: --cluster-name and the
-- store flags) also ends when that key is gone: the failover that holds the lease
-- died, so the pauser RESUMEs within the lease's TTL instead of at the expiry. One
-- detached task per tied pause reads the key, then watches it, re-reading every
-- second: a DELETE event or an absent key resumes (if that pause still holds); etcd
-- unreachable keeps the pause until the expiry (a dead failover and a partition look
-- the same from here), logged and shown in /health's "lease". A pauser without store
-- access keeps such a pause until the expiry, as before. With a token, every call needs
-- `Authorization: <token>` (or `Bearer <token>`), compared in constant time.
local common = require "common"
local json_null = require("cjson.safe").null
local flags = require "flags"
local http = require "http"
local log = require "log"
local secure = require "secure"
local task = require "task"

local spec = common.spec(common.global_flags, common.stolon_flags, common.manager_flags, common.pgbouncer_flags,
  common.token_flags, {
  { name = "bind-address", default = ":8080", help = "Listen address for the pauser API (host:port)" },
  { name = "tls-cert-file", default = "", help = "Serve HTTPS with this certificate" },
  { name = "tls-key-file", default = "", help = "Private key for --tls-cert-file" },
  { name = "pgbouncer-timeout", type = "duration", default = "5s", help = "Timeout for PgBouncer admin commands" },
  { name = "insecure-no-token", type = "bool",
    help = "Allow listening on a non-loopback address without a token" },
})

local opts = flags.parse_or_exit(spec, arg, { command = "pauser", description = "Serve the PgBouncer pause API" })
common.setup_logging(opts)
local L = log.with { component = "pauser.api" }
local m = common.metrics()

local token, terr = common.token(opts)
if not token then
  L.error { event = "token_invalid", error = terr }
  return 1
end

local host, port = opts.bind_address:match("^%[?([^%]]*)%]?:(%d+)$")
if not host then
  L.error { event = "bind_address_invalid", error = ("--bind-address %q: expected host:port"):format(opts.bind_address) }
  return 1
end
if host == "" then host = "0.0.0.0" end
local loopback = host:match("^127%.") or host == "::1" or host == "localhost"
if not loopback and token == "" and not opts.insecure_no_token then
  L.error { event = "refusing_to_start",
    error = ("listening on %s without a token would let anyone on the network pause PgBouncer; "
      .. "set --token-file or $STBOUNCER_FAILOVER_TOKEN, or pass --insecure-no-token"):format(host) }
  return 1
end

-- Store access is optional: with a cluster name (or, with --manager patroni, the
-- scope) the pauser can watch the lease keys of the failovers that pause it, under
-- common.pause_prefix only.
local store, lease_prefix
if common.has_store_target(opts) then
  local serr
  store, serr = common.connect_store(opts)
  if not store then
    L.error { event = "store_invalid", error = tostring(serr) }
    return 1
  end
  lease_prefix = common.pause_prefix(opts)
end

local admin = common.pgbouncer_admin(opts, opts.pgbouncer_timeout)
local lock = task.mutex()
-- expires_at: when the pauser owes PgBouncer a RESUME (wall clock: a pause's expiry,
-- or now after a RESUME that failed), for `reason`; nil when it owes none.
-- pause_sent: a PAUSE may have reached PgBouncer since the last RESUME that
-- succeeded; set before sending it, so a cancel at any point after leaves it set.
-- tie: the lease the pause holding now is tied to ({key=, lease=, state=, error=,
-- since=, task=}), nil when none: state is "watching" (the key is there),
-- "unreachable" (etcd did not answer: kept until the expiry), "no_store" (this
-- pauser cannot watch it: kept until the expiry) or "gone" (being resumed).
-- Only read and written under `lock`; `changed` wakes the expirer.
local pause_state = { expires_at = nil, reason = nil, pause_sent = false, changed = task.event(), tie = nil }

local function iso(t)
  local whole = math.floor(t)
  return os.date("!%Y-%m-%dT%H:%M:%S", whole) .. ("%.6fZ"):format(t - whole):sub(2)
end

local function wall()
  -- wall clock with sub-second precision: monotonic offset from os.time at start
  return pause_state.wall0 + (task.now() - pause_state.mono0)
end
pause_state.wall0, pause_state.mono0 = os.time(), task.now()

-- owe_resume(at, reason): the pauser RESUMEs at `at`, and from then on tries again
-- until a RESUME succeeds. Under `lock`.
local function owe_resume(at, reason)
  pause_state.expires_at, pause_state.reason, pause_state.pause_sent = at, reason, true
  pause_state.changed:set()
end

-- untie(): the pause no longer follows its lease: stop watching. Under `lock`.
local function untie()
  local tie = pause_state.tie
  pause_state.tie = nil
  if tie and tie.task and not tie.finishing then tie.task:cancel() end
end

-- resume(reason [, via=admin]) -> ok | nil, err: RESUME through `via`. Only a RESUME
-- that succeeded settles what the pauser owes; after a failure the expirer retries.
local function resume(reason, via)
  local ok, err = (via or admin):resume()
  if ok then
    pause_state.expires_at, pause_state.pause_sent = nil, false
    untie()
    m.paused:set(0)
  end
  L.info { event = "resume", reason = reason, ok = ok and true or false, error = err and tostring(err) or nil }
  return ok, err
end

-- resume_if_due() -> true when nothing is owed now | resume's results. Under `lock`.
local function resume_if_due()
  local due = pause_state.expires_at
  if not due or due > wall() then return true end
  return resume(pause_state.reason)
end

-- set_tie_state(tie, state [, err]): record what the watch knows, logging changes.
local function set_tie_state(tie, state, err)
  if tie.state == state then
    tie.error = err and tostring(err) or nil
    return
  end
  local was = tie.state
  tie.state, tie.error, tie.since = state, err and tostring(err) or nil, wall()
  if state == "unreachable" then
    L.warn { event = "pause_lease_unreachable", key = tie.key, lease = tie.lease, error = tostring(err),
      expires_at = pause_state.expires_at and iso(pause_state.expires_at) or nil,
      msg = "etcd does not answer: a dead failover and a partition look the same, keeping the pause until its expiry" }
  elseif state == "watching" and was == "unreachable" then
    L.info { event = "pause_lease_reachable", key = tie.key, lease = tie.lease, msg = "etcd answers again" }
  elseif state == "watching" then
    L.info { event = "pause_lease_watch", key = tie.key, lease = tie.lease,
      msg = "the pause ends when this key is gone (its failover died) or at the expiry" }
  end
end

-- lease_gone(tie, how): the key is gone: RESUME if this pause still holds (a newer
-- pause or a RESUME may have taken over meanwhile). A RESUME that fails is owed.
local function lease_gone(tie, how)
  tie.finishing = true
  lock:with(function()
    if pause_state.tie ~= tie then return end
    set_tie_state(tie, "gone")
    L.warn { event = "pause_lease_gone", key = tie.key, lease = tie.lease, how = how,
      msg = "the failover that paused is gone: resuming before the expiry" }
    if not resume("lease_gone") then owe_resume(wall(), "lease_gone") end
  end)
end

-- follow_tie(tie): read the key, watch it from the revision read, re-read every
-- second (the re-read is what tells an unreachable etcd from a quiet one). Returns
-- once the key is gone; runs until cancelled (untie) otherwise. A detached task:
-- it outlives the /pause request that started it.
local function follow_tie(tie)
  local w
  local _ <close> = setmetatable({}, { __close = function() if w then w:close() end end })
  while true do
    local res, err = store:get(tie.key)
    if not res then
      if w then w:close(); w = nil end
      set_tie_state(tie, "unreachable", err)
      task.sleep(1)
    elseif not (res.kvs and res.kvs[1]) then
      return lease_gone(tie, "absent")
    else
      set_tie_state(tie, "watching")
      if not w then w = store:watch(tie.key, { start_revision = res.revision + 1 }) end
      local evs, _, code = w:next(1)
      for _, ev in ipairs(evs or {}) do
        if ev.type == "delete" then return lease_gone(tie, "deleted") end
      end
      if not evs and code == "compacted" then w:close(); w = nil end
    end
  end
end

-- tie_to(key, lease): the pause just taken follows key. Under `lock`.
local function tie_to(key, lease)
  local tie = { key = key, lease = lease, since = wall() }
  pause_state.tie = tie
  if not store then
    tie.state = "no_store"
    L.info { event = "pause_lease_unwatched", key = key, lease = lease,
      msg = "no store access (--cluster-name): this pause lasts until its expiry" }
    return
  end
  tie.task = task.detached("pause-lease", follow_tie, tie)
end

-- tie_report() -> what /health says of the lease the current pause follows, or nil.
local function tie_report()
  local tie = pause_state.tie
  if not tie then return nil end
  return { key = tie.key, lease = tie.lease, state = tie.state or "starting", error = tie.error,
    since = iso(tie.since) }
end

local function health()
  -- A RESUME owed since one failed is tried first: PgBouncer may answer now, and
  -- `paused` then reports what holds rather than what the backoff has not retried.
  resume_if_due()
  local rows, err = admin:show("DATABASES")
  if not rows then
    return 503, { status = "unhealthy", components = { { name = "pgbouncer", status = "unhealthy", error = tostring(err) } } }
  end
  local dbs = {}
  for _, r in ipairs(rows) do
    if r.name ~= "pgbouncer" then dbs[#dbs + 1] = { name = r.name, host = r.host, port = r.port, paused = r.paused } end
  end
  local config = {}
  for _, r in ipairs(admin:show("CONFIG") or {}) do
    if r.key == "pool_mode" or r.key == "server_login_retry" then config[r.key] = r.value end
  end
  return 200, {
    status = "healthy",
    components = { { name = "pgbouncer", status = "healthy" } },
    databases = dbs,
    config = config,
    paused = pause_state.expires_at ~= nil,
    store = store ~= nil,
    lease = tie_report(),
  }
end

local function pause(body)
  local timeout = tonumber(body.timeout) or 5
  local expiry = tonumber(body.expiry) or 25
  if timeout <= 0 or expiry <= 0 or timeout > 3600 or expiry > 3600 then
    return 400, { error = "timeout and expiry must be seconds in (0, 3600]" }
  end
  -- JSON null reads as absent, like a field left out
  local key, lease = body.lease_key, body.lease
  if key == json_null then key = nil end
  if lease == json_null then lease = nil end
  if key ~= nil and (type(key) ~= "string" or key == "" or #key > 512) then
    return 400, { error = "lease_key must be a non-empty string" }
  end
  if key and lease_prefix and (key:sub(1, #lease_prefix) ~= lease_prefix or #key == #lease_prefix) then
    return 400, { error = ("lease_key must be under %s"):format(lease_prefix) }
  end
  if lease ~= nil and (type(lease) ~= "string" or not lease:match("^%x+$") or #lease > 16) then
    return 400, { error = "lease must be a lease id in hex" }
  end
  -- A new pause replaces the old one, and with it the lease that one followed.
  untie()
  local created = wall()
  pause_state.pause_sent = true
  local ok, err, code = admin:pause(nil, { timeout = timeout })
  if not ok then
    -- A failed pause leaves PgBouncer resumed, an earlier pause included. After a
    -- timeout the pgbouncer primitive has dropped the waiting PAUSE and resumed, but
    -- a PAUSE whose connection failed stays pending in PgBouncer, and a RESUME that
    -- fails is owed until one succeeds.
    L.error { event = "pause_failed", error = tostring(err), code = tostring(code) }
    if not resume("pause_failed") then owe_resume(wall(), "pause_failed") end
    if code == "timeout" then
      return 504, { error = "exceeded pause timeout: " .. tostring(err) }
    end
    return 500, { error = tostring(err) }
  end
  m.paused:set(1)
  owe_resume(created + expiry, "expiry")
  L.info { event = "paused", expires_at = iso(pause_state.expires_at), timeout = timeout, expiry = expiry,
    lease_key = key }
  if key then tie_to(key, lease) end
  return 200, { created_at = iso(created), expires_at = iso(pause_state.expires_at) }
end

local function authorized(req)
  if token == "" then return true end
  local h = req.headers and req.headers["authorization"] or ""
  local presented = h:match("^[Bb]earer%s+(.+)$") or h
  return secure.equal(presented, token)
end

-- Metric labels and log lines must not grow with what strangers send: the path label
-- is one of the API's own paths or "other", and a rejected request (401, 404: anyone
-- who reaches the port can send one) is logged at debug, with one warning a minute
-- counting them.
local API_PATHS = { ["/health"] = true, ["/pause"] = true, ["/resume"] = true }
local rejected = { count = 0, warned_at = -math.huge }

local function log_request(req, status)
  local fields = { event = "request", method = req.method, path = req.path:sub(1, 128), status = status,
    remote = req.remote }
  if status ~= 401 and status ~= 404 then return L.info(fields) end
  L.debug(fields)
  rejected.count = rejected.count + 1
  if task.now() - rejected.warned_at >= 60 then
    L.warn { event = "requests_rejected", count = rejected.count, last_status = status, last_remote = req.remote,
      msg = "unauthorized or unknown requests since the last warning (each is logged at debug)" }
    rejected.count, rejected.warned_at = 0, task.now()
  end
end

local function handler(req)
  local status, body
  if not authorized(req) then
    status, body = 401, { error = "unauthorized" }
  elseif req.path == "/health" and req.method == "GET" then
    status, body = lock:with(health)
  elseif req.path == "/pause" and req.method == "POST" then
    local args, jerr = http.json(req)
    if type(args) ~= "table" then
      status, body = 400, { error = "invalid JSON body: " .. tostring(jerr or "expected an object") }
    else
      status, body = lock:with(pause, args)
    end
  elseif req.path == "/resume" and req.method == "POST" then
    local created = wall()
    local ok, err = lock:with(resume, "request")
    if ok then
      status, body = 200, { created_at = iso(created) }
    else
      status, body = 500, { error = "failed to resume pgbouncer: " .. tostring(err) }
    end
  elseif API_PATHS[req.path] then
    status, body = 405, { error = "method not allowed" }
  else
    status, body = 404, { error = "not found" }
  end
  m.pauses:inc(1, { path = API_PATHS[req.path] and req.path or "other", status = tostring(status) })
  log_request(req, status)
  return status, body
end

-- The expiry is decided under the lock, never before waiting for it: a /pause that
-- got the lock first (it queued before the expiry came due) has set a later
-- expires_at, a /resume has cleared it, and either way this pause is no longer due.
-- One task, the script's child, so it outlives the request that paused. A RESUME
-- that fails is tried again, backing off from 1 s to 30 s (and at every /health).
local function expire_pauses()
  local retry, last_due = 1, nil
  while true do
    local due = pause_state.expires_at
    if due ~= last_due then retry, last_due = 1, due end
    local left = due and due - wall()
    if not left or left > 0 then
      pause_state.changed:wait(left or 60)
    elseif not lock:with(resume_if_due) then
      pause_state.changed:wait(retry)
      retry = math.min(retry * 2, 30)
    end
  end
end
local expirer = task.named("pause-expiry", expire_pauses)

-- An earlier pauser may have died mid-pause (stolon-pgbouncer#36): resume now.
local ok, err = lock:with(resume, "startup")
if not ok then
  L.warn { event = "startup_resume_failed", error = tostring(err), msg = "PgBouncer not reachable yet: retrying" }
  lock:with(owe_resume, wall(), "startup")
end

common.serve_metrics(opts)
local srv, serr = http.serve {
  address = host,
  port = tonumber(port),
  handler = handler,
  tls_cert = opts.tls_cert_file ~= "" and opts.tls_cert_file or nil,
  tls_key = opts.tls_key_file ~= "" and opts.tls_key_file or nil,
  max_body = 64 * 1024,
}
if not srv then
  L.error { event = "listen_failed", address = opts.bind_address, error = tostring(serr) }
  return 1
end
L.info { event = "listen", address = host .. ":" .. tostring(srv:port()), token = token ~= "" }
require("notify").send("READY=1\nSTATUS=listening on " .. host .. ":" .. tostring(srv:port()))

local stop = task.event()
for _, sig in ipairs { "TERM", "INT", "QUIT" } do
  task.on_signal(sig, function(name)
    L.info { event = "graceful_shutdown", signal = name }
    stop:set()
  end)
end
-- Nobody is left to honour an expiry: RESUME whenever a PAUSE may have reached
-- PgBouncer, a held one or one in flight. Closing the server cancels a /pause that
-- waits on PgBouncer and drops its admin connection, but PgBouncer keeps that PAUSE
-- and pauses once its transactions end. The old connection is closed first (PgBouncer
-- then forgets the waiter, pgbouncer#715) and the RESUME goes on a fresh one.
local function resume_on_exit()
  if not pause_state.pause_sent then return end
  admin:close()
  local fresh <close> = common.pgbouncer_admin(opts, opts.pgbouncer_timeout)
  local resumed, rerr = resume("shutdown", fresh)
  if not resumed then
    L.error { event = "shutdown_resume_failed", error = tostring(rerr), msg = "PgBouncer may be left paused" }
  end
end

stop:wait()
require("notify").send("STOPPING=1")
srv:close()
expirer:cancel()
lock:with(resume_on_exit)
lock:with(untie)
return 0
