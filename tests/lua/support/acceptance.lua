-- Test helper for tests/lua/acceptance_spec.lua and patroni_acceptance_spec.lua: small
-- operations on a booted playground (lua/playground/cluster.lua, or
-- lua/playground/patroni.lua, whose playground has the same methods) that the
-- acceptance scenarios share.
-- Every function is task only (it yields).
--
--   local A = require "support.acceptance"
--   local cd = A.wait_healthy(c, 60)          -- converged clusterdata, cd:check_healthy(1)
--   A.server_addr(conninfo) -> "127.0.1.12" | nil, err
--   A.pauser_health(c, node) -> status, body
--   A.spawn_failover(c, extra, {env=, log=}) -> proc
local cjson = require "cjson.safe"
local common = require "common"
local fs = require "fs"
local http = require "http"
local pg = require "pg"
local proc = require "proc"
local stolon = require "stolon"
local task = require "task"

local M = {}

-- Retry fn() (pcall'ed) until it returns a truthy value: support.pg's loop.
M.eventually = require("support.pg").eventually

function M.key(c)
  return stolon.key("stolon/cluster", c.o.cluster_name)
end

-- clusterdata(c) -> cd (lua/stolon.lua model), kv | nil, err
function M.clusterdata(c)
  return common.read_clusterdata(c.etcd, M.key(c))
end

function M.token(c)
  return (assert(fs.read(c.base .. "/token")):gsub("%s+$", ""))
end

function M.pauser_url(c, node, path)
  return ("http://%s:%d%s"):format(node.host, c.o.pauser_port, path)
end

-- pauser_health(c, node [, timeout]) -> status, decoded body | nil, err
function M.pauser_health(c, node, timeout)
  local r, err = http.request { url = M.pauser_url(c, node, "/health"), timeout = timeout or 2,
    headers = { Authorization = M.token(c) } }
  if not r then return nil, err end
  return r.status, cjson.decode(r.body or "") or {}
end

-- pauser_post(c, node, "/pause", {timeout=, expiry=}) -> status, body | nil, err
function M.pauser_post(c, node, path, body, timeout)
  local r, err = http.request { method = "POST", url = M.pauser_url(c, node, path), timeout = timeout or 10,
    headers = { Authorization = M.token(c), ["Content-Type"] = "application/json" },
    body = cjson.encode(body or {}) }
  if not r then return nil, err end
  return r.status, cjson.decode(r.body or "") or {}
end

-- The conninfo of node i's own PgBouncer (what the node's applications would use).
function M.bouncer_conninfo(c, i)
  local b = c.bouncers[i]
  return ("host=%s port=%d dbname=app user=app"):format(b.host, b.port)
end

-- Every PgBouncer: { {name=, conninfo=}, ... } (the proxies first).
function M.all_bouncers(c)
  local out = {}
  for _, b in ipairs(c:all_bouncers()) do
    local name = b.dir:match("([^/]+)-pgbouncer$")
    out[#out + 1] = { name = name == "proxy" and "proxy" or name .. "-pgbouncer",
      conninfo = ("host=%s port=%d dbname=app user=app"):format(b.host, b.port) }
  end
  return out
end

-- server_addr(conninfo [, timeout]) -> host of inet_server_addr() | nil, err, code
function M.server_addr(conninfo, timeout)
  local conn, err, code = pg.connect(conninfo, { timeout = timeout or 3, query_timeout = timeout or 3 })
  if not conn then return nil, err, code end
  local rows, qerr, qcode = conn:query("SELECT host(inet_server_addr()) AS addr")
  conn:close()
  if not rows then return nil, qerr, qcode end
  return rows[1] and rows[1].addr
end

-- Where every PgBouncer routes now: { [name] = addr or "error: ..." }, all_same_as(host)
function M.routes(c, want, timeout)
  local bs = M.all_bouncers(c)
  local fns = {}
  for i, b in ipairs(bs) do
    fns[i] = function()
      local addr, err = M.server_addr(b.conninfo, timeout)
      return addr or ("error: " .. tostring(err))
    end
  end
  local res = task.all(fns) or {}
  local out, ok = {}, true
  for i, b in ipairs(bs) do
    local v = res[i] and res[i][1] or "error: no result"
    out[b.name] = v
    if v ~= want then ok = false end
  end
  return out, ok
