-- playground.pgnode: PostgreSQL 15 nodes for the local playground and the specs.
-- The one place that knows how to create, start, stop, promote, rewind and re-point
-- the playground's Postgres servers. Every server listens on its own loopback address
-- (127.0.0.11.. work on Linux's lo without setup) and in its own folder; when we run
-- as root every server program runs as the `postgres` user in folders it owns.
--
-- A node is a plain table: {name=, host=, port=, base=, dir= (data), sock= (socket
-- folder), log=, app_name= (application_name / db uid), slot=, primary= (node it
-- follows, nil for a primary), proc= (running postmaster)}.
-- All functions yield (they run programs or query the server): call them in a task.
-- Operational failures return nil, message; every wait is bounded.
local cjson = require "cjson.safe"
local proc = require "proc"
local task = require "task"
local has_pg, pg = pcall(require, "pg")
if not has_pg or type(pg) ~= "table" or not pg.connect then pg = nil end

local M = {}

M.BIN = os.getenv("PG_BIN") or "/usr/lib/postgresql/15/bin"
M.SUPERUSER = "postgres"
M.APP_USER = "app"
M.APP_DB = "app"
M.LOAD_TABLE = "loadgen"
M.TIMEOUT = 60 -- seconds; default bound for every wait

local function bin(name) return M.BIN .. "/" .. name end

---------------------------------------------------------------------------------------
-- Running programs as the server's owner.
---------------------------------------------------------------------------------------
local root
local function is_root()
  if root == nil then
    local code, out = proc.run{"id", "-u", timeout = 10}
    root = code == 0 and out:match("^0%s*$") ~= nil
  end
  return root
end
M.is_root = is_root

local function owner() return is_root() and M.SUPERUSER or nil end

local function trim(s) return (s or ""):gsub("%s+$", "") end

-- Run argv as the server owner; true | nil, message (with the program's stderr).
local function run(argv, timeout, stdin)
  local o = {timeout = timeout or M.TIMEOUT, user = owner(), stdin = stdin, cwd = "/tmp"}
  for i, a in ipairs(argv) do o[i] = a end
  local code, out, err = proc.run(o)
  if code == 0 then return true, out end
  if code == nil then return nil, string.format("%s: %s", argv[1], out) end
  return nil, string.format("%s exited %d: %s", argv[1], code, trim(err ~= "" and err or out))
end

-- Write text to path as the server owner (so its programs may replace the file).
local function write_file(path, text, append)
  return run({"sh", "-c", (append and 'cat >> "$1"' or 'cat > "$1"'), "sh", path}, 30, text)
end

local function read_tail(path, bytes)
  local f = io.open(path, "rb")
  if not f then return "" end
  local size = f:seek("end")
  f:seek("set", math.max(0, size - (bytes or 2000)))
  local s = f:read("a")
  f:close()
  return s
end

-- A fresh folder owned by the server owner: path | nil, err.
function M.tmpdir(prefix)
  local code, out, err = proc.run{"mktemp", "-d", "/tmp/" .. (prefix or "spgb-pg") .. ".XXXXXX", timeout = 10}
  if code ~= 0 then return nil, "mktemp: " .. tostring(err or out) end
  local dir = trim(out)
  if is_root() then
    local ok, e = proc.run{"chown", M.SUPERUSER .. ":", dir, timeout = 10}
    if ok ~= 0 then return nil, "chown: " .. tostring(e) end
  end
  return dir
end

-- Remove a folder made by tmpdir (after every server in it has stopped).
function M.remove_dir(dir)
  if type(dir) ~= "string" or not dir:match("^/tmp/[%w%-%._]+$") then
    return nil, "refusing to remove " .. tostring(dir)
  end
  local code, _, err = proc.run{"rm", "-rf", dir, timeout = 60}
  if code ~= 0 then return nil, "rm: " .. tostring(err) end
  return true
end

---------------------------------------------------------------------------------------
-- SQL.
---------------------------------------------------------------------------------------
local function quote_literal(s)
  return "'" .. tostring(s):gsub("'", "''") .. "'"
end
M.quote_literal = quote_literal

local function quote_ident(s)
  return '"' .. tostring(s):gsub('"', '""') .. '"'
end

-- libpq connection string for node (superuser unless user given).
function M.conninfo(node, dbname, user, extra)
  local s = string.format("host=%s port=%d user=%s dbname=%s", node.host, node.port,
                          user or M.SUPERUSER, dbname or "postgres")
  if extra then s = s .. " " .. extra end
  return s
end

local US, RS, NUL = "\31", "\30", "\29"

-- psql fallback for when the pg module is absent: rows keyed by column name.
local function psql_query(node, sql, dbname, timeout)
  local code, out, err = proc.run{
    bin("psql"), "-X", "-q", "-A", "-F", US, "-R", RS, "-P", "footer=off",
    "-P", "null=" .. NUL, "-v", "ON_ERROR_STOP=1", "-c", sql,
    M.conninfo(node, dbname, nil, "connect_timeout=5"), timeout = timeout or 30}
  if code ~= 0 then return nil, trim(err ~= "" and err or out) end
  local rows, fields = {}, nil
  for rec in (out:gsub("\n$", "") .. RS):gmatch("(.-)" .. RS) do
    local vals = {}
    for v in (rec .. US):gmatch("(.-)" .. US) do vals[#vals + 1] = v end
    if not fields then
      fields = vals
    elseif rec ~= "" then
      local row = {}
      for i, f in ipairs(fields) do
        if vals[i] ~= NUL then row[f] = vals[i] end
      end
      rows[#rows + 1] = row
    end
  end
  rows.fields = fields or {}
  return rows
end

-- M.query(node, sql [, dbname [, timeout]]) -> rows | nil, err. One connection per
-- call: these are control-plane queries, and a fresh connection tells health too.
function M.query(node, sql, dbname, timeout)
  if not pg then return psql_query(node, sql, dbname, timeout) end
  local conn, err = pg.connect(M.conninfo(node, dbname),
                               {timeout = 5, query_timeout = timeout or 30})
  if not conn then return nil, err end
  local rows, qerr = conn:query(sql)
  conn:close()
  if not rows then return nil, qerr end
  return rows
end

local function query1(node, sql, dbname)
  local rows, err = M.query(node, sql, dbname)
  if not rows then return nil, err end
  return rows[1] or {}
end

-- Poll fn() until it returns a truthy value or timeout seconds pass.
local function wait_for(what, timeout, fn, interval)
  local deadline = task.now() + (timeout or M.TIMEOUT)
  local last
  repeat
    local v, e = fn()
    if v then return v end
    last = e
    task.sleep(interval or 0.1)
  until task.now() >= deadline
  return nil, string.format("%s: timeout after %ss%s", what, timeout or M.TIMEOUT,
                            last and (" (" .. tostring(last) .. ")") or "")
end
M.wait_for = wait_for

---------------------------------------------------------------------------------------
-- Configuration files.
---------------------------------------------------------------------------------------
local function conf_line(k, v)
  if type(v) == "number" then return string.format("%s = %s\n", k, v) end
  return string.format("%s = %s\n", k, quote_literal(v))
end

local BASE_SETTINGS = {
  {"wal_level", "replica"}, {"max_wal_senders", 10}, {"max_replication_slots", 10},
  {"hot_standby", "on"}, {"wal_log_hints", "on"}, {"synchronous_commit", "on"},
  {"wal_keep_size", "256MB"}, {"shared_buffers", "32MB"}, {"max_connections", 100},
  {"wal_receiver_status_interval", "1s"}, {"wal_sender_timeout", "10s"},
  {"wal_receiver_timeout", "10s"}, {"wal_retrieve_retry_interval", "500ms"},
  {"logging_collector", "off"}, {"log_line_prefix", "%m [%p] %q%a "},
}

local HBA = [[
# playground: trust on loopback, replication included
local   all          all                  trust
local   replication  all                  trust
host    all          all    127.0.0.0/8   trust
host    replication  all    127.0.0.0/8   trust
]]

-- The standby's recovery settings live in postgresql.auto.conf (what ALTER SYSTEM
-- writes), which pg_basebackup and pg_rewind copy from the source: rewrite it whole.
local function write_standby_conf(node, primary)
  local auto = "# Do not edit this file manually!\n"
            .. "# It will be overwritten by the ALTER SYSTEM command.\n"
            .. conf_line("primary_conninfo",
                         M.conninfo(primary, "postgres", nil, "application_name=" .. node.app_name))
            .. conf_line("primary_slot_name", node.slot)
  local ok, err = write_file(node.dir .. "/postgresql.auto.conf", auto)
  if not ok then return nil, err end
  return write_file(node.dir .. "/standby.signal", "")
end

local function slot_name(app_name)
  return "stolon_" .. tostring(app_name):lower():gsub("[^%w_]", "_")
end

local function new_node(o)
  assert(type(o) == "table", "pgnode: options table expected")
  assert(o.name and o.host and o.port, "pgnode: name, host and port are required")
  local base = o.dir or o.base
  assert(base, "pgnode: dir (a base folder, see pgnode.tmpdir) is required")
  local home = base .. "/" .. o.name
  local app = o.app_name or o.db_uid or o.name
  return {
    name = o.name, host = o.host, port = math.tointeger(o.port) or o.port,
    base = base, home = home, dir = home .. "/data", sock = home,
    log = home .. "/postgres.log", app_name = app, slot = slot_name(app),
    settings = o.settings,
  }
end

---------------------------------------------------------------------------------------
-- Starting and stopping.
---------------------------------------------------------------------------------------

-- M.start(node [, timeout]) -> true | nil, err. Starts the postmaster (its address,
-- port and socket folder on the command line, which beats any copied config file) and
-- waits until it accepts queries.
function M.start(node, timeout)
  if node.proc and node.proc:running() then return true end
  local p, err = proc.spawn{
    "sh", "-c", 'log=$1; shift; exec "$@" >>"$log" 2>&1', "sh", node.log,
    bin("postgres"), "-D", node.dir, "-c", "listen_addresses=" .. node.host,
    "-p", tostring(node.port), "-k", node.sock, "-c", "cluster_name=" .. node.name,
    user = owner(), cwd = "/tmp", stdin = "null", stdout = "null", stderr = "null",
  }
  if not p then return nil, err end
  node.proc = p
  local ok, werr = wait_for("start " .. node.name, timeout or M.TIMEOUT, function()
    if not p:running() then return "exited" end
    local rows = M.query(node, "SELECT 1 AS ok")
    return rows ~= nil
  end, 0.1)
  if ok == "exited" then ok = nil end -- stop waiting at once when the postmaster died
  if not ok then
    if not p:running() then
      node.proc = nil
      return nil, string.format("postgres %s exited during start-up: %s", node.name,
                                trim(read_tail(node.log, 1500)))
    end
    return nil, werr
  end
  return true
end

-- M.stop(node [, mode [, timeout]]) -> true | nil, err. mode: "fast" (default,
-- SIGINT: clean shutdown, what pg_rewind needs), "smart" (TERM), "immediate" (QUIT).
-- Falls back to KILL when the postmaster outlives the timeout.
function M.stop(node, mode, timeout)
  local p = node.proc
  if not p then return true end
  local sig = ({fast = "INT", smart = "TERM", immediate = "QUIT"})[mode or "fast"]
  if not sig then error("pgnode.stop: bad mode " .. tostring(mode), 2) end
  if p:running() then
    p:signal(sig)
    local code = p:wait(timeout or M.TIMEOUT)
    if code == nil and p:running() then
      p:signal("KILL")
      p:wait(10)
      node.proc = nil
      return nil, "postgres " .. node.name .. " did not stop in time: killed"
    end
  else
    p:wait(5)
  end
  node.proc = nil
  return true
end

function M.pid(node) return node.proc and node.proc:running() and node.proc:pid() or nil end

---------------------------------------------------------------------------------------
-- Creating nodes.
---------------------------------------------------------------------------------------

-- Create the application's role, database and the load generator's table on a
-- primary: true | nil, err (playground.patroni calls it once Patroni's leader runs).
local function create_app_objects(node)
  local u, d, t = M.APP_USER, M.APP_DB, M.LOAD_TABLE
  local ok, err = M.query(node, string.format(
    "DO $$BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = %s) THEN "
    .. "CREATE ROLE %s LOGIN PASSWORD %s; END IF; END$$", quote_literal(u), quote_ident(u),
    quote_literal(u)))
  if not ok then return nil, err end
  local rows
  rows, err = M.query(node, "SELECT 1 AS x FROM pg_database WHERE datname = " .. quote_literal(d))
  if not rows then return nil, err end
  if #rows == 0 then
    ok, err = M.query(node, string.format("CREATE DATABASE %s OWNER %s", quote_ident(d), quote_ident(u)))
    if not ok then return nil, err end
  end
  ok, err = M.query(node, string.format(
    "CREATE TABLE IF NOT EXISTS %s (id bigint PRIMARY KEY, client integer NOT NULL, "
    .. "created_at timestamptz NOT NULL DEFAULT now()); ALTER TABLE %s OWNER TO %s",
    quote_ident(t), quote_ident(t), quote_ident(u)), d)
  if not ok then return nil, err end
  return true
end
M.create_app_objects = create_app_objects

-- M.init_primary{name=, host=, port=5432, dir=base folder, settings={{k, v}, ...}}
-- -> node | nil, err. initdb, replication-ready settings, trust on 127.0.0.0/8,
-- start, then the application's role/database/table (M.APP_USER, M.APP_DB,
-- M.LOAD_TABLE).
function M.init_primary(o)
  local node = new_node{name = o.name, host = o.host, port = o.port or 5432, dir = o.dir,
                        app_name = o.app_name, db_uid = o.db_uid, settings = o.settings}
  local ok, err = run({"mkdir", "-p", node.home}, 10)
  if not ok then return nil, err end
  ok, err = run({bin("initdb"), "-D", node.dir, "-U", M.SUPERUSER, "-A", "trust",
                 "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"}, 120)
  if not ok then return nil, err end
  local conf = {"\n# playground (playground.pgnode)\n"}
  for _, kv in ipairs(BASE_SETTINGS) do conf[#conf + 1] = conf_line(kv[1], kv[2]) end
  for _, kv in ipairs(o.settings or {}) do conf[#conf + 1] = conf_line(kv[1], kv[2]) end
  ok, err = write_file(node.dir .. "/postgresql.conf", table.concat(conf), true)
  if not ok then return nil, err end
  ok, err = write_file(node.dir .. "/pg_hba.conf", HBA)
  if not ok then return nil, err end
  ok, err = M.start(node)
  if not ok then return nil, err end
  node.sync_names = {}
  ok, err = create_app_objects(node)
  if not ok then return nil, err end
  return node
end

-- Make sure the physical slot exists on primary (slots are not replicated).
function M.ensure_slot(primary, slot)
  return M.query(primary, string.format(
    "SELECT pg_create_physical_replication_slot(%s, true) "
    .. "WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = %s)",
    quote_literal(slot), quote_literal(slot)))
end

-- M.drop_stale_slots(primary, keep) -> number dropped | nil, err. Drops every
-- inactive physical slot on primary whose name is not in keep (a list), as stolon's
-- keeper drops the slots of standbys that are gone. Without it each switch leaves
-- the old db uid's slot behind (pg_rewind keeps pg_replslot), and after about ten
-- switches on one playground "all replication slots are in use".
function M.drop_stale_slots(primary, keep)
  local quoted = {}
  for _, s in ipairs(keep) do quoted[#quoted + 1] = quote_literal(s) end
  local rows, err = M.query(primary, string.format(
    "SELECT slot_name, pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
    .. "WHERE slot_type = 'physical' AND NOT active%s",
    #quoted > 0 and (" AND slot_name NOT IN (" .. table.concat(quoted, ", ") .. ")") or ""))
  if not rows then return nil, err end
  return #rows
end

-- Wait until primary's pg_stat_replication shows app_name streaming (and, with
-- want_sync, with sync_state 'sync').
function M.wait_streaming(primary, app_name, want_sync, timeout)
  return wait_for("standby " .. app_name .. " streaming to " .. primary.name, timeout, function()
    local rows, err = M.query(primary, "SELECT state, sync_state FROM pg_stat_replication "
                              .. "WHERE application_name = " .. quote_literal(app_name))
    if not rows then return nil, err end
    for _, r in ipairs(rows) do
      if r.state == "streaming" and (not want_sync or r.sync_state == "sync") then return true end
    end
    return nil, rows[1] and (rows[1].state .. "/" .. tostring(rows[1].sync_state)) or "not connected"
  end, 0.1)
end

local function basebackup(node, primary)
  local ok, err = M.ensure_slot(primary, node.slot)
  if not ok then return nil, err end
  ok, err = run({bin("pg_basebackup"), "-d", M.conninfo(primary, "postgres"), "-D", node.dir,
                 "-X", "stream", "-c", "fast", "-S", node.slot, "-R", "--no-sync"}, 300)
  if not ok then return nil, err end
  return write_standby_conf(node, primary)
end

-- M.init_standby{name=, host=, port=, primary=node, sync=bool, app_name|db_uid=, dir=}
-- -> node | nil, err. pg_basebackup -R from primary through a slot named after the
-- node's application_name (its db uid), start, wait until streaming; with sync=true
-- the standby is added to primary's synchronous_standby_names and awaited as 'sync'.
function M.init_standby(o)
  assert(o.primary, "pgnode.init_standby: primary required")
  local node = new_node{name = o.name, host = o.host, port = o.port or 5432,
                        dir = o.dir or o.primary.base, app_name = o.app_name,
                        db_uid = o.db_uid, settings = o.settings}
  local ok, err = run({"mkdir", "-p", node.home}, 10)
  if not ok then return nil, err end
  ok, err = basebackup(node, o.primary)
  if not ok then return nil, err end
  node.primary = o.primary
  ok, err = M.start(node)
  if not ok then return nil, err end
  if o.sync then
    local names = {}
    for _, n in ipairs(o.primary.sync_names or {}) do names[#names + 1] = n end
    names[#names + 1] = node.app_name
    ok, err = M.set_sync_standbys(o.primary, names)
    if not ok then return nil, err end
  end
  ok, err = M.wait_streaming(o.primary, node.app_name, o.sync)
  if not ok then return nil, err end
  return node
end

---------------------------------------------------------------------------------------
-- Changing roles.
---------------------------------------------------------------------------------------

-- M.set_sync_standbys(node, {app names}) -> true | nil, err. synchronous_standby_names
-- = 'FIRST 1 ("a", "b")' or '' (none), by ALTER SYSTEM and a reload. Works on a
-- standby too (takes effect when it is promoted).
function M.set_sync_standbys(node, names)
  local value = ""
  if names and #names > 0 then
    local q = {}
    for i, n in ipairs(names) do q[i] = quote_ident(n) end
    value = "FIRST 1 (" .. table.concat(q, ", ") .. ")"
  end
  local ok, err = M.query(node, "ALTER SYSTEM SET synchronous_standby_names = " .. quote_literal(value))
  if not ok then return nil, err end
  ok, err = M.query(node, "SELECT pg_reload_conf()")
  if not ok then return nil, err end
  node.sync_names = {}
  for i, n in ipairs(names or {}) do node.sync_names[i] = n end
  return true
end

-- M.promote(node [, timeout]) -> true | nil, err. pg_promote() and wait until the
-- node is out of recovery.
function M.promote(node, timeout)
  timeout = timeout or M.TIMEOUT
  local rows, err = M.query(node, string.format("SELECT pg_promote(true, %d) AS ok", math.ceil(timeout)),
                            "postgres", timeout + 5)
  if not rows then return nil, err end
  local ok, werr = wait_for("promote " .. node.name, timeout, function()
    local r, e = query1(node, "SELECT pg_is_in_recovery() AS r")
    if not r then return nil, e end
    return r.r == "f"
  end)
  if not ok then return nil, werr end
  node.primary = nil
  node.sync_names = node.sync_names or {}
  return true
end

-- M.repoint(standby, new_primary [, timeout]) -> true | nil, err. ALTER SYSTEM SET
-- primary_conninfo/primary_slot_name + pg_reload_conf() (PG 13+ restarts the WAL
-- receiver on reload; recovery_target_timeline 'latest' follows the new timeline),
-- then wait until the standby streams from new_primary.
function M.repoint(standby, new_primary, timeout)
  local ok, err = M.ensure_slot(new_primary, standby.slot)
  if not ok then return nil, err end
  local ci = M.conninfo(new_primary, "postgres", nil, "application_name=" .. standby.app_name)
  ok, err = M.query(standby, "ALTER SYSTEM SET primary_conninfo = " .. quote_literal(ci))
  if not ok then return nil, err end
  ok, err = M.query(standby, "ALTER SYSTEM SET primary_slot_name = " .. quote_literal(standby.slot))
  if not ok then return nil, err end
  ok, err = M.query(standby, "SELECT pg_reload_conf()")
  if not ok then return nil, err end
  standby.primary = new_primary
  return M.wait_streaming(new_primary, standby.app_name, false, timeout)
end

-- M.demote_to_standby(old, new_primary [, {app_name=, timeout=}]) -> true, how | nil, err.
-- Stops old (fast), pg_rewind --source-server=new_primary, writes standby.signal and
-- primary_conninfo, starts it and waits until it streams. If pg_rewind fails the data
-- folder is replaced by a fresh pg_basebackup. how: "rewind" or "basebackup".
-- opts.app_name gives the node a new application_name (stolon: a new db uid).
function M.demote_to_standby(old, new_primary, opts)
  opts = opts or {}
  local ok, err = M.stop(old, "fast")
  if not ok then return nil, err end
  if opts.app_name then
    old.app_name = opts.app_name
    old.slot = slot_name(opts.app_name)
  end
  ok, err = M.ensure_slot(new_primary, old.slot)
  if not ok then return nil, err end
  local how = "rewind"
  -- pg_rewind reads the source's timeline from its control file, which a freshly
  -- promoted server updates only at its next checkpoint (PostgreSQL's pg_rewind docs)
  M.query(new_primary, "CHECKPOINT")
  ok, err = run({bin("pg_rewind"), "-D", old.dir, "--source-server=" .. M.conninfo(new_primary, "postgres"),
                 "--no-sync"}, opts.timeout or 300)
  if ok then
    ok, err = write_standby_conf(old, new_primary)
    if not ok then return nil, err end
  else
    old.rewind_error = err
    how = "basebackup"
    ok, err = run({"rm", "-rf", old.dir}, 60)
    if not ok then return nil, err end
    ok, err = basebackup(old, new_primary)
    if not ok then return nil, "pg_rewind failed (" .. tostring(old.rewind_error) .. "), then " .. err end
  end
  old.primary = new_primary
  old.sync_names = nil
  ok, err = M.start(old, opts.timeout)
  if not ok then return nil, err end
  ok, err = M.wait_streaming(new_primary, old.app_name, false, opts.timeout)
  if not ok then return nil, err end
  return true, how
end

---------------------------------------------------------------------------------------
-- Observing.
---------------------------------------------------------------------------------------

-- "16/B374D848" -> 0x16B374D848 (stolon's xLogPos is this number).
function M.lsn_to_number(lsn)
  if type(lsn) ~= "string" then return nil end
  local hi, lo = lsn:match("^(%x+)/(%x+)$")
  if not hi then return nil end
  return tonumber(hi, 16) * 4294967296 + tonumber(lo, 16)
end

-- M.status(node) -> {healthy=, in_recovery=, lsn=, xlogpos=, timeline=, system_id=,
-- replication={{application_name=, state=, sync_state=, replay_lsn=}, ...},
-- receiver={status=, sender_host=, sender_port=}|nil, sync_names=} or
-- {healthy=false, error=}. One connection and one query (the sentinel takes every
-- node's status on each check: a check that costs three connections a node is one
-- no real sentinel has). Never raises for a down node.
function M.status(node)
  local r, err = query1(node, [[
    SELECT pg_is_in_recovery() AS in_recovery,
           CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()::text
                ELSE pg_current_wal_lsn()::text END AS lsn,
           CASE WHEN pg_is_in_recovery()
                THEN (SELECT received_tli FROM pg_stat_wal_receiver)
                ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int
           END AS timeline,
           (SELECT timeline_id FROM pg_control_checkpoint()) AS checkpoint_timeline,
           (SELECT system_identifier FROM pg_control_system())::text AS system_id,
           current_setting('synchronous_standby_names') AS sync_names,
           (SELECT coalesce(json_agg(json_strip_nulls(json_build_object('application_name', application_name,
                     'state', state, 'sync_state', sync_state, 'replay_lsn', replay_lsn::text))
                     ORDER BY application_name), '[]')
              FROM pg_stat_replication) AS replication,
           CASE WHEN pg_is_in_recovery() THEN
             (SELECT json_strip_nulls(json_build_object('status', status, 'sender_host', sender_host,
                     'sender_port', sender_port::text))
                FROM pg_stat_wal_receiver) END AS receiver]])
  if not r then return {healthy = false, error = err} end
  local replication = cjson.decode(r.replication or "[]")
  if type(replication) ~= "table" then return {healthy = false, error = "unreadable pg_stat_replication"} end
  return {
    healthy = true,
    in_recovery = r.in_recovery == "t",
    lsn = r.lsn,
    xlogpos = M.lsn_to_number(r.lsn),
    timeline = tonumber(r.timeline) or tonumber(r.checkpoint_timeline),
    system_id = r.system_id,
    sync_names = r.sync_names,
    replication = replication,
    receiver = r.receiver and cjson.decode(r.receiver) or nil,
  }
end

return M
