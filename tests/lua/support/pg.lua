-- Test helper: real PostgreSQL 15 and PgBouncer servers on loopback, in temporary
-- folders, as the postgres user when we run as root. Task only (every function
-- yields). Reused by the pg, pgbouncer, playground and failover suites.
--
--   local P = require "support.pg"
--   local db = P.start_postgres{host = "127.0.0.1", port = P.free_port()}
--   db.host, db.port, db.dir, db:psql("select 1"), db:conninfo(), db:stop()
--   local sb = P.start_postgres{host = "127.0.0.2", primary = db}   -- a streaming standby
--   local b = P.start_pgbouncer{host = "127.0.0.1", port = P.free_port(), target = db}
--   b.host, b.port, b.dir, b.socket_dir, b:admin_conninfo(), b:conninfo(dbname),
--   b:signal("STOP"), b:paused(), b:restart(), b:stop()
local proc = require "proc"
local task = require "task"
local pg = require "pg"

local M = {}

M.bindir = "/usr/lib/postgresql/15/bin"
M.pgbouncer = "/usr/sbin/pgbouncer"

local function run(argv, what)
  local code, out, err = proc.run(argv)
  if code ~= 0 then
    error(("%s failed (%s): %s%s"):format(what or argv[1], tostring(code), out or "", err or ""), 2)
  end
  return out
end

local is_root_cache
-- True when we run as root: servers then run as the postgres user.
function M.is_root()
  if is_root_cache == nil then
    is_root_cache = run({ "id", "-u" }):match("^%s*(%d+)") == "0"
  end
  return is_root_cache
end

-- as_user(argv): as root, run as postgres, from a folder that user can enter (a
-- checkout in /root is not one)
local function as_user(argv)
  if M.is_root() then argv.user, argv.cwd = "postgres", argv.cwd or "/tmp" end
  return argv
end

-- A fresh temporary folder, owned by postgres when we are root.
function M.tmpdir(prefix)
  local dir = run({ "mktemp", "-d", "/tmp/" .. (prefix or "spgb-pg") .. ".XXXXXX" }):gsub("%s+$", "")
  if M.is_root() then run({ "chown", "postgres:postgres", dir }) end
  return dir
end

