-- etcd: the etcd v3 client over the JSON gateway (the API in docs/etcd.md). The C
-- core (src/etcd.c, `etcd.core`) is the transport and byte helpers: post, stream,
-- b64enc, b64dec, prefix_end; this half is kv, txn, watch, lease and lock.
local core = require "etcd.core"
local cjson = require "cjson.safe"
local task = require "task"
local log = require "log"

local M = {}
local b64enc, b64dec, prefix_end = core.b64enc, core.b64dec, core.prefix_end
local decode, encode = cjson.decode, cjson.encode
local now, sleep = task.now, task.sleep
local tointeger, type, tostring, pcall, error = math.tointeger, type, tostring, pcall, error
local setmetatable, ipairs, pack = setmetatable, ipairs, table.pack

local Client, Watcher, Lease, Lock = {}, {}, {}, {}
Client.__index, Watcher.__index, Lease.__index, Lock.__index = Client, Watcher, Lease, Lock

-- ---- decoding (any shape error raises "bad response"; callers pcall) --------

local function bad(what) error({ bad = what }, 0) end

local function int(v)
  if v == nil then return 0 end
  local n = tointeger(tonumber(v))
  if not n then bad("not an integer") end
  return n
end

local function str(v)
  if v == nil then return "" end
  if type(v) ~= "string" then bad("not a string") end
  local s = b64dec(v)
  if not s then bad("bad base64") end
  return s
end

local function tbl(v)
  if v == nil then return {} end
  if type(v) ~= "table" then bad("not an object") end
  return v
end

local function kv(x)
  x = tbl(x)
  return {
    key = str(x.key), value = str(x.value), create_revision = int(x.create_revision),
    mod_revision = int(x.mod_revision), version = int(x.version), lease = int(x.lease),
  }
end

local function kvs(list)
  local out = {}
  for i, x in ipairs(tbl(list)) do out[i] = kv(x) end
  return out
end

local function header_rev(r) return int(tbl(r.header).revision) end

-- Turn a gateway reply into a table or nil, err, code. code: the HTTP status when
-- the body is not JSON, the etcd error string for {"error": ...}, else
-- "bad_response".
local function reply(what, status, body)
  local obj = decode(body)
  if type(obj) ~= "table" then
    if status ~= 200 then return nil, ("%s: HTTP %d"):format(what, status), status end
    return nil, what .. ": bad response (not a JSON object)", "bad_response"
  end
  local e = obj.error
  if e ~= nil or status ~= 200 then
    if type(e) == "table" then e = e.message end -- stream errors: {"error":{"message":..}}
    local msg = type(e) == "string" and e or type(obj.message) == "string" and obj.message
      or ("HTTP " .. tostring(status))
    return nil, what .. ": " .. msg, msg, obj.code
  end
  return obj
end

local function convert(what, fn, obj)
  local ok, res = pcall(fn, obj)
  if ok then return res end
  if type(res) == "table" and res.bad then
    return nil, ("%s: bad response (%s)"):format(what, res.bad), "bad_response"
  end
  error(res, 0)
end

-- ---- client ------------------------------------------------------------------

local function check_opt(opts, k, ty, fn)
  local v = opts[k]
  if v ~= nil and type(v) ~= ty then
    error(("%s: %s must be a %s"):format(fn, k, ty), 3)
  end
  return v
end

