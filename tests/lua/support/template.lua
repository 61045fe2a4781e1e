-- Test helper: the PgBouncer config template the supervise suites render (transaction
-- pooling, trust auth, admin user pgbouncer, server_login_retry 1, one database
-- "postgres" at {{.Host}}:{{.Port}} unless databases= says otherwise).
--
--   local T = require "support.template"
--   T.pgbouncer{dir=, host=, port=, ...} -> template text
--   T.supervise_argv({dir=, port=, ...}, {more flags}) -> {"supervise", ...}
--
-- o: dir (userlist.txt, the log, the pidfile and, unless socket_dir=, the unix
-- socket), host, port; head = a first line (a comment, so error positions in the
-- template are known), databases = the [databases] body, database_extra = a line
-- after it, settings = more [pgbouncer] lines, no_pidfile = true,
-- extra_float_digits = false (drops ignore_startup_parameters).
local M = {}

function M.pgbouncer(o)
  local lines = {}
  local function add(line) lines[#lines + 1] = line end
  if o.head then add(o.head) end
  add("[databases]")
  add(o.databases or "postgres = host={{.Host}} port={{.Port}} dbname=postgres")
  add(o.database_extra or "")
  add("[pgbouncer]")
  add("listen_addr = " .. o.host)
  add("listen_port = " .. o.port)
  add("unix_socket_dir = " .. (o.socket_dir or o.dir))
  add("auth_type = trust")
  add("auth_file = " .. o.dir .. "/userlist.txt")
  add("admin_users = pgbouncer")
  add("pool_mode = transaction")
  add("server_login_retry = 1")
  for _, s in ipairs(o.settings or {}) do add(s) end
  add("logfile = " .. o.dir .. "/pgbouncer.log")
  if not o.no_pidfile then add("pidfile = " .. o.dir .. "/pgbouncer.pid") end
  if o.extra_float_digits ~= false then add("ignore_startup_parameters = extra_float_digits") end
  add("")
  return table.concat(lines, "\n")
end

-- supervise_argv(o, extra) -> the argv of a supervise the suites start: config
-- o.config (default dir/pgbouncer.ini) from template o.template (default
-- dir/pgbouncer.ini.template), socket folder o.socket_dir (default dir), PgBouncer on
-- o.port, the packaged PgBouncer, no drain wait at exit; then every flag in extra
-- (the manager, the store, metrics, intervals).
function M.supervise_argv(o, extra)
  local argv = { "supervise", "--pgbouncer-config-file", o.config or o.dir .. "/pgbouncer.ini",
    "--pgbouncer-config-template-file", o.template or o.dir .. "/pgbouncer.ini.template",
    "--pgbouncer-socket-dir", o.socket_dir or o.dir, "--pgbouncer-port", tostring(o.port),
    "--pgbouncer-binary", require("support.pg").pgbouncer, "--termination-grace-period", "0s" }
  table.move(extra, 1, #extra, #argv + 1, argv)
  return argv
end

return M
