-- fuzz/patroni.lua: the driver of fuzz/patroni.c (the contract it checks is
-- described there); returns the per-input check function.
local patroni = require 'patroni'
local BASE = '/service/fz/'
local function nil_err(what, v, err)
  if v == nil and type(err) ~= 'string' then
    error(what .. ': returned nil without an error message')
  end
end
return function(text)
  local kvs = {}
  local rev = 0
  for line in text:gmatch('[^\n]+') do
    local rel, value = line:match('^([^=]*)=(.*)$')
    if rel then
      rev = rev + 1
      kvs[#kvs + 1] = { key = BASE .. rel, value = value, mod_revision = rev }
      nil_err('parse_url', patroni.parse_url(value, '5432'))
    end
  end
  local view, err = patroni.decode(kvs, BASE)
  nil_err('decode', view, err)
  if not view then
    if not err:find(BASE, 1, true) then error('decode: the error names no key: ' .. err) end
    return
  end
  local p, why = patroni.primary(view)
  nil_err('primary', p, why)
  patroni.describe(p)
  patroni.synchronous_mode(view)
  if math.type(patroni.max_lag(view)) ~= 'integer' then error('max_lag: not an integer') end
  nil_err('can_lose_primary', patroni.can_lose_primary(view))
  for _, name in ipairs(view.names) do
    local c, cerr = patroni.can_lose_primary(view, name)
    nil_err('can_lose_primary(' .. name .. ')', c, cerr)
    patroni.describe(c)
    local m = view.members[name]
    if type(m.host) ~= 'string' or type(m.port) ~= 'string' then error('member: host or port not a string') end
    local done, state = patroni.switch_finished(view, m)
    if done == nil and type(state) ~= 'string' then error('switch_finished: nil without a state') end
  end
end
