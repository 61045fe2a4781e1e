-- patroni: the model of a Patroni cluster's DCS keys in etcd v3 the commands act on.
--
-- Layout (Patroni 3.0.2, patroni/dcs/__init__.py AbstractDCS, etcd3 backend): every
-- key of a cluster sits under base = "/<namespace>/<scope>/" (slashes squeezed):
--   leader          the leader member's name (plain text, on a lease of ttl)
--   members/<name>  JSON: conn_url, api_url, state, role, timeline, xlog_location,
--                   tags (nofailover, ...), version, proxy_url, ...
--   sync            JSON {"leader", "sync_standby"} (sync_standby: names, comma separated)
--   config          JSON: ttl, loop_wait, synchronous_mode, maximum_lag_on_failover, ...
--   failover        JSON {"leader", "member", "scheduled_at"} while one is pending
--   status          JSON {"optime": leader LSN, "slots": ...}
-- role is "master" up to 3.x and "primary" from 4.0 (both are writable);
-- "standby_leader" leads a standby cluster and is never writable.
--
-- The manager interface (docs/architecture.md "Managers"; lua/stolon.lua has the same
-- four): primary(view), can_lose_primary(view [, want]), request_switch(old, candidate
-- [, opts]), switch_finished(view, old). A view is what decode() returns.
local cjson = require "cjson.safe"

local M = {}

M.NAME = "patroni"
M.DEFAULT_NAMESPACE = "/service"
-- Patroni's own default for maximum_lag_on_failover (bytes).
M.DEFAULT_MAX_LAG = 1048576

local WRITABLE = { master = true, primary = true }

-- base(namespace, scope) -> "/service/<scope>/": Patroni's _base_path plus "/".
function M.base(namespace, scope)
  local path = ("/%s/%s"):format(namespace or M.DEFAULT_NAMESPACE, scope)
  return (path:gsub("/+", "/"):gsub("/$", "")) .. "/"
end

-- lock_key(base) -> the failover lock's name: our own key under the scope, which
-- Patroni's loader ignores (it reads only the names above).
function M.lock_key(base)
  return base .. "stolon-pgbouncer/failover-lock"
end

-- parse_url(url) -> {scheme=, host=, port=, path=} | nil, err. Accepts
-- scheme://[user[:pass]@]host[:port][/path][?query], host an [IPv6] literal or a name.
function M.parse_url(url, default_port)
  if type(url) ~= "string" then return nil, "not a string" end
  local scheme, rest = url:match("^(%a[%w+.-]*)://(.*)$")
  if not scheme then return nil, ("%q is not a URL"):format(url) end
  local authority, path = rest:match("^([^/?#]*)(.*)$")
  authority = authority:gsub("^.*@", "")
  local host, port = authority:match("^%[([^%]]+)%]:?(%d*)$")
  if not host then host, port = authority:match("^([^:]+):?(%d*)$") end
  if not host or host == "" then return nil, ("%q has no host"):format(url) end
  if port == "" then port = default_port end
  return { scheme = scheme:lower(), host = host, port = port and tostring(port), path = path }
end

local function decode_object(text, where)
  if type(text) ~= "string" or text == "" then return nil, ("%s: empty value"):format(where) end
  local doc, err = cjson.decode(text)
  if type(doc) ~= "table" then
    return nil, ("%s: invalid JSON: %s"):format(where, err or "not an object")
  end
  return doc
end

local function str(v) if type(v) == "string" then return v end end

