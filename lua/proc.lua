-- proc: child processes. The C core (src/proc.c, `proc.core`) provides
-- proc.spawn{argv..., env=, cwd=, user=, stdin=, stdout=, stderr=} -> p with
-- p:wait([timeout]), p:signal(name), p:pid(), p:running(), p:output(). This half adds
-- proc.run (spawn, wait, collect), which stops and reaps its child when cancelled.
local M = require "proc.core"

local STOP_TIMEOUT = 3
-- TERM, then KILL after grace seconds; returns once p is reaped (or given up).
local function stop(p, grace)
  p:signal('TERM')
  local _, _, code = p:wait(grace)
  if code ~= 'timeout' then return end
  p:signal('KILL')
  p:wait(grace)
end
function M.run(opts)
  local o = {}
  for k, v in pairs(opts) do o[k] = v end
  o.stdout = o.stdout or 'capture'
  o.stderr = o.stderr or 'capture'
  o.stdin = o.stdin or 'null'
  local grace = opts.stop_timeout or STOP_TIMEOUT
  local p, err, code = M.spawn(o)
  if not p then return nil, err, code end
  local ok, st, sig, wcode = pcall(p.wait, p, opts.timeout)
  if not ok then
    stop(p, grace)
    error(st, 0)
  end
  if st == nil and wcode == 'timeout' then
    p:signal('KILL'); p:wait(grace)
    return nil, 'proc.run: ' .. tostring(opts[1]) .. ': timeout', 'timeout'
  end
  local out, errout = p:output()
  if st == nil then return nil, 'killed by ' .. sig, out, errout end
  return st, out, errout
end
return M
