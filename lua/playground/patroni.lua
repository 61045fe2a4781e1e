-- playground.patroni: the playground with real Patroni (the Debian package's, 3.0.2)
-- instead of the stand-in sentinel, on loopback.
--
--   etcd                      127.0.10.1:<etcd_port>
--   node1..3                  127.0.10.11..13: Patroni (REST API :<api_port>, basic auth
--                             on, HTTPS with o.https) running PostgreSQL :<pg_port>
--                             (synchronous_mode, use_pg_rewind, loop_wait 1, ttl 10);
--                             layout (a): a PgBouncer :<bouncer_port> run by our
--                             `supervise --manager patroni` and our `pauser` :<pauser_port>
--   proxy                     127.0.10.20: PgBouncer run by `supervise`, in front of the
--                             primary node's PgBouncer (layout a) or of the primary
--                             itself (layout b, o.layout = "b": nothing on the nodes but
--                             Patroni); applications connect here. o.direct_host adds a
--                             layout (b) proxy beside layout (a)'s.
--
-- Everything else is playground.cluster's (its methods: daemons, PgBouncers, pausers,
-- stop, pids); this file adds the Patroni nodes, the CA and certificates for HTTPS
-- (openssl, into the playground's folder) and the manager's flags. As root, Patroni
-- (and the PostgreSQL it starts) runs as the postgres user in folders it owns.
--
--   local playground = require "playground.patroni"
--   local c = assert(playground.boot{https = true})   -- c.app_conninfo, c:failover_args(), ...
--   c:view()                                          -- lua/patroni.lua's view of the DCS
--   c:stop()                                          -- everything, by PID; removes the folder
local cluster = require "playground.cluster"
local fs = require "fs"
local patroni = require "patroni"
local pgnode = require "playground.pgnode"
local proc = require "proc"
local task = require "task"

local M = {}

-- playground.cluster's defaults, on other addresses and ports (both can run at once)
M.defaults = {}
for k, v in pairs(cluster.defaults) do M.defaults[k] = v end
for k, v in pairs {
  scope = "demo", namespace = "/service", layout = "a", https = false,
  hosts = { "127.0.10.11", "127.0.10.12", "127.0.10.13" }, proxy_host = "127.0.10.20",
  etcd_host = "127.0.10.1", etcd_port = 12479, pg_port = 15532, bouncer_port = 16532, pauser_port = 18180,
  api_port = 18008, metrics_port = 19546, folder_prefix = "spgb-patroni-playground",
  auth = { user = "spgb", password = "playground-restapi-password" },
} do M.defaults[k] = v end

local wait_for = pgnode.wait_for

-- config{scope=, namespace=, name=, host=, pg_port=, api_port=, etcd= "host:port",
-- data_dir=, sock=, pgpass=, auth={user=, password=} | nil, tls={cert=, key=, ca=} | nil}
-- -> the text of a Patroni YAML configuration: synchronous_mode, use_pg_rewind,
-- loop_wait 1, ttl 10, trust on 127.0.0.0/8, the REST API on the node's address. The
-- playground's and the Patroni specs'.
function M.config(o)
  local lines = {
    "scope: " .. o.scope,
    "namespace: " .. (o.namespace or "/service"),
    "name: " .. o.name,
    "log: {level: INFO}",
    "restapi:",
    ("  listen: %s:%d"):format(o.host, o.api_port),
    ("  connect_address: %s:%d"):format(o.host, o.api_port),
  }
  local function add(l) lines[#lines + 1] = l end
  if o.auth then add(("  authentication: {username: %s, password: %s}"):format(o.auth.user, o.auth.password)) end
  if o.tls then
    add("  certfile: " .. o.tls.cert)
    add("  keyfile: " .. o.tls.key)
    -- patronictl's and Patroni's own requests to the members verify with this CA
    add("ctl: {cacert: " .. o.tls.ca .. "}")
  end
  for _, l in ipairs {
    "etcd3:",
    "  hosts: " .. o.etcd,
    "bootstrap:",
    "  dcs:",
    "    ttl: 10",
    "    loop_wait: 1",
    "    retry_timeout: 4",
    "    maximum_lag_on_failover: 1048576",
    "    synchronous_mode: true",
    "    postgresql:",
    "      use_pg_rewind: true",
    "      use_slots: true",
    "      parameters: {wal_level: replica, hot_standby: 'on', max_wal_senders: 10, max_replication_slots: 10,"
      .. " wal_log_hints: 'on'}",
    "  initdb: [{encoding: UTF8}, {locale: C}]",
    "  pg_hba:",
    "  - host replication replicator 127.0.0.0/8 trust",
    "  - host all all 127.0.0.0/8 trust",
    "  - local all all trust",
    "postgresql:",
    ("  listen: %s:%d"):format(o.host, o.pg_port),
    ("  connect_address: %s:%d"):format(o.host, o.pg_port),
    "  data_dir: " .. o.data_dir,
    "  bin_dir: " .. pgnode.BIN,
    "  pgpass: " .. o.pgpass,
    "  authentication:",
    "    replication: {username: replicator, password: rep}",
    "    superuser: {username: postgres, password: pg}",
    "    rewind: {username: rewind, password: rw}",
    "  parameters: {unix_socket_directories: '" .. o.sock .. "'}",
    -- a replica's basebackup would otherwise wait for a spread checkpoint (minutes)
    "  basebackup: [{checkpoint: fast}]",
    "",
  } do add(l) end
  return table.concat(lines, "\n")
end

local Playground = setmetatable({}, { __index = cluster.Cluster })
Playground.__index = Playground
M.Playground = Playground

function Playground:manager_args()
  return { "--manager", "patroni", "--patroni-scope", self.o.scope, "--patroni-namespace", self.o.namespace }
end

-- A folder the servers' user owns.
function Playground:mkdir(dir)
  fs.mkdir_p(dir, "0750")
  if self.root then proc.run { "chown", "postgres:postgres", dir } end
end

local function openssl(dir, args)
  local argv = { "openssl", cwd = dir, timeout = 30, stdin = "null" }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  local code, out, err = proc.run(argv)
  if code ~= 0 then return nil, ("openssl %s: %s%s"):format(args[1], tostring(out or ""), tostring(err or "")) end
  return true
end

-- make_tls() -> true | nil, err: a CA and, per node, a key and a certificate for its
-- address (subjectAltName IP), in <folder>/tls; the keys readable by Patroni only.
function Playground:make_tls()
  local dir = self.base .. "/tls"
  self:mkdir(dir)
  local ec = { "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes" }
  local ca = { "req", "-x509", "-days", "2", "-subj", "/CN=stolon-pgbouncer playground CA",
    "-keyout", "ca.key", "-out", "ca.crt", table.unpack(ec) }
  local ok, err = openssl(dir, ca)
  if not ok then return nil, err end
  for i, n in ipairs(self.nodes) do
    local ext = ("%s/%s.ext"):format(dir, n.name)
    fs.write_atomic(ext, ("subjectAltName = IP:%s\nextendedKeyUsage = serverAuth, clientAuth\n"):format(n.host))
    ok, err = openssl(dir, { "req", "-subj", "/CN=" .. n.host, "-keyout", n.name .. ".key", "-out",
      n.name .. ".csr", table.unpack(ec) })
    if ok then
      ok, err = openssl(dir, { "x509", "-req", "-in", n.name .. ".csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-set_serial", tostring(i + 1), "-days", "2", "-out", n.name .. ".crt", "-extfile", ext })
    end
    if not ok then return nil, err end
    n.tls = { cert = ("%s/%s.crt"):format(dir, n.name), key = ("%s/%s.key"):format(dir, n.name), ca = dir .. "/ca.crt" }
    proc.run { "chmod", "0600", n.tls.key }
    if self.root then proc.run { "chown", "postgres:postgres", n.tls.key, n.tls.cert } end
  end
  self.ca_file = dir .. "/ca.crt"
  proc.run { "chmod", "0644", self.ca_file }
  return true
end

-- dcs_base() -> "/service/<scope>/", where Patroni's keys are
function Playground:dcs_base()
  return patroni.base(self.o.namespace, self.o.scope)
end

-- view() -> lua/patroni.lua's view of every key under the scope | nil, err
function Playground:view()
  local base = self:dcs_base()
  local res, err = self.etcd:get(base, { prefix = true })
  if not res then return nil, err end
  if not res.kvs or #res.kvs == 0 then return nil, "no Patroni keys under " .. base end
  return patroni.decode(res.kvs, base)
end

-- start_node(node) -> true | nil, err: Patroni for node (again, after stop_node).
function Playground:start_node(n)
  if n.patroni and n.patroni:running() then return true end
  local argv = { "patroni", n.yml, stdin = "null", stdout = "file:" .. n.log, stderr = "file:" .. n.log,
    cwd = n.home, user = self.root and "postgres" or nil }
  local p, err = proc.spawn(argv)
  if not p then return nil, ("patroni %s: %s"):format(n.name, tostring(err)) end
  n.patroni = p
  return true
end

-- stop_node(node [, signal]) : TERM (Patroni stops its PostgreSQL and removes its
-- member key) or KILL, then PostgreSQL stopped outright if it outlived Patroni.
function Playground:stop_node(n, signal)
  local p = n.patroni
  if p and p:running() then
    p:signal(signal or "TERM")
    if not p:wait(30) then
      p:signal("KILL")
      p:wait(5)
    end
  end
  n.patroni = nil
  local argv = { pgnode.BIN .. "/pg_ctl", "stop", "-m", "immediate", "-D", n.dir, timeout = 30, stdin = "null",
    user = self.root and "postgres" or nil }
  if fs.read(n.dir .. "/postmaster.pid") then proc.run(argv) end
end

function Playground:stop_nodes()
  local fns = {}
  for i, n in ipairs(self.nodes or {}) do fns[i] = function() self:stop_node(n) end end
  task.all(fns)
end

function Playground.node_pids(_, n, add)
  if n.patroni and n.patroni:running() then add(n.patroni:pid(), "patroni " .. n.name) end
  local text = fs.read(n.dir .. "/postmaster.pid")
  add(text and tonumber(text:match("^%d+")), "postgres " .. n.name)
end

-- check() -> view | nil, why: a leader running as primary, every member running,
-- and a candidate the model accepts (a sync replica).
function Playground:check()
  local v, err = self:view()
  if not v then return nil, err end
  local p, why = patroni.primary(v)
  if not p then return nil, why end
  for _, n in ipairs(self.nodes) do
    local m = v.members[n.name]
    if not m or m.state ~= "running" then return nil, n.name .. " is not running" end
  end
  local c, cwhy = patroni.can_lose_primary(v)
  if not c then return nil, cwhy end
  return v
end

-- ready([seconds]) -> view | nil, err: check() passed within seconds (60).
function Playground:ready(seconds)
  return wait_for("patroni members", seconds or 60, function() return self:check() end, 0.2)
end

function Playground:manager_opts()
  return { manager = "patroni", patroni_scope = self.o.scope, patroni_namespace = self.o.namespace }
end

function Playground:start_nodes()
  local o = self.o
  self.nodes = {}
  for i, host in ipairs(o.hosts) do
    local name = "node" .. i
    local home = self.base .. "/" .. name
    self:mkdir(home)
    self.nodes[i] = { name = name, host = host, port = o.pg_port, home = home, dir = home .. "/data", sock = home,
      log = home .. "/patroni.log", yml = home .. "/patroni.yml" }
  end
  if o.https then
    local ok, err = self:make_tls()
    if not ok then return nil, err end
  end
  -- the REST API's credentials, for failover --patroni-auth-file (argv is public)
  self.auth_file = self.base .. "/patroni-auth"
  fs.write_atomic(self.auth_file, ("%s:%s\n"):format(o.auth.user, o.auth.password), "0600")
  for _, n in ipairs(self.nodes) do
    local ok, err = self:write(n.yml, M.config { scope = o.scope, namespace = o.namespace, name = n.name,
      host = n.host, pg_port = o.pg_port, api_port = o.api_port, etcd = ("%s:%d"):format(o.etcd_host, o.etcd_port),
      data_dir = n.dir, sock = n.sock, pgpass = n.home .. "/pgpass", auth = o.auth, tls = n.tls })
    if not ok then return nil, err end
  end
  -- node1 bootstraps the cluster; the others join once it leads (a basebackup each)
  local first = self.nodes[1]
  local ok, err = self:start_node(first)
  if not ok then return nil, err end
  ok, err = wait_for("node1 leading", 60, function()
    local v = self:view()
    local p = v and patroni.primary(v)
    return p and p.name == first.name
  end, 0.2)
  if not ok then return nil, ("%s\n%s"):format(err, fs.read(first.log) or "") end
  ok, err = pgnode.create_app_objects(first)
  if not ok then return nil, err end
  for i = 2, #self.nodes do
    ok, err = self:start_node(self.nodes[i])
    if not ok then return nil, err end
  end
  return self:ready(90)
end

-- failover_args(extra [, {layout = "b"}]) -> playground.cluster's, plus the REST API's
-- credentials file and, with HTTPS, the CA that verifies it.
function Playground:failover_args(extra, how)
  local argv = cluster.Cluster.failover_args(self, extra, how)
  argv[#argv + 1] = "--patroni-auth-file"
  argv[#argv + 1] = self.auth_file
  if self.ca_file then
    argv[#argv + 1] = "--patroni-ca-file"
    argv[#argv + 1] = self.ca_file
  end
  return argv
end

-- patronictl(args) -> code, stdout, stderr: Debian's patronictl with node1's
-- configuration (the scope, etcd, the REST API's credentials and CA).
function Playground:patronictl(args, timeout)
  local argv = { "patronictl", "-c", self.nodes[1].yml, stdin = "null", timeout = timeout or 60 }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  return proc.run(argv)
end

-- node(name) -> the node called name
function Playground:node(name)
  for _, n in ipairs(self.nodes) do
    if n.name == name then return n end
  end
end

-- boot(options) -> playground | nil, err (and everything started so far is stopped)
function M.boot(o)
  local P = Playground
  return cluster.boot_as(P, M.defaults, {
    { "etcd", P.start_etcd },
    { "patroni", P.start_nodes },
    { "pgbouncers", P.start_bouncers },
  }, o)
end

return M
