-- playground.procstat: a process's /proc/PID/stat as numbered fields, the way
-- proc(5) numbers them (1 pid, 2 comm, 3 state, 6 session, 14 utime, 15 stime,
-- 22 starttime). The one parser of that file for the playground, its specs and the
-- benchmarks. Any context; does not yield.
local fs = require "fs"

local M = {}

-- fields(pid) -> {[1] = pid, [2] = comm, [3] = state, ...} (strings) | nil when the
-- process is gone. comm may hold spaces and parentheses: it ends at the last ")".
function M.fields(pid)
  local text = fs.read(("/proc/%d/stat"):format(pid))
  if not text then return nil end
  local comm, rest = text:match("^%d+ %((.*)%) (.*)$")
  if not comm then return nil end
  local f = { tostring(pid), comm }
  for w in rest:gmatch("%S+") do f[#f + 1] = w end
  return f
end

return M
