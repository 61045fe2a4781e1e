-- task: coroutine tasks on the libuv loop. The C core (src/sched.c, `task.core`):
-- spawn, named, observed, detached, shield, sleep, now, current, cancelled,
-- on_signal, event, stats, and the task handle (h:wait, h:cancel, h:status, h:name).
-- This half: task.timeout, task.all, task.yield, task.mutex, written over them
-- (docs/task.md has the whole API: where each may be called, whether it yields).
local M = require "task.core"
local pack, unpack = table.pack, table.unpack
function M.timeout(seconds, fn, ...)
  local h = M.observed(fn, ...)
  local r = pack(h:wait(seconds))
  if r[1] == nil then
    h:cancel()
    return nil, ('task.timeout: timeout after %gs'):format(seconds), 'timeout'
  end
  if r[1] == false then error(r[2], 0) end
  return unpack(r, 2, r.n)
end
function M.all(fns)
  local hs = {}
  for i, fn in ipairs(fns) do hs[i] = M.observed(fn) end
  local results, errs = { n = #hs }, {}
  for i, h in ipairs(hs) do
    local r = pack(h:wait())
    if r[1] then
      results[i] = pack(unpack(r, 2, r.n))
    else
      results[i] = { n = 0, error = r[2] }
      errs[#errs + 1] = ('task %d: %s'):format(i, tostring(r[2]))
    end
  end
  if #errs > 0 then return results, table.concat(errs, '; ') end
  return results
end
function M.yield() return M.sleep(0) end
-- mutex(): m:lock([timeout]) -> true | nil, 'mutex: timeout', 'timeout';
-- m:unlock(); m:with(fn, ...). First come, first served: unlock hands the lock to
-- the longest waiter still waiting, each waiting on an event of its own. A waiter
-- handed the lock as it timed out keeps it; one handed it as it was cancelled
-- passes it on before the error goes up.
function M.mutex()
  local m = { held = false, waiters = {}, first = 1, last = 0 }
  function m:lock(timeout)
    if not self.held then
      self.held = true
      return true
    end
    if timeout and timeout <= 0 then return nil, 'mutex: timeout', 'timeout' end
    local w = { ev = M.event() }
    self.last = self.last + 1
    self.waiters[self.last] = w
    local ok, err = pcall(w.ev.wait, w.ev, timeout)
    w.gone = true
    if w.granted then
      if ok then return true end
      self:unlock()
    end
    if not ok then error(err, 0) end
    return nil, 'mutex: timeout', 'timeout'
  end
  function m:unlock()
    while self.first <= self.last do
      local w = self.waiters[self.first]
      self.waiters[self.first] = nil
      self.first = self.first + 1
      if not w.gone then
        w.granted = true
        w.ev:set()
        return
      end
    end
    self.first, self.last = 1, 0
    self.held = false
  end
  function m:with(fn, ...)
    assert(self:lock())
    local r = table.pack(pcall(fn, ...))
    self:unlock()
    if not r[1] then error(r[2], 0) end
    return table.unpack(r, 2, r.n)
  end
  return m
end
return M
