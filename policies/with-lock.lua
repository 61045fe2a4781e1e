-- with-lock: run a command while holding the failover lock, so no failover starts
-- meanwhile (and the command waits for a running one to finish).
--
--   stolon-pgbouncer with-lock [flags] CMD [ARGS...]
--
-- Exit status: the command's own when it succeeds (0); 1 on an error of ours (bad
-- flags aside, which exit 2 as everywhere); 2 when the lock could not be taken within
-- --lock-timeout; 3 when the command failed (exited non-zero or was killed).
-- The command is executed directly (no shell); its output goes to ours.
local common = require "common"
local flags = require "flags"
local log = require "log"
local proc = require "proc"
local task = require "task"

local spec = common.spec(common.global_flags, common.stolon_flags, common.manager_flags, {
  { name = "lock-timeout", type = "duration", default = "5s", help = "Timeout for acquiring failover lock" },
  { name = "lock-ttl", type = "duration", default = "15s", help = "Lease of the lock if we are killed" },
})
local opts, cmd = flags.parse_or_exit(spec, arg, { command = "with-lock", args = " CMD [ARGS...]",
  interspersed = false, description = "Run a command while holding the failover lock" })
common.setup_logging(opts)
local L = log.with { component = "with-lock" }
if #cmd == 0 then
  io.stderr:write("stolon-pgbouncer with-lock: a command is required\n")
  return 1
end

local client, cerr = common.connect_store(opts)
if not client then
  L.error { event = "store_connect_failed", error = cerr }
  return 1
end
local name = common.lock_name(opts)
local lock, lerr, code = client:lock(name, { timeout = opts.lock_timeout, ttl = opts.lock_ttl })
if not lock then
  L.error { event = "lock_failed", lock = name, error = tostring(lerr) }
  return code == "timeout" and 2 or 1
end
L.info { event = "lock_acquired", lock = name }

local p, perr = proc.spawn(cmd)
local status
if not p then
  L.error { event = "command_failed", error = tostring(perr) }
  status = 3
else
  -- pass INT/TERM on to the command; we keep the lock until it has exited
  for _, sig in ipairs { "INT", "TERM", "QUIT", "HUP" } do
    task.on_signal(sig, function(s) p:signal(s) end)
  end
  local rc, sig = p:wait()
  if rc == 0 then
    status = 0
  else
    L.error { event = "command_failed", exit_code = tostring(rc), signal = tostring(sig) }
    status = 3
  end
end
local ok, uerr = lock:unlock()
if not ok then
  L.error { event = "unlock_failed", error = tostring(uerr), msg = "the lease expires by itself" }
  if status == 0 then status = 1 end
end
L.info { event = "lock_released", lock = name }
return status
