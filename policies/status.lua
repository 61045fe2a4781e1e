-- status: every keeper's pauser health, and the cluster as its manager (stolon, or
-- Patroni with --manager patroni) sees it.
local common = require "common"
local failover = require "failover"
local flags = require "flags"
local task = require "task"
local null = require("cjson.safe").null

local spec = common.spec(common.global_flags, common.stolon_flags, common.manager_flags, common.token_flags, {
  { name = "pauser-port", default = "8080", help = "Port on which the pauser APIs are listening" },
  { name = "pauser-scheme", default = "http", help = "http or https for the pauser API" },
  { name = "pauser-ca-file", default = "", help = "CA bundle to verify HTTPS pausers" },
  { name = "extra-pauser", type = "list", default = "", help = "More pausers to show (host:port)" },
  { name = "timeout", type = "duration", default = "5s", help = "Timeout for fetching the status" },
  { name = "format", default = "table", help = "table (for people) or json (for programs: stable field names)" },
})
local opts = flags.parse_or_exit(spec, arg, { command = "status",
  description = "Show information about the current status of the cluster" })
if opts.format ~= "table" and opts.format ~= "json" then
  io.stderr:write(("stolon-pgbouncer status: --format %q: want table or json\n"):format(opts.format))
  return 2
end
-- Reuse the failover's set-up (store, clusterdata, pauser clients) with our flags.
local ok, f = pcall(failover.setup, opts)
if not ok then
  io.stderr:write("stolon-pgbouncer status: ", tostring(f), "\n")
  return 1
end

-- One row per pauser: the fields of `--format json` (documented in the README; they
-- are stable, new ones may be added). Every field is present; null when unknown.
local function pauser_rows(results)
  local rows = {}
  for i, c in ipairs(f.pausers) do
    local r = results[i][1] or {}
    local body, err = r[1], r[2]
    local dbs = {}
    for _, db in ipairs(body and body.databases or {}) do
      dbs[#dbs + 1] = { name = db.name, host = db.host, port = db.port }
    end
    rows[i] = {
      name = c.name,
      endpoint = (c.base:gsub("^%a+://", "")),
      status = body and (body.paused and "paused" or "healthy") or "unhealthy",
      error = (not body and err) and tostring(err) or null,
      databases = body and dbs or null,
    }
  end
  return rows
end

-- members_table(report): Patroni's members as `patronictl list` shows them, plus
-- the status of each member's pauser.
local function members_table(report)
  local pauser_of = {}
  for _, p in ipairs(report.pausers) do pauser_of[p.name] = p.status end
  io.stdout:write(("%-12s %-22s %-14s %-10s %-4s %-10s %s\n"):format("MEMBER", "HOST", "ROLE", "STATE", "TL",
    "LAG (B)", "PAUSER"))
  for _, m in ipairs(report.members) do
    io.stdout:write(("%-12s %-22s %-14s %-10s %-4s %-10s %s\n"):format(m.name, ("%s:%s"):format(m.host, m.port),
      m.role, m.state, m.timeline ~= null and tostring(m.timeline) or "", m.lag ~= null and tostring(m.lag) or "",
      (pauser_of[m.name] or "-"):upper()))
  end
  io.stdout:write("\n")
end

local function print_table(report)
  local master = report.master
  io.stdout:write(("cluster %s: master %s; %s\n\n"):format(report.cluster,
    master ~= null and ("%s (%s)"):format(master.keeper or "?", master.host or "?") or "none",
    report.can_lose_one_node and "can lose one node" or ("NOT healthy: " .. report.health_detail)))
  if report.members then members_table(report) end
  io.stdout:write(("%-12s %-22s %-10s %s\n"):format("KEEPER", "PAUSER", "STATUS", "DETAIL"))
  for _, p in ipairs(report.pausers) do
    local detail = p.error ~= null and p.error or ""
    if p.databases ~= null then
      local hosts = {}
      for _, db in ipairs(p.databases) do
        hosts[#hosts + 1] = ("%s->%s:%s"):format(db.name, db.host or "?", db.port or "?")
      end
      detail = table.concat(hosts, " ")
    end
    io.stdout:write(("%-12s %-22s %-10s %s\n"):format(p.name, p.endpoint, p.status:upper(), detail))
  end
end

local cd = f.initial
local hc = {}
for i, c in ipairs(f.pausers) do
  hc[i] = function() return table.pack(c:health(opts.timeout)) end
end
local res = task.all(hc)
local master = f.model.primary(cd)
local healthy, why = f.model.can_lose_primary(cd)
local report = {
  cluster = f.patroni and opts.patroni_scope or opts.cluster_name,
  master = master and { keeper = master.keeper or master.name or null, db_uid = master.uid or null,
    host = master.host or null,
    port = tonumber(master.port) or master.port or null } or null,
  can_lose_one_node = healthy and true or false,
  health_detail = not healthy and tostring(why) or null,
  pausers = pauser_rows(res),
}
-- Patroni: the members as `patronictl list` shows them (a field stolon's report lacks)
if f.patroni then
  report.members = {}
  for i, m in ipairs(require("patroni").members_table(cd)) do
    report.members[i] = { name = m.name, host = m.host, port = tonumber(m.port) or m.port, role = m.role,
      state = m.state, timeline = m.timeline or null, lag = m.lag or null, nofailover = m.nofailover }
  end
end
local all_ok = true
for _, p in ipairs(report.pausers) do
  if p.status == "unhealthy" then all_ok = false end
end
if opts.format == "json" then
  io.stdout:write(common.json(report), "\n")
else
  print_table(report)
end
return all_ok and 0 or 1