end

-- The manager's view, when it can lose its primary: (stolon) converged clusterdata
-- and cd:check_healthy(1), (Patroni) c:check(). -> view, the primary's host | nil, why
local function manager_healthy(c)
  if c.check then
    local v, why = c:check()
    if not v then return nil, "patroni: " .. tostring(why) end
    return v, require("patroni").primary(v).host
  end
  local cd, err = M.clusterdata(c)
  if not cd then return nil, err end
  local ok, why = cd:check_healthy(1)
  if not ok then return nil, "clusterdata: " .. why end
  return cd, cd:master().host
end

-- Whether the whole playground is back to normal: the manager can lose its primary,
-- its primary is the real primary, every pauser healthy and not paused.
-- -> view (stolon: cd) | nil, why
function M.healthy(c)
  local view, host = manager_healthy(c)
  if not view then return nil, host end
  local p = c:primary()
  if not p or p.host ~= host then
    return nil, ("the manager's primary %s but Postgres primary %s"):format(host, p and p.host or "none")
  end
  for _, b in ipairs(c:all_bouncers()) do
    local status, body = M.pauser_health(c, b)
    local name = b.dir:match("[^/]+$")
    if status ~= 200 then return nil, ("pauser %s: %s"):format(name, tostring(status or body)) end
    if body.paused then return nil, ("pauser %s: paused"):format(name) end
  end
  return view
end

-- wait_healthy(c, seconds) -> cd | raises with the last reason
function M.wait_healthy(c, seconds)
  local cd, why = M.eventually(seconds or 60, function() return M.healthy(c) end, 0.25)
  if not cd then error(("cluster not healthy after %ss: %s"):format(seconds or 60, tostring(why)), 2) end
  return cd
end

-- The daemon record of `name` in c.daemons ("keeper1-pauser", ...).
function M.daemon(c, name)
  for _, d in ipairs(c.daemons) do
    if d.name == name then return d end
  end
  error("no daemon named " .. name)
end

-- The node whose keeper uid is keeper.
function M.node(c, keeper)
  for i, n in ipairs(c.nodes) do
    if n.name == keeper then return n, i end
  end
  error("no node for keeper " .. tostring(keeper))
end

