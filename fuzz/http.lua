-- fuzz/http.lua: the server fuzz/http.c sends its inputs to: one handler per kind of
-- answer (JSON body, raise, sleep, any status and header, nested tables, echo).
-- Returns the port it listens on.
local http = require 'http'
local task = require 'task'
local function handler(req)
  local p = req.path
  if p == '/json' then
    local v, err, code = http.json(req)
    if v == nil then return code, { error = err } end
    return 200, { value = v }
  elseif p == '/raise' then
    error('handler raised on purpose')
  elseif p == '/sleep' then
    task.sleep(0.001)
  elseif p == '/status' then
    return tonumber(req.query.code) or req.query.code, req.query.body,
      { [req.query.h or 'X-Empty'] = req.query.v or '' }
  elseif p == '/table' then
    return 200, { nested = { req.headers, req.query }, [1] = 'mixed' }
  end
  return 200, { method = req.method, path = p, version = req.version, body = req.body,
    headers = req.headers, query = req.query, remote = req.remote },
    { ['X-Echo'] = tostring(#req.body) }
end
local s, err = http.serve { port = 0, handler = handler, request_timeout = 2,
  connection_timeout = 2, max_body = 8192, max_header = 4096 }
if not s then error(err) end
return s:port()
