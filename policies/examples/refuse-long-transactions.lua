-- refuse-long-transactions: the standard failover plus one check, just before the
-- pause, that refuses (fails the failover, undoing the lock and the sleepInterval)
-- while a transaction older than --max-transaction-age is open on the primary.
--
-- Why: PAUSE waits for every open transaction to finish. A long one holds the pause
-- until --pause-timeout, and meanwhile every other client's query queues behind the
-- pause: the whole application stalls for the timeout and the failover fails anyway.
-- Better refuse before anything is paused and let the operator deal with the
-- transaction (or retry later).
--
--   stolon-pgbouncer failover --policy policies/examples/refuse-long-transactions.lua \
--     --max-transaction-age 10s \
--     --activity-conninfo 'host={{.Host}} port={{.Port}} dbname=postgres user=monitor' \
--     --cluster-name main --store-endpoints http://etcd:2379 ...
--
-- The check reads pg_stat_activity on the current primary. Postgres shows another
-- role's xact_start only to superusers and members of pg_monitor (or
-- pg_read_all_stats): give the --activity-conninfo role one of those, or it sees
-- only its own sessions. Without --activity-conninfo the --write-probe template is
-- used. When the primary cannot be asked, the failover is refused too: we cannot
-- promise the pause will be short.
local common = require "common"
local failover = require "failover"
local flags = require "flags"
local pg = require "pg"
local template = require "template"

-- The default limit; a site may simply edit this line instead of passing the flag.
local MAX_TRANSACTION_AGE = "10s"

local spec = common.spec(failover.flags, {
  { name = "max-transaction-age", type = "duration", default = MAX_TRANSACTION_AGE,
    help = "Refuse to fail over while a transaction older than this is open on the primary" },
  { name = "activity-conninfo", default = "",
    help = "libpq conninfo template ({{.Host}}, {{.Port}}) to read pg_stat_activity on the primary "
      .. "(default: --write-probe's)" },
})
local opts = flags.parse_or_exit(spec, arg, { command = "failover",
  description = "Run a zero-downtime failover, refusing while a long transaction is open on the primary" })
local f = failover.setup(opts)

local LONG_TRANSACTIONS = [[
SELECT pid, usename, datname, state, client_addr,
       round(extract(epoch FROM clock_timestamp() - xact_start)::numeric, 1) AS age
  FROM pg_stat_activity
 WHERE xact_start IS NOT NULL
   AND pid <> pg_backend_pid()
   AND backend_type = 'client backend'
   AND clock_timestamp() - xact_start > make_interval(secs => $1::float8)
 ORDER BY xact_start
]]

-- primary_conninfo() -> conninfo of the current primary | nil, err
local function primary_conninfo()
  local text = opts.activity_conninfo ~= "" and opts.activity_conninfo or opts.write_probe
  if text == "" then return nil, "set --activity-conninfo (or --write-probe) so open transactions can be checked" end
  local cd, err = common.read_clusterdata(f.client, f.key)
  if not cd then return nil, err end
  local m = cd:master()
  if not m or not m.host then return nil, "no master in clusterdata" end
  local t, terr = template.compile(text, "--activity-conninfo")
  if not t then return nil, terr end
  return t:render { Host = m.host, Port = m.port or "5432" }
end

local function refuse_long_transactions()
  local limit = opts.max_transaction_age
  f.log.info { event = "check_long_transactions", max_age = limit, msg = "looking for long transactions on the primary" }
  local conninfo, cerr = primary_conninfo()
  if not conninfo then return nil, cerr end
  local conn, err = pg.connect(conninfo, { timeout = 5 })
  if not conn then return nil, "cannot check for long transactions on the primary: " .. tostring(err) end
  local rows, qerr = conn:query_opts { sql = LONG_TRANSACTIONS, params = { limit }, timeout = 5 }
  conn:close()
  if not rows then return nil, "cannot check for long transactions on the primary: " .. tostring(qerr) end
  if #rows == 0 then return true end
  for _, r in ipairs(rows) do
    f.log.warn { event = "long_transaction", pid = r.pid, user = r.usename, database = r.datname, state = r.state,
      client = r.client_addr, age = r.age }
  end
  local oldest = rows[1]
  return nil, ("refusing to fail over: %d transaction(s) open longer than %ss on the primary "
    .. "(oldest: pid %s, user %s, %ss, %s); PAUSE would stall every client"):format(#rows, limit, oldest.pid,
    oldest.usename or "?", oldest.age, oldest.state or "?")
end

-- The shipped procedure (`stolon-pgbouncer policy show failover`), with one step added
-- before the pause.
local p = f:new_pipeline()
p:step("check_cluster_healthy", f:step "check_cluster_healthy")
p:step("health_check_clients", f:step "health_check_clients")
p:step("acquire_lock", f:step "acquire_lock"):defer("release_lock", f:step "release_lock")
p:step("shorten_sleep_interval", f:step "shorten_sleep_interval")
  :defer("restore_sleep_interval", f:step "restore_sleep_interval")
p:step("refuse_long_transactions", refuse_long_transactions) -- ours: before anything is paused
p:step("pause", f:step "pause"):defer("resume", f:step "resume")
p:step("failkeeper", f:step "failkeeper")
p:step("wait_for_recovery", f:step "wait_for_recovery")
p:step("write_probe", f:step "write_probe")
return f:run(p)