-- argv for `stolon-pgbouncer failover` with the playground's flags and extra ones
-- (o.how: c:failover_args's second argument, {layout = "b"}).
function M.failover_argv(c, extra, o)
  o = o or {}
  local argv = { rawget(package, "spgb_dir") .. "/stolon-pgbouncer" }
  for _, a in ipairs(c:failover_args(extra, o.how)) do argv[#argv + 1] = a end
  argv.env = { STBOUNCER_FAILOVER_TOKEN_FILE = o.token_file or (c.base .. "/token") }
  argv.stdin = "null"
  return argv
end

-- run_failover(c, extra, {token_file=, timeout=, how=}) -> code, stdout, stderr, seconds
function M.run_failover(c, extra, o)
  o = o or {}
  local argv = M.failover_argv(c, extra, o)
  argv.timeout = o.timeout or 90
  local t0 = task.now()
  local code, out, err = proc.run(argv)
  return code, out or "", err or "", task.now() - t0
end

-- spawn_failover(c, extra, {log=FILE}) -> proc (stdout and stderr appended to FILE,
-- or captured without one)
function M.spawn_failover(c, extra, o)
  o = o or {}
  local argv = M.failover_argv(c, extra, o)
  if o.log then
    argv.stdout = "file:" .. o.log
    argv.stderr = "file:" .. o.log
  else
    argv.stdout = "capture"
    argv.stderr = "capture"
  end
  return assert(proc.spawn(argv))
end

-- Put clusterdata's sleepInterval back to interval (compare-and-swap) if it differs.
function M.set_sleep_interval(c, interval)
  for _ = 1, 10 do
    local cd, kv = assert(M.clusterdata(c))
    if cd:sleep_interval() == interval then return true end
    local raw = assert(stolon.with_sleep_interval(kv.value, interval))
    local r = assert(c.etcd:txn {
      compare = { { key = M.key(c), target = "mod", result = "==", value = kv.mod_revision } },
      success = { { put = { key = M.key(c), value = raw } } },
    })
    if r.succeeded then return true end
  end
  error("could not set sleepInterval")
end

-- Take and release the failover lock: -> seconds it took | nil, err
function M.try_lock(c, timeout)
  local t0 = task.now()
  local h, err = c.etcd:lock(c:lock_key(), { timeout = timeout, ttl = 10 })
  if not h then return nil, err end
  h:unlock()
  return task.now() - t0
end

-- A short query through conninfo: true | nil, err, code
function M.query_ok(conninfo, timeout)
  local conn, err, code = pg.connect(conninfo, { timeout = timeout or 2, query_timeout = timeout or 2 })
  if not conn then return nil, err, code end
  local rows, qerr, qcode = conn:query("SELECT 1 AS one")
  conn:close()
  if not rows then return nil, qerr, qcode end
  return true
end

-- prepare(c): after boot, what every acceptance file's scenarios start from: the
-- playground healthy, the load's table and the table `acceptance` (id, note) that the
-- application user may write.
function M.prepare(c)
  M.wait_healthy(c, 60)
  local load = require "playground.load"
  local pgnode = require "playground.pgnode"
  assert(load.ensure_table(c.app_conninfo))
  assert(pgnode.query(c:primary(), "CREATE TABLE IF NOT EXISTS acceptance (id int PRIMARY KEY, note text)", "app"))
  assert(pgnode.query(c:primary(), "GRANT ALL ON acceptance TO app", "app"))
end

-- sayer(tag) -> say(fmt, ...): a progress line "[tag] ..." on stderr, at once
function M.sayer(tag)
  return function(fmt, ...)
    io.stderr:write(("[" .. tag .. "] " .. fmt .. "\n"):format(...))
    io.stderr:flush()
  end
end

-- shared_playground(hooks, say, boot): one playground for the whole file. hooks =
-- busted's {setup=, teardown=, before_each=, after_each=} (a required module does
-- not see the spec's); boot() -> c | nil, err. setup boots and prepares it, teardown
-- stops it, and each scenario starts once it is healthy again, so a scenario that
-- failed half-way does not fail the next one.
function M.shared_playground(hooks, say, boot)
  local c, t_it
  hooks.setup(function()
    local t0 = task.now()
    local err
    c, err = boot()
    assert(c, "playground boot: " .. tostring(err))
    M.prepare(c)
    say("playground ready in %.1f s (folder %s)", task.now() - t0, c.base)
  end)
  hooks.teardown(function()
    if c then c:stop() end
  end)
  hooks.before_each(function()
    M.wait_healthy(c, 90)
    t_it = task.now()
  end)
  hooks.after_each(function() say("scenario done in %.1f s", task.now() - t_it) end)
end

-- step_status(out, name) -> the status of step name in the failover's summary
-- ("  step    pause   12.3 ms  failed  ...") | nil when it did not run
function M.step_status(out, name)
  for line in out:gmatch("[^\n]+") do
    local n, status = line:match("^%s+%a+%s+(%S+)%s+[%d%.]+ ms%s+(%a+)")
    if n == name then return status end
  end
end

-- unexpected_errors(c, expected) -> every level=error line of the playground's daemons
-- that contains none of the strings in expected, as "daemon: line" (STYLE:
-- integration specs fail on unexpected error lines)
function M.unexpected_errors(c, expected)
  local unexpected = {}
  for _, d in ipairs(c.daemons) do
    for line in (fs.read(d.log) or ""):gmatch("[^\n]+") do
      if line:find("level=error", 1, true) then
        local ok = false
        for _, e in ipairs(expected) do
          if line:find(e, 1, true) then ok = true end
        end
        if not ok then unexpected[#unexpected + 1] = d.name .. ": " .. line end
      end
    end
  end
  return unexpected
end

-- The tail of a file (for failure messages).
function M.tail(path, n)
  local text = fs.read(path) or ""
  return text:sub(-(n or 3000))
end

return M
