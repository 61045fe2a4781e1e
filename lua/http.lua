-- http: the HTTP server and client. The C core (src/http.c, `http.core`) serves
-- with libmicrohttpd under our loop: http.serve{address, port, handler, ...} -> server;
-- each request runs in its own task through `run` below, which calls the handler,
-- encodes its answer and hands it back to C. http.request comes from httpc.
local M = require "http.core"
local respond = M._respond
local ok_cjson, cjson = pcall(require, 'cjson')
local log = require 'log'
local task = require 'task'
local JSON = 'application/json'
local function encode(v)
  if not ok_cjson then error('http: lua-cjson is not installed', 0) end
  return cjson.encode(v)
end
local function fail(req, err, tb)
  if not task.cancelled() then
  log.error { event = 'http_handler_error', msg = tostring(err), method = req.method,
              path = req.path, traceback = tb }
  end
  return 500, '{"error":"internal server error"}', { ['content-type'] = JSON }
end
local function handle(handler, req)
  local tb
  local ok, status, body, headers = xpcall(handler, function(e)
    tb = debug.traceback(tostring(e), 2); return e end, req)
  if not ok then return fail(req, status, tb) end
  if status == nil then status = 200 end
  local st = math.tointeger(status)
  if not st then
    return fail(req, 'handler returned a non-integer status: ' .. tostring(status))
  end
  status = st
  if headers ~= nil and type(headers) ~= 'table' then
    return fail(req, 'handler returned non-table headers')
  end
  if type(body) == 'table' then
    local eok, text = pcall(encode, body)
    if not eok then return fail(req, 'cannot encode the body as JSON: ' .. tostring(text)) end
    local h = { ['content-type'] = JSON }
    for k, v in pairs(headers or {}) do
      if type(k) == 'string' and k:lower() == 'content-type' then h['content-type'] = nil end
      h[k] = v
    end
    return status, text, h
  elseif body == nil then body = ''
  elseif type(body) ~= 'string' and type(body) ~= 'number' then
    return fail(req, 'handler returned a ' .. type(body) .. ' body')
  end
  return status, tostring(body), headers
end
local function run(handler, req, ref)
  local ok, status, body, headers = pcall(handle, handler, req)
  if not ok then status, body, headers = fail(req, status) end
  respond(ref, status, body, headers)
end
function M.json(req)
  if type(req) ~= 'table' then error('http.json: expected a request', 2) end
  if not ok_cjson then error('http.json: lua-cjson is not installed', 2) end
  local body = req.body
  if body == nil or body == '' then return nil, 'http.json: empty body', 400 end
  local ok, v = pcall(cjson.decode, body)
  if not ok then return nil, 'http.json: invalid JSON: ' .. tostring(v), 400 end
  return v
end
local hok, httpc = pcall(require, 'httpc')
if hok and type(httpc) == 'table' and httpc.request then M.request = httpc.request end
-- The C server runs every request through run (in its own task).
M._set_runner(run)
return M
