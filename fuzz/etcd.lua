-- fuzz/etcd.lua: the driver of fuzz/etcd.c (the contract it checks is described
-- there); returns the per-input check function.
local etcd = require 'etcd'
local cjson = require 'cjson.safe'
local core = require 'etcd.core'
local reply_status, reply_body = 200, ''
core.post = function() return reply_status, reply_body end
local c = etcd.connect { endpoints = 'http://127.0.0.1:1,127.0.0.1:2', timeout = 5 }
local statuses = { 200, 200, 200, 200, 200, 404, 500, 503 }
local function check(what, r, err, code)
  if r == nil then
    if type(err) ~= 'string' then error(what .. ': nil without a message') end
    if code == nil then error(what .. ': nil without a code') end
  elseif type(r) ~= 'table' then
    error(what .. ': returned a ' .. type(r))
  end
end
local function watch_msg(msg)
  local obj = cjson.decode(msg)
  if type(obj) ~= 'table' then return end
  local w = setmetatable({ client = c, ep = 1 }, etcd.Watcher)
  if #msg % 2 == 0 then w.next_rev = 5 end
  local ok, kind, val = pcall(w.handle, w, obj)
  if not ok then
    if type(kind) == 'table' and kind.bad then return end
    error('Watcher:handle raised: ' .. tostring(kind), 0)
  end
  if kind == 'events' then
    if type(val) ~= 'table' or #val == 0 then error('handle: events without a list') end
    for _, ev in ipairs(val) do
      if type(ev.key) ~= 'string' or math.type(ev.mod_revision) ~= 'integer' then
        error('handle: bad event')
      end
    end
  elseif kind == 'compacted' then
    if math.type(val) ~= 'integer' then error('handle: compacted without a revision') end
  elseif kind == 'drop' then
    if type(val) ~= 'string' then error('handle: drop without a message') end
  elseif kind ~= 'skip' then
    error('handle: unknown kind ' .. tostring(kind))
  end
end
return function(data, msgs)
  for _, m in ipairs(msgs) do watch_msg(m) end
  reply_status = statuses[#data % #statuses + 1]
  reply_body = data
  check('get', c:get('k', { prefix = true }))
  check('put', c:put('k', 'v', { prev_kv = true }))
  check('delete', c:delete('k', { prefix = true, prev_kv = true }))
  check('txn', c:txn { compare = { { key = 'k', target = 'mod', result = '<', value = 3 } },
    success = { { get = { 'k' } }, { put = { 'k', 'v' } } }, failure = { { delete = { 'k' } } } })
  check('compact', c:compact(7))
  local d = core.b64dec(data)
  if d ~= nil then
    if type(d) ~= 'string' or #d > #data * 3 // 4 + 2 then error('b64dec: bad result') end
  end
  if core.b64dec(core.b64enc(data)) ~= data then error('b64: round trip failed') end
  core.prefix_end(data)
end
