-- support.etcd: start and stop real etcd servers for specs (single member or a
-- 3-member cluster on 127.0.0.1-3), on free-ish ports from 23790 up, in a temp dir.
--
--   local E = require "support.etcd"
--   local srv = E.start{members = 1}         -- or members = 3, tls = {...}
--   srv.endpoints                           -- {"http://127.0.0.1:PORT", ...}
--   srv:kill_member(i)                      -- SIGKILL member i, wait for it
--   srv:etcdctl{"put", "k", "v"}            -- run etcdctl against the cluster
--   srv:stop()                              -- kill every member, remove the dir
--
-- tls = {cert=, key=, ca=, client_cert_auth=true} serves clients over https.
-- hosts = {"127.0.3.1", ...} (one per member) and port = N (member i listens for
-- clients on N + 2i and for peers on N + 2i + 1) pin the addresses, for suites given
-- their own addresses and ports; without them: 127.0.0.1-3 and free-ish ports.
--   srv:start_member(i)                     -- start a killed member again (same data)
-- Must be called from a task (busted's setup/it bodies are).
local proc = require "proc"
local task = require "task"
local httpc = require "httpc"

local M = {}

-- Ports: each start takes a fresh block, so servers of successive spec files and
-- restarts never collide with sockets still in TIME_WAIT.
local base = 23790 + (os.time() % 50) * 20

local function run(argv)
  local code, out, err = proc.run(argv)
  if code ~= 0 then
    error(("%s failed (%s): %s"):format(argv[1], tostring(code), tostring(err or out)), 2)
  end
  return out
end

function M.tempdir()
  return (run { "mktemp", "-d", "/tmp/spgb-etcd.XXXXXX" }:gsub("%s+$", ""))
end

local function healthy(srv, i)
  local m = srv.members[i]
  local t = srv.tls or {}
  local r = httpc.request {
    url = m.endpoint .. "/health", timeout = 1, ca_file = t.ca, cert_file = t.client_cert,
    key_file = t.client_key,
  }
  return r and r.status == 200 and r.body:find('"health":"true"', 1, true) ~= nil
end

local function spawn_member(srv, i)
  local m = srv.members[i]
  local argv = {
    "etcd", "--name", m.name, "--data-dir", m.data,
    "--listen-client-urls", m.endpoint, "--advertise-client-urls", m.endpoint,
    "--listen-peer-urls", m.peer, "--initial-advertise-peer-urls", m.peer,
    "--initial-cluster", srv.cluster, "--initial-cluster-state", "new",
    "--initial-cluster-token", "spgb-test",
    "--heartbeat-interval", "50", "--election-timeout", "500",
    "--log-level", "error", "--logger", "zap",
  }
  local t = srv.tls
  if t then
    for _, a in ipairs { "--cert-file", t.cert, "--key-file", t.key } do argv[#argv + 1] = a end
    if t.client_cert_auth then
      for _, a in ipairs { "--client-cert-auth", "--trusted-ca-file", t.ca } do argv[#argv + 1] = a end
    end
  end
  argv.stdout, argv.stderr, argv.stdin = "capture", "capture", "null"
  local p, err = proc.spawn(argv)
  if not p then error("support.etcd: cannot start etcd: " .. tostring(err), 3) end
  m.proc = p
end

local Srv = {}
Srv.__index = Srv

--- Start members (1 or 3) and wait until every member reports healthy.
function M.start(opts)
  opts = opts or {}
  local n = opts.members or 1
  for _ = 1, opts.port and 1 or 5 do -- a port may be taken: move on to the next block
    local b = opts.port
    if not b then
      base = base + 20
      if base > 24700 then base = 23790 end
      b = base
    end
    local dir = M.tempdir()
    local srv = setmetatable({ dir = dir, members = {}, endpoints = {}, tls = opts.tls }, Srv)
    local scheme = opts.tls and "https" or "http"
    local peers = {}
    for i = 1, n do
      local host = opts.hosts and opts.hosts[i] or (n > 1 and ("127.0.0." .. i) or "127.0.0.1")
      local m = {
        name = "m" .. i, host = host, data = dir .. "/m" .. i,
        endpoint = ("%s://%s:%d"):format(scheme, host, b + 2 * i),
        peer = ("http://%s:%d"):format(host, b + 2 * i + 1),
      }
      srv.members[i] = m
      srv.endpoints[i] = m.endpoint
      peers[i] = m.name .. "=" .. m.peer
    end
    srv.cluster = table.concat(peers, ",")
    for i = 1, n do spawn_member(srv, i) end
    local up = false
    for _ = 1, 100 do
      up = true
      for i = 1, n do
        if not srv.members[i].proc:running() then up = false; break end
        if not healthy(srv, i) then up = false end
      end
      if up then break end
      local dead = false
      for i = 1, n do if not srv.members[i].proc:running() then dead = true end end
      if dead then break end
      task.sleep(0.1)
    end
    if up then return srv end
    srv:stop()
  end
  error("support.etcd: etcd did not start", 2)
end

--- SIGKILL member i and wait until it is gone.
function Srv:kill_member(i)
  local p = self.members[i].proc
  if p and p:running() then
    p:signal("KILL")
    p:wait(10)
  end
end

--- Start member i again after kill_member(i), with its data, and wait until it
--- reports healthy (at most `timeout` seconds, default 20). Returns true | nil, err.
function Srv:start_member(i, timeout)
  local p = self.members[i].proc
  if p and p:running() then return true end
  spawn_member(self, i)
  local deadline = task.now() + (timeout or 20)
  repeat
    if not self.members[i].proc:running() then
      local _, err = self.members[i].proc:output()
      return nil, "etcd member exited: " .. tostring(err)
    end
    if healthy(self, i) then return true end
    task.sleep(0.05)
  until task.now() > deadline
  return nil, "etcd member not healthy in time"
end

--- Run etcdctl against the running members: returns code, stdout, stderr.
function Srv:etcdctl(args)
  -- etcdctl 3.4 speaks API v3 by default (ETCDCTL_API=3); no env= needed.
  local argv = { "etcdctl", "--endpoints=" .. table.concat(self.endpoints, ","),
    timeout = args.timeout or 20 }
  local t = self.tls
  if t then
    argv[#argv + 1] = "--cacert=" .. t.ca
    if t.client_cert then
      argv[#argv + 1] = "--cert=" .. t.client_cert
      argv[#argv + 1] = "--key=" .. t.client_key
    end
  end
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  if args.spawn then
    argv.timeout = nil
    argv.stdout, argv.stderr, argv.stdin = "capture", "capture", "null"
    return proc.spawn(argv)
  end
  return proc.run(argv)
end

--- Kill every member and remove the data directory. Idempotent.
function Srv:stop()
  for i = 1, #self.members do self:kill_member(i) end
  if self.dir then
    proc.run { "rm", "-rf", self.dir }
    self.dir = nil
  end
end

--- The path of the running host binary (for child hosts).
function M.host_binary()
  local f = assert(io.open("/proc/self/stat"))
  local pid = f:read("n")
  f:close()
  return (run { "readlink", "/proc/" .. pid .. "/exe" }:gsub("%s+$", ""))
end

return M