local function write_file(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
  if M.is_root() then run({ "chown", "postgres:postgres", path }) end
end

-- Whether any TCP socket (listening or connected) uses port on host.
local function in_use(host, port)
  local code, out = proc.run({ "ss", "-Hatn", ("sport = :%d"):format(port) })
  if code ~= 0 then return false end
  return out:find(host .. ":" .. port, 1, true) ~= nil or out:find("*:" .. port, 1, true) ~= nil
    or out:find("0.0.0.0:" .. port, 1, true) ~= nil
end

-- A TCP port nothing uses, in 30000..32700: below the kernel's ephemeral range
-- (32768-60999 here), where an outgoing connection can take a port between our
-- check and the server's bind, and above every fixed port the suites use.
function M.free_port(host)
  for _ = 1, 50 do
    local port = math.random(30000, 32700)
    if not in_use(host or "127.0.0.1", port) then return port end
  end
  error("support.pg.free_port: no free port found")
end

-- eventually(seconds, fn [, step]) -> fn's value | nil, last error: retry fn()
-- (pcall'ed) until it returns a truthy value, for at most `seconds`. The one retry
-- loop of the suites and benchmarks.
function M.eventually(seconds, fn, step)
  local deadline = task.now() + seconds
  local last
  repeat
    local ok, v, err = pcall(fn)
    if ok and v then return v end
    last = ok and err or v
    task.sleep(step or 0.05)
  until task.now() > deadline
  return nil, last
end

-- stop(p [, seconds=10]): TERM, then KILL when it outlives seconds.
local function stop_proc(p, seconds)
  if not p or not p:running() then return end
  p:signal("TERM")
  if not p:wait(seconds or 10) then
    p:signal("KILL")
    p:wait(5)
  end
end

M.stop = stop_proc

-- Start a server (argv) and wait until `sql` answers on conninfo; raise with its
-- stderr when it exits or does not answer in `seconds`. -> the proc.
local function spawn_ready(what, server, argv, conninfo, sql, seconds)
  local p, err = proc.spawn(argv)
  if not p then error(("start %s: %s"):format(what, tostring(err))) end
  local ok, why = M.eventually(seconds, function()
    if not p:running() then
      local _, errout = p:output()
      error(what .. " exited: " .. errout)
    end
    local c, e = pg.connect(conninfo, { timeout = 2 })
    if not c then return nil, e end
    local rows = c:query(sql)
    c:close()
    return rows ~= nil
  end)
  if not ok then
    stop_proc(p)
    local _, errout = p:output()
    error(("%s on %s:%d did not start: %s %s"):format(what, server.host, server.port, tostring(why), errout))
  end
  return p
end

local Postgres = {}
Postgres.__index = Postgres

-- libpq keywords for this server (a table for pg.connect).
function Postgres:conninfo(dbname, user)
  return { host = self.host, port = self.port, dbname = dbname or "postgres",
           user = user or "postgres" }
end

-- Run sql through psql; returns its output (unaligned, tuples only); raises on failure.
function Postgres:psql(sql, dbname)
  return run({ self.bindir .. "/psql", "-X", "-v", "ON_ERROR_STOP=1", "-At",
               "-h", self.host, "-p", tostring(self.port), "-U", "postgres",
               "-d", dbname or "postgres", "-c", sql }, "psql")
end

-- Start the server again after stop() (same folder and settings).
function Postgres:start()
  local argv = as_user({ self.bindir .. "/postgres", "-D", self.data,
    "-c", "listen_addresses=" .. self.host, "-c", "port=" .. self.port,
    "-c", "unix_socket_directories=" .. self.dir, "-c", "fsync=off",
    "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
    "-c", "max_connections=" .. self.max_connections,
    "-c", "wal_level=replica", "-c", "max_wal_senders=10", "-c", "hot_standby=on",
    "-c", "logging_collector=off", "-c", "log_min_messages=warning",
    stdout = "null", stderr = "capture", stdin = "null" })
  for _, kv in ipairs(self.settings or {}) do
    argv[#argv + 1] = "-c"
    argv[#argv + 1] = kv
  end
  self.proc = spawn_ready("postgres", self, argv, self:conninfo(), "select 1 as ok", self.start_timeout or 30)
  return self
end

-- Stop the server (fast shutdown: SIGINT), waiting for it to exit.
function Postgres:stop()
  local p = self.proc
  if not p or not p:running() then return end
  p:signal("INT")
  if not p:wait(20) then
    p:signal("KILL")
    p:wait(5)
  end
end

-- Stop and remove the folder.
function Postgres:destroy()
  self:stop()
  if self.dir and not self.keep then proc.run({ "rm", "-rf", self.dir }) end
end

--[[ M.start_postgres{host="127.0.0.1", port=, primary=<Postgres>, settings={"k=v"},
  hba={"host all all 10.0.0.0/8 trust"}, max_connections=100, keep=false}
  A primary (initdb, trust for loopback) or, with primary=, a streaming standby
  (pg_basebackup -R). Returns a started Postgres object. ]]
function M.start_postgres(o)
  o = o or {}
  local self = setmetatable({
    host = o.host or "127.0.0.1", port = o.port or M.free_port(o.host),
    bindir = M.bindir, settings = o.settings, keep = o.keep,
    max_connections = o.max_connections or 100, start_timeout = o.start_timeout,
  }, Postgres)
  self.dir = M.tmpdir("spgb-pg")
  self.data = self.dir .. "/data"
  if o.primary then
    run(as_user({ self.bindir .. "/pg_basebackup", "-h", o.primary.host,
      "-p", tostring(o.primary.port), "-U", "postgres", "-D", self.data,
      "-R", "-X", "stream", "--no-sync" }), "pg_basebackup")
  else
    run(as_user({ self.bindir .. "/initdb", "-D", self.data, "-U", "postgres",
      "-A", "trust", "--no-sync", "-E", "UTF8", "--locale=C" }), "initdb")
    local hba = { "local all all trust", "host all all 127.0.0.0/8 trust",
                  "host replication all 127.0.0.0/8 trust", "local replication all trust" }
    for _, l in ipairs(o.hba or {}) do hba[#hba + 1] = l end
    write_file(self.data .. "/pg_hba.conf", table.concat(hba, "\n") .. "\n")
  end
  return self:start()
end

local Bouncer = {}
Bouncer.__index = Bouncer

-- libpq keywords for the admin console (dbname pgbouncer) over TCP.
function Bouncer:admin_conninfo(user)
  user = user or self.admin_user
  return { host = self.host, port = self.port, dbname = "pgbouncer", user = user,
           password = self.users[user] }
end

-- libpq keywords for a database through PgBouncer.
function Bouncer:conninfo(dbname, user)
  user = user or "postgres"
  return { host = self.host, port = self.port, dbname = dbname or "postgres", user = user,
           password = self.users[user] }
end

-- Options for pgbouncer.connect.
function Bouncer:admin_options(extra)
  local o = { host = self.host, port = self.port, user = self.admin_user,
              password = self.users[self.admin_user] }
  for k, v in pairs(extra or {}) do o[k] = v end
  return o
end

function Bouncer:signal(name)
  return self.proc:signal(name)
end

-- Whether PgBouncer holds queries, asked the way a client notices: a whole-pooler
-- PAUSE shows in no SHOW column of 1.18 (no SHOW STATE). A held login counts (a
-- PgBouncer that restarted paused has no server parameters to greet a client with).
-- A probe dropped while PgBouncer waits for a server login counts as a failed login,
-- after which PgBouncer refuses logins for server_login_retry (1 s): ask again.
function Bouncer:paused()
  for _ = 1, 3 do
    local conn, cerr, ccode = pg.connect(self:conninfo("postgres"), { timeout = 3 })
    if not conn then
      assert(ccode == "timeout", cerr)
      return true
    end
    local rows, err, code = conn:query_opts { sql = "SELECT 1", timeout = 0.5 }
    conn:close()
    if rows then return false end
    if code == "timeout" then return true end
    assert(tostring(err):find("server login has been failing", 1, true), err)
    task.sleep(1.1)
  end
  error("PgBouncer kept refusing logins")
end

function Bouncer:start()
  self.proc = spawn_ready("pgbouncer", self, as_user({ M.pgbouncer, self.ini, stdin = "null", stdout = "null",
    stderr = "capture" }), self:admin_conninfo(), "SHOW VERSION", 20)
  return self
end

-- Immediate shutdown (SIGTERM in 1.18), waiting for the process to exit.
function Bouncer:stop()
  stop_proc(self.proc)
end

function Bouncer:restart()
  self:stop()
  return self:start()
end

function Bouncer:destroy()
  self:stop()
  if self.dir and not self.keep then proc.run({ "rm", "-rf", self.dir }) end
end

-- Rewrite pgbouncer.ini (for example after changing self.databases); RELOAD is
-- left to the caller.
function Bouncer:write_config()
  local dbs = {}
  for name, d in pairs(self.databases) do
    dbs[#dbs + 1] = ("%s = host=%s port=%d dbname=%s"):format(name, d.host, d.port, d.dbname or name)
  end
  table.sort(dbs)
  local admins = {}
  for name in pairs(self.users) do admins[#admins + 1] = name end
  table.sort(admins)
  local lines = {
    "[databases]", table.concat(dbs, "\n"), "",
    "[pgbouncer]",
    "listen_addr = " .. self.host,
    "listen_port = " .. self.port,
    "unix_socket_dir = " .. self.socket_dir,
    "auth_type = " .. self.auth_type,
    "auth_file = " .. self.dir .. "/userlist.txt",
    "admin_users = " .. self.admin_user,
    "stats_users = " .. table.concat(admins, ","),
    "pool_mode = " .. self.pool_mode,
    "server_login_retry = 1",
    "max_client_conn = 1000",
    "default_pool_size = 20",
    "ignore_startup_parameters = extra_float_digits",
    "pidfile = " .. self.dir .. "/pgbouncer.pid",
    "log_connections = 0", "log_disconnections = 0",
  }
  for k, v in pairs(self.settings or {}) do lines[#lines + 1] = ("%s = %s"):format(k, v) end
  write_file(self.ini, table.concat(lines, "\n") .. "\n")
  local ul = {}
  for name, pw in pairs(self.users) do ul[#ul + 1] = ('"%s" "%s"'):format(name, pw) end
  table.sort(ul)
  write_file(self.dir .. "/userlist.txt", table.concat(ul, "\n") .. "\n")
end

--[[ M.start_pgbouncer{host="127.0.0.1", port=, target=<Postgres> (or databases=
  {name={host=, port=, dbname=}}), auth_type="trust"|"md5", users={name=password}
  (default {postgres="postgres", pgbouncer="pgbouncer"}), admin_user="pgbouncer",
  pool_mode="transaction", settings={key=value}, keep=false}
  Returns a started Bouncer; its unix socket is in b.socket_dir. ]]
function M.start_pgbouncer(o)
  o = o or {}
  local self = setmetatable({
    host = o.host or "127.0.0.1", port = o.port or M.free_port(o.host),
    auth_type = o.auth_type or "trust", pool_mode = o.pool_mode or "transaction",
    users = o.users or { postgres = "postgres", pgbouncer = "pgbouncer" },
    admin_user = o.admin_user or "pgbouncer", settings = o.settings, keep = o.keep,
  }, Bouncer)
  self.databases = o.databases
  if not self.databases then
    local t = assert(o.target, "start_pgbouncer needs target= or databases=")
    self.databases = { postgres = { host = t.host, port = t.port, dbname = "postgres" } }
  end
  self.dir = M.tmpdir("spgb-pgbouncer")
  self.socket_dir = self.dir
  self.ini = self.dir .. "/pgbouncer.ini"
  self:write_config()
  return self:start()
end

return M