--- etcd.connect{endpoints=, timeout=, dial_timeout=, ca_file=, cert_file=, key_file=,
--- skip_tls_verify=} -> client. No I/O.
function M.connect(opts)
  if type(opts) ~= "table" then error("etcd.connect: options table expected", 2) end
  local eps = opts.endpoints
  if type(eps) == "string" then
    local t = {}
    for e in eps:gmatch("[^,%s]+") do t[#t + 1] = e end
    eps = t
  end
  if type(eps) ~= "table" or #eps == 0 then
    error("etcd.connect: endpoints must be a non-empty list of URLs", 2)
  end
  local tls = opts.ca_file or opts.cert_file or opts.skip_tls_verify
  local list = {}
  for i, e in ipairs(eps) do
    if type(e) ~= "string" then error("etcd.connect: endpoints[" .. i .. "] must be a string", 2) end
    if not e:match("^https?://") then e = (tls and "https://" or "http://") .. e end
    list[i] = e:gsub("/+$", "")
  end
  local timeout = check_opt(opts, "timeout", "number", "etcd.connect") or 5
  local conf = {
    ca_file = check_opt(opts, "ca_file", "string", "etcd.connect"),
    cert_file = check_opt(opts, "cert_file", "string", "etcd.connect"),
    key_file = check_opt(opts, "key_file", "string", "etcd.connect"),
    skip_tls_verify = opts.skip_tls_verify and true or false,
    dial_timeout = check_opt(opts, "dial_timeout", "number", "etcd.connect")
      or math.min(timeout, 2),
  }
  return setmetatable({ endpoints = list, cur = 1, timeout = timeout, conf = conf }, Client)
end

-- One gateway call with endpoint failover. Reads (idem) move on after any
-- transport failure or an "unavailable" reply; writes only when the request was
-- never sent (connection refused, TLS or dial failure), so a write is never
-- applied twice. timeout (default the client's) bounds the whole call. Returns the
-- decoded object or nil, err, code.
function Client:call(what, path, req, idem, timeout)
  local body = encode(req)
  local deadline = now() + (timeout or self.timeout)
  local n = #self.endpoints
  local err, code
  for _ = 1, n do
    local remaining = deadline - now()
    if remaining <= 0 then break end
    local ep = self.endpoints[self.cur]
    local status, rbody, tcode, unsent = core.post(self.conf, ep .. path, body, remaining)
    if status then
      local obj, e, c, grpc = reply(what, status, rbody)
      if obj then return obj end
      -- 14: gRPC Unavailable (no leader, stopping member): another member may serve.
      if not (idem and (grpc == 14 or status == 503)) then return nil, e, c end
      err, code = e, c
    else
      err, code = ("%s: %s: %s"):format(what, ep, rbody), tcode
      -- Out of time on this member (frozen, partitioned): this call is over, but the
      -- next one starts on another member instead of waiting on this one again.
      if tcode == "timeout" then self.cur = self.cur % n + 1 end
      if not (unsent or idem) or tcode == "timeout" then return nil, err, code end
    end
    self.cur = self.cur % n + 1
  end
  return nil, err or (what .. ": timeout"), code or "timeout"
end

local function range_req(fn, key, opts)
  if type(key) ~= "string" then error(fn .. ": key must be a string", 3) end
  opts = opts or {}
  local r = { key = b64enc(key) }
  if opts.prefix then r.range_end = b64enc(prefix_end(key))
  elseif opts.range_end then r.range_end = b64enc(opts.range_end) end
  if opts.limit then r.limit = tostring(opts.limit) end
  if opts.revision then r.revision = tostring(opts.revision) end
  if opts.keys_only then r.keys_only = true end
  if opts.count_only then r.count_only = true end
  if opts.sort_target then r.sort_target = opts.sort_target:upper() end
  if opts.sort_order then r.sort_order = opts.sort_order:upper() end
  if opts.max_create_revision then r.max_create_revision = tostring(opts.max_create_revision) end
  if opts.serializable then r.serializable = true end
  return r
end

local function range_res(r)
  return { kvs = kvs(r.kvs), count = int(r.count), more = r.more == true, revision = header_rev(r) }
end

--- c:get(key [, {prefix=, limit=, revision=, ...}]) -> {kvs=, count=, revision=, more=}
function Client:get(key, opts)
  local r, e, c = self:call("etcd.get", "/v3/kv/range", range_req("etcd.get", key, opts), true)
  if not r then return nil, e, c end
  return convert("etcd.get", range_res, r)
end

local function put_req(fn, key, value, opts)
  if type(key) ~= "string" then error(fn .. ": key must be a string", 3) end
  if type(value) ~= "string" then error(fn .. ": value must be a string", 3) end
  opts = opts or {}
  local r = { key = b64enc(key), value = b64enc(value) }
  if opts.lease then r.lease = tostring(type(opts.lease) == "table" and opts.lease.id or opts.lease) end
  if opts.prev_kv then r.prev_kv = true end
  return r
end

--- c:put(key, value [, {lease=, prev_kv=}]) -> {revision=, prev_kv=}
function Client:put(key, value, opts)
  local r, e, c = self:call("etcd.put", "/v3/kv/put", put_req("etcd.put", key, value, opts))
  if not r then return nil, e, c end
  return convert("etcd.put", function(x)
    return { revision = header_rev(x), prev_kv = x.prev_kv and kv(x.prev_kv) or nil }
  end, r)
end

local function delete_req(fn, key, opts)
  if type(key) ~= "string" then error(fn .. ": key must be a string", 3) end
  opts = opts or {}
  local r = { key = b64enc(key) }
  if opts.prefix then r.range_end = b64enc(prefix_end(key)) end
  if opts.prev_kv then r.prev_kv = true end
  return r
end

local function delete_res(x)
  return { deleted = int(x.deleted), revision = header_rev(x),
    prev_kvs = x.prev_kvs and kvs(x.prev_kvs) or nil }
end

--- c:delete(key [, {prefix=, prev_kv=}]) -> {deleted=, revision=}
function Client:delete(key, opts)
  local r, e, c = self:call("etcd.delete", "/v3/kv/deleterange", delete_req("etcd.delete", key, opts))
  if not r then return nil, e, c end
  return convert("etcd.delete", delete_res, r)
end

local targets = {
  value = "VALUE", mod = "MOD", mod_revision = "MOD", create = "CREATE",
  create_revision = "CREATE", version = "VERSION", lease = "LEASE",
}
local target_field = { VALUE = "value", MOD = "mod_revision", CREATE = "create_revision",
  VERSION = "version", LEASE = "lease" }
local results = { ["=="] = "EQUAL", ["!="] = "NOT_EQUAL", ["<"] = "LESS", [">"] = "GREATER" }

local function txn_ops(list, what)
  if list == nil or #list == 0 then return nil end -- cjson would send {} for []
  local out = {}
  for i, op in ipairs(list) do
    if type(op) ~= "table" then error(("etcd.txn: %s[%d] must be a table"):format(what, i), 4) end
    local a = op.put or op.get or op.delete
    if type(a) ~= "table" then
      error(("etcd.txn: %s[%d] needs put=, get= or delete="):format(what, i), 4)
    end
    local key = a.key or a[1]
    if op.put then
      out[i] = { request_put = put_req("etcd.txn", key, a.value or a[2], a) }
    elseif op.get then
      out[i] = { request_range = range_req("etcd.txn", key, a) }
    else
      out[i] = { request_delete_range = delete_req("etcd.txn", key, a) }
    end
  end
  return out
end

local function txn_res(x)
  local res = {}
  for i, r in ipairs(tbl(x.responses)) do
    r = tbl(r)
    if r.response_range then
      local g = range_res(tbl(r.response_range))
      g.type = "get"
      res[i] = g
    elseif r.response_put then
      res[i] = { type = "put", revision = header_rev(tbl(r.response_put)) }
    elseif r.response_delete_range then
      local d = delete_res(tbl(r.response_delete_range))
      d.type = "delete"
      res[i] = d
    else
      bad("unknown txn response")
    end
  end
  return { succeeded = x.succeeded == true, responses = res, revision = header_rev(x) }
end

--- c:txn{compare={...}, success={...}, failure={...}} -> {succeeded=, responses=, revision=}
function Client:txn(t)
  if type(t) ~= "table" then error("etcd.txn: table expected", 2) end
  local cmp = {}
  for i, c in ipairs(t.compare or {}) do
    local tg = type(c) == "table" and targets[c.target or "value"]
    local rs = type(c) == "table" and results[c.result or "=="]
    if not tg or not rs or type(c.key) ~= "string" then
      error(("etcd.txn: compare[%d] needs key=, target= (value|mod|create|version|lease) "
        .. "and result= (==|!=|<|>)"):format(i), 2)
    end
    local v = { key = b64enc(c.key), target = tg, result = rs }
    if tg == "VALUE" then
      if type(c.value) ~= "string" then error(("etcd.txn: compare[%d].value must be a string"):format(i), 2) end
      v.value = b64enc(c.value)
    else
      local n = tointeger(c.value)
      if not n then error(("etcd.txn: compare[%d].value must be an integer"):format(i), 2) end
      v[target_field[tg]] = tostring(n)
    end
    if c.prefix then v.range_end = b64enc(prefix_end(c.key)) end
    cmp[i] = v
  end
  if #cmp == 0 then cmp = nil end
  local req = { compare = cmp, success = txn_ops(t.success, "success"),
    failure = txn_ops(t.failure, "failure") }
  local r, e, c = self:call("etcd.txn", "/v3/kv/txn", req)
  if not r then return nil, e, c end
  return convert("etcd.txn", txn_res, r)
end

--- c:compact(revision [, {physical=}]) -> {revision=}
function Client:compact(rev, opts)
  local n = tointeger(rev)
  if not n then error("etcd.compact: revision must be an integer", 2) end
  local r, e, c = self:call("etcd.compact", "/v3/kv/compaction",
    { revision = tostring(n), physical = opts and opts.physical or nil })
  if not r then return nil, e, c end
  return convert("etcd.compact", function(x) return { revision = header_rev(x) } end, r)
end

-- ---- leases --------------------------------------------------------------------

-- Each attempt is bounded by the interval (at most the client's timeout), so one that
-- hangs on a frozen member is retried, on the next member, well within the TTL.
local function keepalive_loop(l)
  local c = l.client
  local interval = math.max(l.ttl / 3, 0.2)
  local attempt = math.min(c.timeout, math.max(interval, 0.5))
  local wait = interval
  while not l.revoked do
    sleep(wait)
    if l.revoked then return end
    local r, e = c:call("etcd.lease", "/v3/lease/keepalive", { ID = tostring(l.id) }, true, attempt)
    if r then
      local ttl = convert("etcd.lease", function(x) return int(tbl(x.result).TTL) end, r)
      if ttl and ttl <= 0 then
        l.expired = true
        log.warn { event = "etcd_lease_expired", msg = "lease expired", lease = l.hex }
        return
      end
      l.renewed_at = now()
      wait = interval
    else
      log.warn { event = "etcd_lease_keepalive_failed", msg = e, lease = l.hex }
      wait = math.min(interval, 0.5)
    end
  end
end

--- c:lease(ttl) -> lease {id=, ttl=, hex=, renewed_at=} kept alive by a background
--- task until l:revoke(). renewed_at: task.now() of the grant or of the last
--- keep-alive etcd answered (etcd holds the lease at least ttl after it). The task
--- is detached: cancelling the task that took the lease (a signal to a failover)
--- does not end it, so a lock outlives a long clean-up.
function Client:lease(ttl)
  local n = tointeger(ttl)
  if not n or n <= 0 then error("etcd.lease: ttl must be a positive integer (seconds)", 2) end
  local r, e, c = self:call("etcd.lease", "/v3/lease/grant", { TTL = tostring(n) })
  if not r then return nil, e, c end
  local res, e2, c2 = convert("etcd.lease", function(x)
    return { id = int(x.ID), ttl = int(x.TTL) }
  end, r)
  if not res then return nil, e2, c2 end
  if res.id == 0 then return nil, "etcd.lease: no lease id in the reply", "bad_response" end
  local l = setmetatable({ id = res.id, ttl = res.ttl, client = self,
    hex = ("%x"):format(res.id), renewed_at = now() }, Lease)
  l.task = task.detached("etcd.lease:" .. l.hex, keepalive_loop, l)
  return l
end

--- l:revoke() -> true | nil, err, code. Idempotent; stops the keep-alive. Shielded:
--- a cancel meanwhile does not leave the lease to its TTL.
function Lease:revoke()
  if self.revoked then return true end
  self.revoked = true
  if self.task then self.task:cancel() end
  local r, e, c = task.shield(self.client.call, self.client, "etcd.lease", "/v3/lease/revoke", { ID = tostring(self.id) })
  if not r and c ~= "etcdserver: requested lease not found" then return nil, e, c end
  return true
end
Lease.close = Lease.revoke
Lease.__close = Lease.revoke

--- l:alive() -> false once revoked or seen expired.
function Lease:alive() return not (self.revoked or self.expired) end

-- ---- watch ---------------------------------------------------------------------

--- c:watch(key [, {prefix=, start_revision=, prev_kv=}]) -> watcher. No I/O.
function Client:watch(key, opts)
  if type(key) ~= "string" then error("etcd.watch: key must be a string", 2) end
  opts = opts or {}
  local w = setmetatable({ client = self, key = key, ep = self.cur, prev_kv = opts.prev_kv }, Watcher)
  if opts.prefix then w.range_end = prefix_end(key) end
  if opts.start_revision then
    w.next_rev = tointeger(opts.start_revision)
    if not w.next_rev then error("etcd.watch: start_revision must be an integer", 2) end
  end
  return w
end

function Watcher:open()
  local cr = { key = b64enc(self.key), progress_notify = true }
  if self.range_end then cr.range_end = b64enc(self.range_end) end
  if self.next_rev then cr.start_revision = tostring(self.next_rev) end
  if self.prev_kv then cr.prev_kv = true end
  local c = self.client
  local url = c.endpoints[self.ep] .. "/v3/watch"
  self.stream = core.stream(c.conf, url, encode({ create_request = cr }))
end

--- w:reconnect(): drop the stream now; the next w:next() resumes from the next
--- revision on the next endpoint.
function Watcher:reconnect()
  if self.stream then
    self.stream:close()
    self.stream = nil
    self.ep = self.ep % #self.client.endpoints + 1
  end
end

--- w:resume(revision): continue from revision (after a re-read).
function Watcher:resume(rev)
  local n = tointeger(rev)
  if not n then error("etcd.watch: resume needs an integer revision", 2) end
  if self.stream then self.stream:close(); self.stream = nil end
  self.next_rev = n
end

local function event(x)
  x = tbl(x)
  local k = kv(x.kv)
  k.type = x.type == "DELETE" and "delete" or x.type == nil and "put" or bad("event type")
  if x.prev_kv then k.prev_kv = kv(x.prev_kv) end
  return k
end

-- Handle one decoded stream message: returns "events", list | "compacted", rev |
-- "skip" | "drop", err.
function Watcher:handle(msg)
  local r = msg.result
  if type(r) ~= "table" then
    local e = msg.error
    if type(e) == "table" then e = e.message end
    return "drop", "etcd.watch: " .. (type(e) == "string" and e or "bad message")
  end
  local cr = int(r.compact_revision)
  if cr > 0 then return "compacted", cr end
  if r.canceled then return "drop", "etcd.watch: cancelled by the server: " .. tostring(r.cancel_reason) end
  if r.created and not self.next_rev then self.next_rev = header_rev(r) + 1 end
  local out = {}
  for _, x in ipairs(tbl(r.events)) do
    local ev = event(x)
    if not self.next_rev or ev.mod_revision >= self.next_rev then out[#out + 1] = ev end
  end
  if #out == 0 then return "skip" end
  self.next_rev = out[#out].mod_revision + 1
  return "events", out
end

--- w:next([timeout]) -> events | nil, err, code ("timeout", "compacted" + revision)
function Watcher:next(timeout)
  if self.closed then error("etcd.watch: watcher is closed", 2) end
  local deadline = timeout and now() + timeout
  local backoff = 0.05
  while true do
    local remaining = deadline and deadline - now()
    if remaining and remaining <= 0 then return nil, "etcd.watch: timeout", "timeout" end
    if not self.stream then self:open() end
    local ok, msg, e, code = pcall(self.stream.next, self.stream, remaining or 0)
    if not ok then -- cancelled (or out of memory): never leave a stream behind
      self:close()
      error(msg, 0)
    end
    local kind, val
    if msg then
      local obj = decode(msg)
      if type(obj) ~= "table" then
        kind, val = "drop", "etcd.watch: bad message (not JSON)"
      else
        local okh, k, v = pcall(self.handle, self, obj)
        if okh then kind, val = k, v
        elseif type(k) == "table" and k.bad then kind, val = "drop", "etcd.watch: bad message (" .. k.bad .. ")"
        else error(k, 0) end
      end
    elseif code == "timeout" then
      return nil, "etcd.watch: timeout", "timeout"
    else
      kind, val = "drop", e
    end
    if kind == "events" then return val end
    if kind == "compacted" then
      self.stream:close()
      self.stream = nil
      self.next_rev = val
      return nil, ("etcd.watch: revision compacted (compact revision %d)"):format(val), "compacted", val
    end
    if kind == "drop" then
      log.debug { event = "etcd_watch_reconnect", msg = val, endpoint = self.client.endpoints[self.ep] }
      self:reconnect()
      local pause = backoff
      if deadline then pause = math.min(pause, math.max(deadline - now(), 0)) end
      if pause > 0 then sleep(pause) end
      backoff = math.min(backoff * 2, 1)
    end
  end
end

--- w:close(): stop the stream. Idempotent.
function Watcher:close()
  self.closed = true
  if self.stream then self.stream:close(); self.stream = nil end
end
Watcher.__close = Watcher.close

-- ---- lock (etcd's concurrency.Mutex protocol) -----------------------------------

-- Wait until no key under pfx has a create revision <= maxrev (Go: waitDeletes).
function Client:wait_deletes(pfx, maxrev, deadline)
  while true do
    local remaining = deadline and deadline - now()
    if remaining and remaining <= 0 then return nil, "etcd.lock: timeout", "timeout" end
    local r, e, c = self:get(pfx, { prefix = true, sort_target = "create", sort_order = "descend",
      limit = 1, max_create_revision = maxrev })
    if not r then return nil, e, c end
    if #r.kvs == 0 then return true end
    local w <close> = self:watch(r.kvs[1].key, { start_revision = r.revision + 1 })
    local gone = false
    repeat
      local evs, e2, c2 = w:next(deadline and math.max(deadline - now(), 0.001))
      if not evs then
        if c2 == "timeout" then return nil, "etcd.lock: timeout", "timeout" end
        if c2 ~= "compacted" then return nil, e2, c2 end
        gone = true -- compacted: just re-read
      else
        for _, ev in ipairs(evs) do if ev.type == "delete" then gone = true end end
      end
    until gone
  end
end

-- Queue key under name/ and wait to be first -> my create revision | nil, err, code.
local function acquire(self, name, key, lease, deadline)
  local pfx = name .. "/"
  local first = { pfx, prefix = true, sort_target = "create", sort_order = "ascend", limit = 1 }
  local r, e1, c1 = self:txn {
    compare = { { key = key, target = "create", result = "==", value = 0 } },
    success = { { put = { key, "", lease = lease.id } }, { get = first } },
    failure = { { get = { key } }, { get = first } },
  }
  if not r then return nil, e1, c1 end
  local my = r.revision
  if not r.succeeded then
    local mine = r.responses[1].kvs[1]
    if not mine then return nil, "etcd.lock: own key vanished", "session_expired" end
    my = mine.create_revision
  end
  local owner = r.responses[2].kvs and r.responses[2].kvs[1]
  if owner and owner.create_revision ~= my then
    local ok, e2, c2 = self:wait_deletes(pfx, my - 1, deadline)
    if not ok then
      if c2 == "timeout" then e2 = ("etcd.lock: timeout waiting for %s"):format(name) end
      return nil, e2, c2
    end
    local g, e3, c3 = self:get(key)
    if not g then return nil, e3, c3 end
    if #g.kvs == 0 then return nil, "etcd.lock: session expired while waiting", "session_expired" end
  end
  return my
end

--- c:lock(name [, {timeout=, ttl=}]) -> handle | nil, err, code. An acquisition that
--- fails, times out or is cancelled deletes its key and revokes its lease before it
--- returns (or re-raises), so it queues nobody behind it.
function Client:lock(name, opts)
  if type(name) ~= "string" then error("etcd.lock: name must be a string", 2) end
  opts = opts or {}
  local deadline = opts.timeout and now() + opts.timeout
  local lease, e, c = self:lease(opts.ttl or 60)
  if not lease then return nil, e, c end
  local key = name .. "/" .. lease.hex
  local r = pack(pcall(acquire, self, name, key, lease, deadline))
  if r[1] and r[2] then
    return setmetatable({ client = self, name = name, key = key, lease = lease, revision = r[2] }, Lock)
  end
  task.shield(function()
    self:delete(key)
    lease:revoke()
  end)
  if not r[1] then error(r[2], 0) end
  return nil, r[3], r[4]
end

--- h:unlock() -> true | nil, err, code. Idempotent. Shielded: a cancel meanwhile
--- cannot stop it between the delete and the revoke (the keep-alive would go on).
function Lock:unlock()
  if self.released then return true end
  self.released = true
  local _, e, c, ok, e2, c2
  task.shield(function()
    _, e, c = self.client:delete(self.key)
    ok, e2, c2 = self.lease:revoke()
  end)
  if e then return nil, e, c end
  if not ok then return nil, e2, c2 end
  return true
end
Lock.__close = Lock.unlock

M.Client, M.Watcher, M.Lease, M.Lock = Client, Watcher, Lease, Lock
return M
