-- pause_lease: the failover's half of a pause that dies with its failover.
--
-- While anything is paused the failover holds a short etcd lease of its own (apart
-- from the lock's) and a key attached to it, `<clusterdata key>/pause/<lease hex>`.
-- Every PAUSE names that key (`lease_key`) and the lease (`lease`, its id in hex); a
-- pauser with store access watches the key and RESUMEs as soon as it is gone: deleted
-- when the lease expires (the failover was killed, OOM, its host lost) or revoked,
-- or absent when the pauser starts watching. The pause expiry stays the upper bound.
--
-- The keep-alive is the etcd client's (`c:lease`: a detached task, every ttl/3, each
-- attempt bounded so a failed one is retried within the TTL), so cancelling the
-- failover's task never ends it. A lease lost while the failover runs (etcd said it
-- expired, or no keep-alive was answered for nearly a TTL: the pausers are resuming
-- or have resumed) calls `on_lost(why)` once, from a detached task of its own.
--
--   local h, err = pause_lease.take { client = c, prefix = key .. "/pause/", ttl = 3,
--     on_lost = function(why) ... end }
--   h:body()      -- {lease_key=, lease=}: the fields a PAUSE carries
--   h:release()   -- revoke (deletes the key: pausers still paused resume), stop watching
local cjson = require "cjson.safe"
local log = require "log"
local task = require "task"

local M = {}
local Holder = {}
Holder.__index = Holder

-- How often the holder checks its lease, and how much earlier than the TTL it calls a
-- lease without an answered keep-alive lost: etcd renewed it before the answer came.
M.check_interval = 0.25
M.margin = 0.5

local function watch_lease(h)
  while not h.released do
    task.sleep(M.check_interval)
    if h.released then return end
    local l = h.lease
    local why
    if l.expired then
      why = "etcd reports the lease expired"
    elseif task.now() - l.renewed_at > l.ttl - M.margin then
      why = ("no keep-alive answered for %.1f s (lease TTL %d s)"):format(task.now() - l.renewed_at, l.ttl)
    end
    if why then
      h.lost = why
      log.error { event = "pause_lease_lost", lease = l.hex, key = h.key, error = why,
        msg = "pausers watching the lease resume now" }
      if h.on_lost then h.on_lost(why) end
      return
    end
  end
end

--- pause_lease.take{client=, prefix=, ttl= (seconds, rounded up to a whole second),
--- on_lost=fn(why)} -> holder | nil, err, code. Grants the lease and puts the key
--- attached to it. Task only; yields. A key that cannot be put revokes the lease.
function M.take(o)
  assert(type(o) == "table" and o.client and type(o.prefix) == "string", "pause_lease.take{client=, prefix=, ttl=}")
  local ttl = math.max(1, math.ceil(o.ttl))
  local lease, err, code = o.client:lease(ttl)
  if not lease then return nil, "pause lease: " .. tostring(err), code end
  local key = o.prefix .. lease.hex
  local value = cjson.encode { lease = lease.hex, ttl = lease.ttl, pid = o.pid }
  local ok, perr, pcode = o.client:put(key, value, { lease = lease.id })
  if not ok then
    lease:revoke()
    return nil, ("pause lease: put %s: %s"):format(key, tostring(perr)), pcode
  end
  local h = setmetatable({ lease = lease, key = key, hex = lease.hex, ttl = lease.ttl, on_lost = o.on_lost }, Holder)
  h.task = task.detached("pause-lease:" .. lease.hex, watch_lease, h)
  log.info { event = "pause_lease", lease = lease.hex, key = key, ttl = lease.ttl,
    msg = "pauses are tied to this lease: a killed failover releases them within the TTL" }
  return h
end

--- h:body() -> {lease_key=, lease=}: what a PAUSE carries to tie itself to the lease.
--- Any context.
function Holder:body()
  return { lease_key = self.key, lease = self.hex }
end

--- h:release() -> true | nil, err, code. Idempotent; stops the check first (a lease
--- given up on purpose is not "lost"), then revokes, which deletes the key. Task only;
--- yields; shielded like l:revoke().
function Holder:release()
  if self.released then return true end
  self.released = true
  if self.task then self.task:cancel() end
  return self.lease:revoke()
end

return M
