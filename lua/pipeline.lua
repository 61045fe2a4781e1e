-- pipeline: a list of steps, each optionally with a deferred action, run in order.
--
-- A step's defer is registered BEFORE its action runs, so a half-done action is
-- still undone. When a step fails (raises, or returns nil, err), or the task is
-- cancelled (a signal), the remaining steps are skipped and every registered defer
-- runs, in reverse order, each under the cleanup timeout, even if an earlier defer
-- failed. The defers run under task.shield: a cancel that arrives during clean-up
-- aborts no defer (only the cleanup timeout bounds one) and is raised once they are
-- done, at the caller's next yield. This is the original tool's Pipeline/Step/Defer, with timings recorded
-- for the failover summary.
--
--   local p = pipeline.new{ cleanup_timeout = 10 }
--   p:step("acquire_lock", acquire):defer("release_lock", release)
--   local ok, err = p:run(ctx)      -- p.report holds each step's status and duration
local task = require "task"
local log = require "log"

local M = {}
M.__index = M

-- new{cleanup_timeout=seconds, on_event=fn(ev), logger=log} -> pipeline
function M.new(opts)
  opts = opts or {}
  return setmetatable({
    steps = {},
    cleanup_timeout = opts.cleanup_timeout or 10,
    on_event = opts.on_event,
    log = opts.logger or log,
    report = { steps = {} },
  }, M)
end

-- p:step(name, fn) -> a handle whose :defer(name, fn) attaches the undo action.
function M:step(name, fn)
  assert(type(name) == "string" and type(fn) == "function", "pipeline:step(name, fn)")
  local s = { name = name, fn = fn }
  self.steps[#self.steps + 1] = s
  return {
    defer = function(_, dname, dfn)
      assert(type(dname) == "string" and type(dfn) == "function", "step:defer(name, fn)")
      s.defer = { name = dname, fn = dfn }
      return self
    end,
  }
end

-- p:insert_before(name, new_name, fn) -> a handle like step()'s: puts a new step just
-- before the step called name (a site policy adding a check before "pause"). Raises
-- when there is no step called name.
function M:insert_before(name, new_name, fn)
  assert(type(new_name) == "string" and type(fn) == "function", "pipeline:insert_before(name, new_name, fn)")
  local at
  for i, s in ipairs(self.steps) do
    if s.name == name then at = i break end
  end
  if not at then error(("pipeline:insert_before: no step named %q"):format(tostring(name)), 2) end
  local handle = self:step(new_name, fn)
  table.insert(self.steps, at, table.remove(self.steps))
  return handle
end

local function emit(self, ev)
  if self.on_event then pcall(self.on_event, ev) end
end

-- Run fn(ctx) and normalise failure: raising and returning nil, err both fail.
local function call(fn, ctx)
  local r = table.pack(pcall(fn, ctx))
  if not r[1] then return false, r[2] end
  if r.n >= 3 and r[2] == nil and r[3] ~= nil then return false, r[3] end
  return true, r[2]
end

local function record(self, kind, name, t0, ok, err)
  local entry = {
    kind = kind, name = name, started = t0, duration = task.now() - t0,
    status = ok and "ok" or "failed", error = err and tostring(err) or nil,
  }
  self.report.steps[#self.report.steps + 1] = entry
  emit(self, { phase = "done", kind = kind, name = name, duration = entry.duration, ok = ok, error = entry.error })
  return entry
end

-- Run one defer under the cleanup timeout -> nil | the failure message.
local function run_defer(self, d, ctx)
  emit(self, { phase = "start", kind = "defer", name = d.name })
  local t0 = task.now()
  -- call never raises; task.timeout gives call's (ok, err) or nil, msg, "timeout".
  local pok, r1, r2 = pcall(task.timeout, self.cleanup_timeout, call, d.fn, ctx)
  local dok, derr
  if not pok then
    dok, derr = false, r1
  elseif r1 == nil then
    dok, derr = false, r2
  else
    dok, derr = r1, r2
  end
  record(self, "defer", d.name, t0, dok and true or false, not dok and derr or nil)
  if not dok then
    self.log.error { event = "defer_failed", step = d.name, error = tostring(derr) }
    return ("%s: %s"):format(d.name, tostring(derr))
  end
end

-- p:run(ctx) -> true | nil, err. Task only; yields. ctx is passed to every action.
-- Whoever cancels the run for a reason other than a signal sets ctx.cancel_reason
-- first: the step that was cut short fails with it.
function M:run(ctx)
  ctx = ctx or {}
  local deferred, failure = {}, nil
  local t_start = task.now()
  for _, s in ipairs(self.steps) do
    if s.defer then deferred[#deferred + 1] = s.defer end
    emit(self, { phase = "start", kind = "step", name = s.name })
    local t0 = task.now()
    local ok, err = call(s.fn, ctx)
    if not ok and err == "cancelled" then err = ctx.cancel_reason or "interrupted (cancelled by a signal)" end
    record(self, "step", s.name, t0, ok, not ok and err or nil)
    if not ok then
      failure = ("%s: %s"):format(s.name, tostring(err))
      self.log.error { event = "step_failed", step = s.name, error = tostring(err) }
      break
    end
  end
  -- Under a shield: a signal (a cancel) during clean-up must not abort the undo that
  -- is running, nor the tasks it runs in (task.all, task.timeout), nor skip the next.
  task.shield(function()
    for i = #deferred, 1, -1 do
      local f = run_defer(self, deferred[i], ctx)
      failure = failure or f
    end
  end)
  self.report.total = task.now() - t_start
  self.report.ok = failure == nil
  self.report.error = failure
  if failure then return nil, failure end
  return true
end

return M
