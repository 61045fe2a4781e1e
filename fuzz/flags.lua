-- fuzz/flags.lua: the driver of fuzz/flags.c (the contract it checks is described
-- there); returns the per-input check function.
local flags = require 'flags'
local duration = require 'duration'
local spec = {
  { name = 'name', default = 'x', help = 'a string' },
  { name = 'verbose', type = 'bool', help = 'a bool' },
  { name = 'dry-run', type = 'bool', default = true },
  { name = 'poll-interval', type = 'duration', default = '1m' },
  { name = 'env-dur', type = 'duration', env = 'SPGB_FUZZ_ENV', default = '5s' },
  { name = 'count', type = 'int', default = 3 },
  { name = 'ratio', type = 'number' },
  { name = 'hosts', type = 'list', default = 'a,b' },
  { name = 'token', env = 'SPGB_FUZZ_ENV' },
}
local function parse(argv, info)
  local opts, rest = flags.parse(spec, argv, info)
  if opts == 'help' then return end
  if opts == nil then
    if type(rest) ~= 'string' then error('flags.parse: nil without a message') end
    return
  end
  if type(opts) ~= 'table' or type(rest) ~= 'table' then error('flags.parse: bad results') end
  if type(opts.poll_interval) ~= 'number' or type(opts.count) ~= 'number' then
    error('flags.parse: defaults not applied')
  end
end
local function dur(s)
  local v, err = duration.parse(s)
  if v == nil then
    if type(err) ~= 'string' then error('duration.parse: nil without a message') end
    return
  end
  if type(v) ~= 'number' then error('duration.parse: returned a ' .. type(v)) end
  if v < 0 and s:sub(1, 1) ~= '-' then
    error(('duration.parse(%q) = %s: negative from a positive text'):format(s, v))
  end
  if v ~= v or v == math.huge or v == -math.huge then return end -- overflow: see README
  local f = duration.format(v)
  if type(f) ~= 'string' then error('duration.format: returned a ' .. type(f)) end
  local back = duration.parse(f)
  if type(back) ~= 'number' then
    error(('duration.format(%s) = %q does not parse again'):format(v, f))
  end
end
flags.usage(spec, { command = 'fuzz', args = ' ARGS...', description = 'fuzzing' })
return function(_, argv)
  parse(argv)
  parse(argv, { interspersed = false, command = 'fuzz' })
  for _, a in ipairs(argv) do dur(a) end
end
