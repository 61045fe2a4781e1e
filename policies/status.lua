-- status: every keeper's pauser health, and the cluster as stolon sees it.
local common = require "common"
local failover = require "failover"
local flags = require "flags"
local task = require "task"

local spec = common.spec(common.global_flags, common.stolon_flags, common.token_flags, {
  { name = "pauser-port", default = "8080", help = "Port on which the pauser APIs are listening" },
  { name = "pauser-scheme", default = "http", help = "http or https for the pauser API" },
  { name = "pauser-ca-file", default = "", help = "CA bundle to verify HTTPS pausers" },
  { name = "extra-pauser", type = "list", default = "", help = "More pausers to show (host:port)" },
  { name = "timeout", type = "duration", default = "5s", help = "Timeout for fetching the status" },
})
local opts = flags.parse_or_exit(spec, arg, { command = "status",
  description = "Show information about the current status of the cluster" })
-- Reuse the failover's set-up (store, clusterdata, pauser clients) with our flags.
local ok, f = pcall(failover.setup, opts)
if not ok then
  io.stderr:write("stolon-pgbouncer status: ", tostring(f), "\n")
  return 1
end

local cd = f.initial
local hc = {}
for i, c in ipairs(f.pausers) do
  hc[i] = function() return table.pack(c:health(opts.timeout)) end
end
local res = task.all(hc)
local master = cd:master()
local healthy, why = cd:check_healthy(1)
io.stdout:write(("cluster %s: master %s; %s\n\n"):format(opts.cluster_name,
  require("stolon").describe(master), healthy and "can lose one node" or ("NOT healthy: " .. why)))
io.stdout:write(("%-12s %-22s %-10s %s\n"):format("KEEPER", "PAUSER", "STATUS", "DETAIL"))
local all_ok = true
for i, c in ipairs(f.pausers) do
  local r = res[i][1] or {}
  local body, err = r[1], r[2]
  local status = body and (body.paused and "PAUSED" or "HEALTHY") or "UNHEALTHY"
  local detail = ""
  if body and body.databases then
    local hosts = {}
    for _, db in ipairs(body.databases) do hosts[#hosts + 1] = ("%s->%s:%s"):format(db.name, db.host or "?", db.port or "?") end
    detail = table.concat(hosts, " ")
  elseif err then
    detail = tostring(err)
    all_ok = false
  end
  io.stdout:write(("%-12s %-22s %-10s %s\n"):format(c.name, c.base:gsub("^%a+://", ""), status, detail))
end
return all_ok and 0 or 1
