-- Test helper for the Patroni suites: the PgBouncer config template they supervise
-- (transaction pooling, trust auth, one database "postgres" at {{.Host}}:{{.Port}}).
--
--   local PT = require "support.patroni"
--   PT.pgbouncer_template{dir=, host=, port=, comment=} -> template text
--   PT.reloads(dir) -> RELOADs in dir/pgbouncer.log; PT.db_host(admin) -> where
--   database "postgres" points (SHOW DATABASES through the admin connection)
local fs = require "fs"

local M = {}

function M.reloads(dir)
  local n = 0
  for _ in (fs.read(dir .. "/pgbouncer.log") or ""):gmatch("RELOAD command issued") do n = n + 1 end
  return n
end

function M.db_host(admin)
  for _, r in ipairs(admin:show("DATABASES") or {}) do
    if r.name == "postgres" then return r.host end
  end
end

-- pgbouncer_template{dir=, host=, port=, comment=}: dir holds userlist.txt, the
-- log, the pidfile and the unix socket; comment is an extra line for [databases].
function M.pgbouncer_template(o)
  return require("support.template").pgbouncer { dir = o.dir, host = o.host, port = o.port,
    databases = "postgres = host={{.Host}} port={{.Port}} dbname=postgres user=postgres", database_extra = o.comment }
end

return M
