-- pauser_client: calls a pauser's HTTP API (health, pause, resume) with the token.
local cjson = require "cjson.safe"
local http = require "http"

local M = {}
M.__index = M

-- new{host=, port=, token=, scheme="http", ca_file=, skip_tls_verify=} -> client
function M.new(o)
  local host = o.host
  if host:find(":", 1, true) then host = "[" .. host .. "]" end
  return setmetatable({
    base = ("%s://%s:%s"):format(o.scheme or "http", host, tostring(o.port)),
    token = o.token ~= "" and o.token or nil,
    ca_file = o.ca_file,
    skip_tls_verify = o.skip_tls_verify,
    name = o.name or o.host,
  }, M)
end

local function decode(body)
  local v = cjson.decode(body or "")
  if type(v) == "table" then return v end
  return {}
end

-- c:call(method, path, body_table, timeout) -> status, decoded body | nil, err, code
function M:call(method, path, body, timeout)
  local res, err, code = http.request {
    method = method,
    url = self.base .. path,
    headers = {
      ["Authorization"] = self.token,
      ["Content-Type"] = body and "application/json" or nil,
    },
    body = body and cjson.encode(body) or nil,
    timeout = timeout,
    ca_file = self.ca_file,
    skip_tls_verify = self.skip_tls_verify,
  }
  if not res then return nil, ("%s %s: %s"):format(method, self.base .. path, tostring(err)), code end
  return res.status, decode(res.body)
end

local function failure(self, what, status, body)
  local msg = body.error or body.message
  if not msg and body.components then
    local parts = {}
    for _, c in ipairs(body.components) do
      if c.status ~= "healthy" then parts[#parts + 1] = ("%s: %s"):format(c.name, tostring(c.error)) end
    end
    msg = table.concat(parts, "; ")
  end
  return nil, ("%s %s: HTTP %d%s"):format(self.name, what, status, msg and msg ~= "" and (" " .. msg) or ""), status
end

-- c:health(timeout) -> body | nil, err, code
function M:health(timeout)
  local status, body, code = self:call("GET", "/health", nil, timeout)
  if not status then return nil, body, code end
  if status ~= 200 then return failure(self, "health", status, body) end
  return body
end

-- c:pause(timeout, expiry, request_timeout [, tie]) -> body | nil, err, code. tie:
-- {lease_key=, lease=} (pause_lease's h:body()): the pause ends when that key is
-- gone, on a pauser with store access; without tie the request is the original's.
function M:pause(timeout, expiry, request_timeout, tie)
  local req = { timeout = timeout, expiry = expiry }
  if tie then req.lease_key, req.lease = tie.lease_key, tie.lease end
  local status, body, code = self:call("POST", "/pause", req, request_timeout)
  if not status then return nil, body, code end
  if status ~= 200 then return failure(self, "pause", status, body) end
  return body
end

-- c:resume(request_timeout) -> body | nil, err, code
function M:resume(request_timeout)
  local status, body, code = self:call("POST", "/resume", {}, request_timeout)
  if not status then return nil, body, code end
  if status ~= 200 then return failure(self, "resume", status, body) end
  return body
end

return M
