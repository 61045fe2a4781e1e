-- pauser: the HTTP API that health-checks, PAUSEs and RESUMEs the node-local
-- PgBouncer for a failover.
--
--   GET  /health   200 {"status":"healthy",...} | 503 {"status":"unhealthy","components":[...]}
--   POST /pause    {"timeout": s, "expiry": s} -> 200 {"created_at","expires_at"} | 504 (not
--                  paused in time: PgBouncer is left resumed)
--   POST /resume   -> 200 {"created_at"}
--
-- Every pause carries an expiry: the pauser RESUMEs by itself when it passes. An
-- explicit RESUME or a newer PAUSE cancels an older expiry, so an old timer never
-- resumes a newer pause. At start-up it RESUMEs, in case an earlier process died
-- mid-pause; on TERM/INT/QUIT it RESUMEs a pause it still holds, whose expiry it
-- could no longer honour. With a token, every call needs `Authorization: <token>` (or `Bearer
-- <token>`), compared in constant time.
local common = require "common"
local flags = require "flags"
local http = require "http"
local log = require "log"
local secure = require "secure"
local task = require "task"

local spec = common.spec(common.global_flags, common.pgbouncer_flags, common.token_flags, {
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

local admin = common.pgbouncer_admin(opts, opts.pgbouncer_timeout)
local lock = task.mutex()
local pause_state = { generation = 0, expiry = nil, expires_at = nil }

local function iso(t)
  local whole = math.floor(t)
  return os.date("!%Y-%m-%dT%H:%M:%S", whole) .. ("%.6fZ"):format(t - whole):sub(2)
end

local function wall()
  -- wall clock with sub-second precision: monotonic offset from os.time at start
  return pause_state.wall0 + (task.now() - pause_state.mono0)
end
pause_state.wall0, pause_state.mono0 = os.time(), task.now()

local function cancel_expiry()
  if pause_state.expiry then
    pause_state.expiry:cancel()
    pause_state.expiry = nil
  end
  pause_state.expires_at = nil
end

local function resume(reason)
  cancel_expiry()
  local ok, err = admin:resume()
  if ok then m.paused:set(0) end
  L.info { event = "resume", reason = reason, ok = ok and true or false, error = err and tostring(err) or nil }
  return ok, err
end

local function health()
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
  }
end

local function pause(body)
  local timeout = tonumber(body.timeout) or 5
  local expiry = tonumber(body.expiry) or 25
  if timeout <= 0 or expiry <= 0 or timeout > 3600 or expiry > 3600 then
    return 400, { error = "timeout and expiry must be seconds in (0, 3600]" }
  end
  local created = wall()
  cancel_expiry()
  pause_state.generation = pause_state.generation + 1
  local gen = pause_state.generation
  local ok, err, code = admin:pause(nil, { timeout = timeout })
  if not ok then
    -- the pgbouncer primitive has already dropped the waiting PAUSE and resumed
    L.error { event = "pause_failed", error = tostring(err), code = tostring(code) }
    if code == "timeout" then
      return 504, { error = "exceeded pause timeout: " .. tostring(err) }
    end
    return 500, { error = tostring(err) }
  end
  m.paused:set(1)
  pause_state.expires_at = created + expiry
  pause_state.expiry = task.named("pause-expiry", function()
    task.sleep(math.max(0, pause_state.expires_at - wall()))
    if pause_state.generation == gen then
      pause_state.expiry = nil
      lock:with(resume, "expiry")
    end
  end)
  L.info { event = "paused", expires_at = iso(pause_state.expires_at), timeout = timeout, expiry = expiry }
  return 200, { created_at = iso(created), expires_at = iso(pause_state.expires_at) }
end

local function authorized(req)
  if token == "" then return true end
  local h = req.headers and req.headers["authorization"] or ""
  local presented = h:match("^[Bb]earer%s+(.+)$") or h
  return secure.equal(presented, token)
end

local function handler(req)
  local status, body
  if not authorized(req) then
    status, body = 401, { error = "unauthorized" }
  elseif req.path == "/health" and req.method == "GET" then
    status, body = lock:with(health)
  elseif req.path == "/pause" and req.method == "POST" then
    local args, jerr = http.json(req)
    if not args then
      status, body = 400, { error = "invalid JSON body: " .. tostring(jerr) }
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
  elseif req.path == "/health" or req.path == "/pause" or req.path == "/resume" then
    status, body = 405, { error = "method not allowed" }
  else
    status, body = 404, { error = "not found" }
  end
  m.pauses:inc(1, { path = req.path:match("^/%a*") or "/", status = tostring(status) })
  L.info { event = "request", method = req.method, path = req.path, status = status, remote = req.remote }
  return status, body
end

-- An earlier pauser may have died mid-pause (stolon-pgbouncer#36): resume now.
local ok, err = lock:with(resume, "startup")
if not ok then L.warn { event = "startup_resume_failed", error = tostring(err), msg = "PgBouncer not reachable yet" } end

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
stop:wait()
require("notify").send("STOPPING=1")
srv:close()
-- A pause we hold would outlive us with nobody left to honour its expiry: resume.
if pause_state.expires_at then lock:with(resume, "shutdown") end
return 0