-- member(name, text, key) -> member view | nil, err (err names key). Only what the
-- commands rely on is checked: conn_url (for Host and Port), api_url (for the switch),
-- state and role as strings.
function M.member(name, text, key)
  local doc, err = decode_object(text, key)
  if not doc then return nil, err end
  for _, f in ipairs { "conn_url", "state", "role" } do
    if type(doc[f]) ~= "string" then return nil, ("%s: %s is missing or not a string"):format(key, f) end
  end
  local conn, cerr = M.parse_url(doc.conn_url, "5432")
  if not conn then return nil, ("%s: conn_url: %s"):format(key, cerr) end
  if doc.api_url ~= nil and type(doc.api_url) ~= "string" then
    return nil, ("%s: api_url is not a string"):format(key)
  end
  if doc.api_url and not M.parse_url(doc.api_url) then
    return nil, ("%s: api_url %q is not a URL"):format(key, doc.api_url)
  end
  local tags = type(doc.tags) == "table" and doc.tags or {}
  return {
    name = name, key = key,
    host = conn.host, port = conn.port, conn_url = doc.conn_url, api_url = doc.api_url,
    state = doc.state, role = doc.role,
    writable = WRITABLE[doc.role] == true,
    timeline = math.tointeger(tonumber(doc.timeline)),
    xlog_location = math.tointeger(tonumber(doc.xlog_location)),
    nofailover = tags.nofailover == true or tags.nofailover == "true",
    tags = tags,
    doc = doc,
  }
end

