-- playground.cluster: the whole local playground on loopback, from Debian packages.
--
--   etcd                      127.0.0.1:<etcd_port>
--   keeper0..2 (db nodes)     127.0.0.11..13: PostgreSQL :<pg_port>, a PgBouncer :<bouncer_port>
--                             run by our `supervise` (it follows the primary), our `pauser`
--                             :<pauser_port>
--   proxy                     127.0.0.20: PgBouncer :<bouncer_port> run by `supervise`,
--                             pointing at the primary node's PgBouncer; applications connect here
--   stand-in sentinel         a task in this process (playground.sentinel)
--
-- Every server runs as the postgres user when we are root. Node PgBouncers follow the
-- primary (as stolon-proxy did behind the original's node PgBouncers), so a query that
-- waited in a paused PgBouncer goes to the new primary after RESUME.
--
--   local cluster = require "playground.cluster"
--   local c = assert(cluster.boot{})      -- c.app_conninfo, c.failover_args, c.nodes, ...
--   c:stop()                              -- everything, by PID; removes the folder
local etcd = require "etcd"
local fs = require "fs"
local http = require "http"
local log = require "log"
local pg = require "pg"
local pgnode = require "playground.pgnode"
local proc = require "proc"
local sentinel = require "playground.sentinel"
local stage = require "playground.stage"
local task = require "task"

local M = {}

M.defaults = {
  cluster_name = "demo",
  hosts = { "127.0.0.11", "127.0.0.12", "127.0.0.13" },
  proxy_host = "127.0.0.20",
  etcd_host = "127.0.0.1",
  etcd_port = 12379,
  pg_port = 15432,
  bouncer_port = 16432,
  pauser_port = 18080,
  metrics_port = 19446,
  sleep_interval = "2s",
  fail_interval = "20s",
  token = "playground-token",
}

local function is_root()
  local _, out = proc.run { "id", "-u" }
  return (out or ""):match("^%s*0%s*$") ~= nil
end

local function binary()
  return rawget(package, "spgb_dir") .. "/stolon-pgbouncer"
end

local function write(path, text, root)
  local _, err = fs.write_atomic(path, text, "0640")
  if err then return nil, err end
  if root then proc.run { "chown", "postgres:postgres", path } end
  return true
end

local wait_for = pgnode.wait_for -- (what, seconds, fn [, interval]) -> value | nil, err

-- bouncer_template{listen=, port=, dir=, target_port= ("{{.Port}}"), databases=
-- ({"app", "postgres"})} -> the text of a pgbouncer.ini template for `supervise`:
-- trust auth with dir/userlist.txt, transaction pooling, low server_login_retry,
-- log and pid files in dir. The playground's, and the benchmarks'.
function M.bouncer_template(t)
  local lines = { "[databases]" }
  for _, db in ipairs(t.databases or { "app", "postgres" }) do
    lines[#lines + 1] = ("%s = host={{.Host}} port=%s dbname=%s"):format(db, t.target_port or "{{.Port}}", db)
  end
  for _, l in ipairs {
    "",
    "[pgbouncer]",
    "listen_addr = " .. t.listen,
    "listen_port = " .. t.port,
    "unix_socket_dir = " .. t.dir,
    "auth_type = trust",
    "auth_file = " .. t.dir .. "/userlist.txt",
    "admin_users = pgbouncer",
    "pool_mode = transaction",
    "server_login_retry = 1",
    "max_client_conn = 500",
    "default_pool_size = 20",
    "log_connections = 0",
    "log_disconnections = 0",
    "logfile = " .. t.dir .. "/pgbouncer.log",
    "pidfile = " .. t.dir .. "/pgbouncer.pid",
    "ignore_startup_parameters = extra_float_digits",
    "",
  } do lines[#lines + 1] = l end
  return table.concat(lines, "\n")
end

-- The playground's methods: playground.patroni's cluster inherits them and replaces
-- what differs (the nodes, the manager's flags).
local Cluster = {}
Cluster.__index = Cluster
M.Cluster = Cluster

-- write(path, text) -> true | nil, err: a file the servers' user may read (0640,
-- chowned to postgres when we are root).
function Cluster:write(path, text)
  return write(path, text, self.root)
end

-- Spawn one of our commands as a daemon, logging to a file in its folder.
-- As root they run as the postgres user, from a copy of the binary it can read.
function Cluster:daemon(name, args, dir)
  local bin, env = stage.ours()
  local argv = { bin }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  argv.user = self.root and "postgres" or nil
  argv.stdin = "null"
  argv.stdout = "null"
  argv.stderr = "file:" .. dir .. "/" .. name .. ".log"
  env.STBOUNCER_FAILOVER_TOKEN_FILE = self.base .. "/token"
  argv.env = env
  argv.cwd = dir
  local p, err = proc.spawn(argv)
  if not p then return nil, ("%s: %s"):format(name, err) end
  -- argv is kept so a test can start the same daemon again after killing it
  self.daemons[#self.daemons + 1] = { name = name, p = p, log = dir .. "/" .. name .. ".log", argv = argv }
  return p
end

-- The flags that name the cluster to our commands (stolon: --cluster-name).
function Cluster:manager_args()
  return { "--cluster-name", self.o.cluster_name }
end

function Cluster:store_args()
  local argv = self:manager_args()
  for _, a in ipairs { "--store-endpoints", self.etcd_endpoint, "--metrics-port", "0" } do argv[#argv + 1] = a end
  return argv
end

function Cluster:start_etcd()
  local o = self.o
  local dir = self.base .. "/etcd"
  fs.mkdir_p(dir, "0700")
  self.etcd_endpoint = ("http://%s:%d"):format(o.etcd_host, o.etcd_port)
  local peer = ("http://%s:%d"):format(o.etcd_host, o.etcd_port + 1)
  local p, err = proc.spawn {
    "etcd", "--name", "playground", "--data-dir", dir .. "/data",
    "--listen-client-urls", self.etcd_endpoint, "--advertise-client-urls", self.etcd_endpoint,
    "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
    "--initial-cluster", "playground=" .. peer, "--log-level", "error",
    stdin = "null", stdout = "null", stderr = "capture",
  }
  if not p then return nil, "etcd: " .. tostring(err) end
  self.etcd_proc = p
  local ok, werr = wait_for("etcd", 20, function()
    local r = http.request { url = self.etcd_endpoint .. "/health", timeout = 1 }
    return r and r.status == 200
  end)
  if not ok then return nil, werr end
  self.etcd = assert(etcd.connect { endpoints = { self.etcd_endpoint }, timeout = 3 })
  return true
end

function Cluster:start_nodes()
  local o = self.o
  local uids = { "5e1b7a3c", "c0d4f812", "9a27e6b4" }
  local n0, err = pgnode.init_primary { name = "keeper0", host = o.hosts[1], port = o.pg_port, dir = self.base,
    app_name = uids[1], db_uid = uids[1] }
  if not n0 then return nil, "keeper0: " .. tostring(err) end
  self.nodes = { n0 }
  for i = 2, 3 do
    local n, serr = pgnode.init_standby { name = "keeper" .. (i - 1), host = o.hosts[i], port = o.pg_port,
      primary = n0, sync = i == 2, app_name = uids[i], db_uid = uids[i] }
    if not n then return nil, ("keeper%d: %s"):format(i - 1, tostring(serr)) end
    self.nodes[i] = n
  end
  return true
end

function Cluster:start_sentinel()
  local o = self.o
  -- the state is kept so that benchmarks can read the ticks' times (state.times)
  self.sentinel_state = sentinel.new {
    etcd = self.etcd, cluster_name = o.cluster_name, nodes = self.nodes,
    sleep_interval = o.sleep_interval, fail_interval = o.fail_interval, promote_delay = o.promote_delay,
  }
  self.sentinel = task.named("sentinel", sentinel.run, { state = self.sentinel_state })
  return wait_for("clusterdata", 30, function()
    local r = self.etcd:get(sentinel.key(o.cluster_name))
    return r and r.kvs and r.kvs[1]
  end)
end

-- A PgBouncer supervised by our `supervise`, listening on host.
function Cluster:start_bouncer(name, host, target_port)
  local o = self.o
  local dir = ("%s/%s-pgbouncer"):format(self.base, name)
  fs.mkdir_p(dir, "0750")
  if self.root then proc.run { "chown", "postgres:postgres", dir } end
  assert(write(dir .. "/userlist.txt", '"pgbouncer" ""\n"app" "app"\n"postgres" ""\n', self.root))
  local tmpl = M.bouncer_template { listen = host, port = o.bouncer_port, dir = dir, target_port = target_port }
  assert(write(dir .. "/pgbouncer.ini.template", tmpl, self.root))
  local argv = {
    "supervise", "--pgbouncer-config-file", dir .. "/pgbouncer.ini",
    "--pgbouncer-config-template-file", dir .. "/pgbouncer.ini.template",
    "--pgbouncer-socket-dir", dir, "--pgbouncer-port", tostring(o.bouncer_port),
    "--poll-interval", "5s", "--termination-grace-period", "0s", "--termination-poll-interval", "1s",
    "--pgbouncer-retry-timeout", "1s",
  }
  for _, a in ipairs(self:store_args()) do argv[#argv + 1] = a end
  local p, err = self:daemon(name .. "-supervise", argv, dir)
  if not p then return nil, err end
  return { dir = dir, host = host, port = o.bouncer_port, supervise = p }
end

-- With store access, so a pause tied to a failover's lease ends when that failover dies.
function Cluster:start_pauser(name, host, bouncer)
  local o = self.o
  local argv = { "pauser", "--bind-address", ("%s:%d"):format(host, o.pauser_port),
    "--pgbouncer-socket-dir", bouncer.dir, "--pgbouncer-port", tostring(o.bouncer_port), "--metrics-port", "0" }
  for _, a in ipairs(self:manager_args()) do argv[#argv + 1] = a end
  argv[#argv + 1] = "--store-endpoints"
  argv[#argv + 1] = self.etcd_endpoint
  return self:daemon(name .. "-pauser", argv, bouncer.dir)
end

-- Layout (a), the default: a PgBouncer and a pauser on every node, and the proxy
-- PgBouncer in front of the primary node's PgBouncer. Layout (b) (o.layout = "b"):
-- no PgBouncer on the nodes; the proxy points straight at the primary. With
-- o.direct_host, layout (a) gains a second proxy, "direct", that points straight at
-- the primary as in (b), so one cluster can show both. Every proxy has a pauser.
function Cluster:start_bouncers()
  local o = self.o
  self.bouncers = {}
  local hosts = {}
  if o.layout ~= "b" then
    for i, n in ipairs(self.nodes) do
      local b, err = self:start_bouncer(n.name, n.host)
      if not b then return nil, err end
      self.bouncers[i] = b
      local ok, perr = self:start_pauser(n.name, n.host, b)
      if not ok then return nil, perr end
      hosts[#hosts + 1] = n.host
    end
  end
  local proxies = { { "proxy", o.proxy_host, o.layout ~= "b" and o.bouncer_port or nil } }
  if o.direct_host and o.layout ~= "b" then proxies[2] = { "direct", o.direct_host } end
  for _, px in ipairs(proxies) do
    local pb, err = self:start_bouncer(px[1], px[2], px[3])
    if not pb then return nil, err end
    self[px[1]] = pb
    -- the proxies' PgBouncers are paused too (first, and resumed last: see lua/failover.lua)
    local pp, pperr = self:start_pauser(px[1], px[2], pb)
    if not pp then return nil, pperr end
    hosts[#hosts + 1] = px[2]
  end
  self.app_conninfo = ("host=%s port=%d dbname=app user=app connect_timeout=5"):format(o.proxy_host, o.bouncer_port)
  local ok, werr = wait_for("pausers", 30, function()
    for _, h in ipairs(hosts) do
      local r = http.request { url = ("http://%s:%d/health"):format(h, o.pauser_port), timeout = 1,
        headers = { Authorization = o.token } }
      if not r or r.status ~= 200 then return nil, r and r.status or "no answer from " .. h end
    end
    return true
  end)
  if not ok then return nil, werr end
  return wait_for("proxy PgBouncer", 30, function()
    local conn, cerr = pg.connect(self.app_conninfo, { timeout = 2 })
    if not conn then return nil, cerr end
    local rows = conn:query("SELECT inet_server_addr() AS addr")
    conn:close()
    return rows ~= nil
  end)
end

-- failover_args(extra [, {layout = "b"}]) -> argv (after the binary) for
-- `stolon-pgbouncer failover` here: every pauser of the playground's layout, or with
-- layout "b" on a layout (a) playground only the "direct" proxy's
-- (--no-node-pausers).
function Cluster:failover_args(extra, how)
  local o = self.o
  local argv = { "failover", "--pauser-port", tostring(o.pauser_port), "--pause-expiry", "25s",
    "--write-probe", ("host={{.Host}} port={{.Port}} dbname=app user=app connect_timeout=2") }
  local b = o.layout == "b" or (how and how.layout == "b")
  local proxies = (o.layout == "b" or not b) and { o.proxy_host } or { o.direct_host }
  if b then argv[#argv + 1] = "--no-node-pausers" end
  for _, h in ipairs(proxies) do
    argv[#argv + 1] = "--extra-pauser"
    argv[#argv + 1] = ("%s:%d"):format(h, o.pauser_port)
  end
  for _, a in ipairs(self:store_args()) do argv[#argv + 1] = a end
  for _, a in ipairs(extra or {}) do argv[#argv + 1] = a end
  return argv
end

-- run_failover(extra args) -> code, stdout, stderr (as the operator would run it)
function Cluster:run_failover(extra, timeout)
  local argv = { binary() }
  for _, a in ipairs(self:failover_args(extra)) do argv[#argv + 1] = a end
  argv.env = { STBOUNCER_FAILOVER_TOKEN_FILE = self.base .. "/token" }
  argv.timeout = timeout or 120
  return proc.run(argv)
end

-- primary() -> the node that is primary according to Postgres itself
function Cluster:primary()
  for _, n in ipairs(self.nodes) do
    local rows = pgnode.query(n, "SELECT pg_is_in_recovery() AS r")
    if rows and rows[1] and rows[1].r == "f" then return n end
  end
end

-- pids() -> {{pid=, what=}, ...}: every process the playground runs now (etcd,
-- Postgres, our daemons, the PgBouncers supervise started), for a holder that records
-- them so `make playground-down` can stop exactly these even after the holder died.
function Cluster:pids()
  local out = {}
  local function add(pid, what)
    if pid then out[#out + 1] = { pid = pid, what = what } end
  end
  if self.etcd_proc and self.etcd_proc:running() then add(self.etcd_proc:pid(), "etcd") end
  for _, n in ipairs(self.nodes or {}) do self:node_pids(n, add) end
  for _, d in ipairs(self.daemons) do
    if d.p:running() then add(d.p:pid(), d.name) end
  end
  for _, b in ipairs(self:all_bouncers()) do
    local text = fs.read(b.dir .. "/pgbouncer.pid")
    add(text and tonumber(text:match("%d+")), "pgbouncer " .. b.dir:match("[^/]+$"))
  end
  return out
end

-- manager_opts() -> the options our commands parse from manager_args() (for
-- lua/common.lua's functions); lock_key() -> the failover lock's key, as failover and
-- with-lock take it.
function Cluster:manager_opts()
  return { manager = "stolon", store_prefix = "stolon/cluster", cluster_name = self.o.cluster_name }
end

function Cluster:lock_key()
  return require("common").lock_name(self:manager_opts())
end

-- Every PgBouncer the playground runs (the proxies first).
function Cluster:all_bouncers()
  local all = { self.proxy, self.direct }
  for _, b in ipairs(self.bouncers or {}) do all[#all + 1] = b end
  return all
end

-- node_pids(node, add): add(pid, what) for the processes that run node.
function Cluster.node_pids(_, n, add)
  add(pgnode.pid(n), "postgres " .. n.name)
end

function Cluster:stop_nodes()
  for _, n in ipairs(self.nodes or {}) do pgnode.stop(n, "immediate") end
end

function Cluster:stop()
  if self.stopped then return end
  self.stopped = true
  for i = #self.daemons, 1, -1 do
    local d = self.daemons[i]
    if d.p:running() then d.p:signal("TERM") end
  end
  for _, d in ipairs(self.daemons) do
    if not d.p:wait(15) then
      d.p:signal("KILL")
      d.p:wait(5)
    end
  end
  if self.sentinel then self.sentinel:cancel() end
  -- the PgBouncers supervise started: supervise stops them on TERM; make sure
  for _, b in ipairs(self:all_bouncers()) do
    local pid = fs.read(b.dir .. "/pgbouncer.pid")
    if pid then proc.run { "kill", "-KILL", pid:match("%d+") } end
  end
  self:stop_nodes()
  if self.etcd_proc then
    self.etcd_proc:signal("TERM")
    if not self.etcd_proc:wait(10) then self.etcd_proc:signal("KILL") self.etcd_proc:wait(5) end
  end
  if self.base and not self.o.keep then pgnode.remove_dir(self.base) end
end

-- Every address:port the playground listens on must be free: PgBouncer only warns
-- when it cannot bind and then serves on its socket alone.
local function check_ports(o)
  local want = { ("%s:%d"):format(o.etcd_host, o.etcd_port), ("%s:%d"):format(o.etcd_host, o.etcd_port + 1) }
  for _, h in ipairs { o.proxy_host, o.direct_host } do
    for _, port in ipairs { o.bouncer_port, o.pauser_port } do want[#want + 1] = ("%s:%d"):format(h, port) end
  end
  for _, h in ipairs(o.hosts) do
    for _, port in ipairs { o.pg_port, o.bouncer_port, o.pauser_port, o.api_port } do
      want[#want + 1] = ("%s:%d"):format(h, port)
    end
  end
  local code, out = proc.run { "ss", "-Hltn" }
  if code ~= 0 then return true end
  for _, addr in ipairs(want) do
    if out:find(addr .. " ", 1, true) then
      return nil, ("%s is already in use (a playground still running? see `ss -ltnp`)"):format(addr)
    end
  end
  return true
end

-- boot_as(class, defaults, steps, options) -> cluster | nil, err: the boot of every
-- playground. Merges options over defaults, checks the ports, makes the folder and
-- the token file, runs steps ({{name, method}, ...}) in order, and stops everything
-- started so far when one fails (printing the daemons' logs), raises, or the task is
-- cancelled (then the error is raised again once everything is stopped).
function M.boot_as(class, defaults, steps, o)
  local opts = {}
  for k, v in pairs(defaults) do opts[k] = v end
  for k, v in pairs(o or {}) do opts[k] = v end
  local free, perr = check_ports(opts)
  if not free then return nil, perr end
  local self = setmetatable({ o = opts, daemons = {}, root = is_root() }, class)
  local base, err = pgnode.tmpdir(opts.folder_prefix or "spgb-playground")
  if not base then return nil, err end
  self.base = base
  assert(write(base .. "/token", opts.token .. "\n", self.root))
  for _, s in ipairs(steps) do
    local t0 = task.now()
    local done, ok, serr = pcall(s[2], self)
    if not done then
      -- cancelled (Ctrl-C in the demo) or a step raised: stop what was started, by
      -- PID, and remove the folder, before the error goes on
      task.shield(function() self:stop() end)
      error(ok, 0)
    end
    if not ok then
      log.error { event = "playground_boot_failed", step = s[1], error = tostring(serr) }
      for _, d in ipairs(self.daemons) do
        local logs = fs.read(d.log)
        if logs and logs ~= "" then io.stderr:write(("--- %s ---\n%s\n"):format(d.name, logs:sub(-3000))) end
      end
      self:stop()
      return nil, ("%s: %s"):format(s[1], tostring(serr))
    end
    log.info { event = "playground_ready", step = s[1], seconds = ("%.2f"):format(task.now() - t0) }
  end
  return self
end

-- boot(options) -> cluster | nil, err (and everything started so far is stopped)
function M.boot(o)
  return M.boot_as(Cluster, M.defaults, {
    { "etcd", Cluster.start_etcd },
    { "postgres", Cluster.start_nodes },
    { "sentinel", Cluster.start_sentinel },
    { "pgbouncers", Cluster.start_bouncers },
  }, o)
end

return M