-- decode(kvs, base) -> view | nil, err: the cluster from a prefix read of base
-- (etcd kvs: {key=, value=, mod_revision=}). Fails (naming the key) when what the
-- primary depends on is malformed: the leader key, the leader's member document,
-- config, sync. Another malformed member is left out and listed in view.invalid
-- {key = err}: it cannot be a candidate.
function M.decode(kvs, base)
  local self = setmetatable({ base = base, members = {}, names = {}, invalid = {}, revision = 0 }, { __index = M })
  local raw_members = {}
  local raw = {}
  for _, kv in ipairs(kvs or {}) do
    local rel = type(kv.key) == "string" and kv.key:sub(1, #base) == base and kv.key:sub(#base + 1)
    if rel then
      if (kv.mod_revision or 0) > self.revision then self.revision = kv.mod_revision end
      local name = rel:match("^members/(.+)$")
      if name then raw_members[name] = kv else raw[rel] = kv end
    end
  end
  if raw.leader then
    local name = str(raw.leader.value)
    if not name or name == "" or name:find("[%c]") then
      return nil, ("%sleader: empty or not a member name"):format(base)
    end
    self.leader = name
  end
  for name, kv in pairs(raw_members) do
    local m, err = M.member(name, kv.value, kv.key)
    if m then
      self.members[name] = m
      self.names[#self.names + 1] = name
    elseif name == self.leader then
      return nil, err
    else
      self.invalid[kv.key] = err
    end
  end
  table.sort(self.names)
  self.config = {}
  if raw.config then
    local doc, err = decode_object(raw.config.value, raw.config.key)
    if not doc then return nil, err end
    self.config = doc
  end
  self.sync = { members = {} }
  if raw.sync then
    local doc, err = decode_object(raw.sync.value, raw.sync.key)
    if not doc then return nil, err end
    local sb = doc.sync_standby
    if sb ~= nil and sb ~= cjson.null and type(sb) ~= "string" then
      return nil, ("%s: sync_standby is not a string"):format(raw.sync.key)
    end
    self.sync.leader = str(doc.leader)
    for n in (str(sb) or ""):gmatch("[^,]+") do
      self.sync.members[#self.sync.members + 1] = n:match("^%s*(.-)%s*$")
    end
  end
  if raw.failover then self.failover = cjson.decode(raw.failover.value or "") end
  if raw.status then
    local doc = cjson.decode(raw.status.value or "")
    self.leader_lsn = type(doc) == "table" and math.tointeger(tonumber(doc.optime)) or nil
  end
  return self
end

-- synchronous_mode(view) -> bool (Patroni accepts true and "on"-style strings too)
function M.synchronous_mode(view)
  local v = view.config.synchronous_mode
  return v == true or v == "on" or v == "true" or v == "quorum"
end

function M.max_lag(view)
  return math.tointeger(tonumber(view.config.maximum_lag_on_failover)) or M.DEFAULT_MAX_LAG
end

local function in_sync(view, name)
  for _, n in ipairs(view.sync.members) do
    if n == name then return true end
  end
  return false
end

-- primary(view) -> member | nil, why: the leader key's member when it is running with
-- a writable role (master or primary). why: "no_leader", "leader_not_member",
-- "leader_not_running", "leader_not_writable".
function M.primary(view)
  if not view.leader then return nil, "no_leader", "no leader key" end
  local m = view.members[view.leader]
  if not m then return nil, "leader_not_member", ("leader %s has no member key"):format(view.leader) end
  if m.state ~= "running" then
    return nil, "leader_not_running", ("leader %s is %s"):format(m.name, m.state)
  end
  if not m.writable then
    return nil, "leader_not_writable", ("leader %s has role %s"):format(m.name, m.role)
  end
  return m
end

-- candidate_problem(view, m, leader) -> nil when m can take over from leader, else why
function M.candidate_problem(view, m, leader)
  if m.name == leader.name then return "is the leader" end
  if m.state ~= "running" then return "is " .. m.state end
  if m.role ~= "replica" then return "has role " .. m.role end
  if m.nofailover then return "has the nofailover tag" end
  if not m.api_url then return "has no api_url" end
  if M.synchronous_mode(view) and not in_sync(view, m.name) then return "is not in sync" end
  local top = view.leader_lsn or leader.xlog_location
  if top and m.xlog_location then
    local lag = top - m.xlog_location
    if lag > M.max_lag(view) then
      return ("lags %d bytes (maximum_lag_on_failover %d)"):format(lag, M.max_lag(view))
    end
  elseif top then
    return "reports no xlog_location"
  end
  return nil
end

-- can_lose_primary(view [, want]) -> candidate | nil, why: the member a switchover
-- would promote (want, a member name, or the first good one by name).
function M.can_lose_primary(view, want)
  local leader, _, detail = M.primary(view)
  if not leader then return nil, "no running leader: " .. detail end
  if want and want ~= "" then
    local m = view.members[want]
    if not m then return nil, ("candidate %s is not a member"):format(want) end
    local why = M.candidate_problem(view, m, leader)
    if why then return nil, ("candidate %s %s"):format(want, why) end
    return m
  end
  local reasons = {}
  for _, name in ipairs(view.names) do
    local m = view.members[name]
    local why = M.candidate_problem(view, m, leader)
    if not why then return m end
    if name ~= leader.name then reasons[#reasons + 1] = name .. " " .. why end
  end
  for key, err in pairs(view.invalid) do reasons[#reasons + 1] = key .. " unusable (" .. err .. ")" end
  table.sort(reasons)
  return nil, "no candidate replica" .. (#reasons > 0 and (": " .. table.concat(reasons, "; ")) or "")
end

-- request_switch(old, candidate [, opts]) -> status, body | nil, err, code: POST
-- /switchover {"leader", "candidate"} to old's REST API (opts: timeout, ca_file,
-- auth = credentials()'s table, headers). Patroni answers once it sees the switch or gives up (503 "status
-- unknown" while the switch may still happen): callers trust the DCS, not this
-- reply, except a refusal (switch_refused). Task only; yields.
-- credentials(file, env) -> {user=, password=} | nil (no credentials) | nil, err:
-- Patroni's restapi.authentication for the requests that need it (POST
-- /switchover). From file ("user:password", its first line) when given, else from
-- env's PATRONI_RESTAPI_USERNAME and PATRONI_RESTAPI_PASSWORD (the names Patroni
-- reads itself). Never from argv, never logged. env: a getenv function (os.getenv).
function M.credentials(file, env)
  if file and file ~= "" then
    local text, err = require("fs").read(file)
    if not text then return nil, ("--patroni-auth-file: %s"):format(err) end
    local user, password = text:match("^([^:\n]+):([^\n]*)")
    if not user then return nil, ("--patroni-auth-file %s: expected user:password"):format(file) end
    return { user = user, password = (password:gsub("%s+$", "")) }
  end
  local user, password = env("PATRONI_RESTAPI_USERNAME"), env("PATRONI_RESTAPI_PASSWORD")
  if user and user ~= "" then return { user = user, password = password or "" } end
  return nil
end

-- basic_auth(c) -> the Authorization header value for credentials c
function M.basic_auth(c)
  return "Basic " .. require("etcd.core").b64enc(c.user .. ":" .. c.password)
end

-- api_base(m) -> m's REST API root ("http://host:8008"): api_url without /patroni
local function api_base(m)
  return (m.api_url:gsub("/patroni/?$", ""):gsub("/$", ""))
end

-- api_check(m [, opts]) -> true | nil, err: GET /patroni on m's REST API answers 200
-- (the pre-flight: an API that cannot be reached fails the failover before any
-- PAUSE). opts: timeout, ca_file. Task only; yields.
function M.api_check(m, opts)
  opts = opts or {}
  if not m.api_url then return nil, ("%s has no api_url"):format(m.name) end
  local http = require "http"
  local url = api_base(m) .. "/patroni"
  local res, err = http.request { url = url, timeout = opts.timeout or 2, ca_file = opts.ca_file }
  if not res then return nil, ("GET %s: %s"):format(url, tostring(err)) end
  if res.status ~= 200 then return nil, ("GET %s: HTTP %d"):format(url, res.status) end
  return true
end

function M.request_switch(old, candidate, opts)
  opts = opts or {}
  local http = require "http"
  if not old.api_url then return nil, ("leader %s has no api_url"):format(old.name) end
  local base = api_base(old)
  local headers = { ["Content-Type"] = "application/json" }
  for k, v in pairs(opts.headers or {}) do headers[k] = v end
  if opts.auth then headers["Authorization"] = M.basic_auth(opts.auth) end
  local res, err, code = http.request {
    method = "POST", url = base .. "/switchover", headers = headers,
    body = cjson.encode { leader = old.name, candidate = candidate and candidate.name or nil },
    timeout = opts.timeout or 30, ca_file = opts.ca_file,
  }
  if not res then return nil, ("POST %s/switchover: %s"):format(base, tostring(err)), code end
  return res.status, res.body
end

-- switch_refused(status, code) -> true when no switch will come of the request:
-- Patroni answered 4xx (400 bad request, 401/403, 412 not possible), or the request
-- never reached it (code "connect", "resolve", "tls"). 200, 503, a timeout or an I/O
-- error mid-request are not refusals: the DCS says what happened.
local NOT_SENT = { connect = true, resolve = true, tls = true }
function M.switch_refused(status, code)
  if status == nil then return NOT_SENT[code] == true end
  return status >= 400 and status < 500
end

-- switch_finished(view, old) -> member | nil, state, detail: done when the leader
-- key names another member than old and that member runs with a writable role.
-- state: "pending" (old still leads), or primary()'s why.
function M.switch_finished(view, old)
  if view.leader and view.leader == old.name then return nil, "pending", "leader has not changed" end
  local m, why, detail = M.primary(view)
  if not m then return nil, why, detail end
  return m
end

-- members_table(view) -> one row per member, by name, as `patronictl list` shows
-- them: {name=, host=, port=, role= ("Leader", "Sync Standby", "Replica", or the
-- role itself for a leader that is not writable), state=, timeline=, lag= (bytes
-- behind the leader's LSN; nil for the leader or when unknown), nofailover=}.
function M.members_table(view)
  local top = view.leader_lsn
  local leader = view.leader and view.members[view.leader]
  if not top and leader then top = leader.xlog_location end
  local rows = {}
  for _, name in ipairs(view.names) do
    local m = view.members[name]
    local role = "Replica"
    if name == view.leader then
      role = m.writable and "Leader" or m.role
    elseif in_sync(view, name) then
      role = "Sync Standby"
    end
    local lag
    if name ~= view.leader and top and m.xlog_location then lag = math.max(0, top - m.xlog_location) end
    rows[#rows + 1] = { name = name, host = m.host, port = m.port, role = role, state = m.state,
      timeline = m.timeline, lag = lag, nofailover = m.nofailover }
  end
  return rows
end

function M.describe(m)
  if not m then return "none" end
  return ("%s (%s:%s)"):format(m.name or "?", m.host or "?", m.port or "?")
end

return M
