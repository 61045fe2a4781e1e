-- common: what the five commands share: flag sets with the original tool's names,
-- defaults and environment variables; connecting to the store and to PgBouncer;
-- the Prometheus metrics and their HTTP listener; the pauser token.
local cjson = require "cjson.safe"
local etcd = require "etcd"
local fs = require "fs"
local log = require "log"
local metrics = require "metrics"
local pg = require "pg"
local pgbouncer = require "pgbouncer"
local proc = require "proc"
local stolon = require "stolon"
local task = require "task"

local M = {}

M.global_flags = {
  { name = "debug", type = "bool", help = "Enable debug logging" },
  { name = "metrics-address", default = "127.0.0.1", help = "Address to bind HTTP metrics listener" },
  { name = "metrics-port", type = "int", default = "9446", help = "Port to bind HTTP metrics listener (0: none)" },
}

M.stolon_flags = {
  { name = "cluster-name", env = "STOLONCTL_CLUSTER_NAME", default = "", help = "Name of the stolon cluster" },
  { name = "store-backend", env = "STOLONCTL_STORE_BACKEND", default = "etcdv3", help = "Store backend provider" },
  { name = "store-prefix", env = "STOLONCTL_STORE_PREFIX", default = "stolon/cluster", help = "Store prefix" },
  { name = "store-endpoints", env = "STOLONCTL_STORE_ENDPOINTS", type = "list", default = "http://127.0.0.1:2379",
    help = "Comma delimited list of store endpoints" },
  { name = "store-timeout", type = "duration", default = "3s", help = "Timeout for store operations" },
  { name = "store-dial-timeout", type = "duration", default = "3s", help = "Timeout when connecting to store" },
  { name = "store-keepalive-time", type = "duration", default = "30s",
    help = "Time after which client pings server to check transport" },
  { name = "store-keepalive-timeout", type = "duration", default = "5s", help = "Timeout for store keepalive probe" },
  { name = "store-ca-file", env = "STOLONCTL_STORE_CA_FILE",
    help = "Verify certificates of HTTPS-enabled store servers using this CA bundle" },
  { name = "store-cert-file", env = "STOLONCTL_STORE_CERT_FILE", help = "Certificate file for client identification to store" },
  { name = "store-key", env = "STOLONCTL_STORE_KEY", help = "Private key file for client identification to the store" },
  { name = "store-skip-tls-verify", type = "bool", env = "STOLONCTL_STORE_SKIP_TLS_VERIFY",
    help = "Skip store server certificate validation" },
}

-- Which cluster manager the commands follow and drive (supervise, failover, status,
-- with-lock): stolon (clusterdata under --store-prefix/--cluster-name) or patroni
-- (its DCS keys under --patroni-namespace/--patroni-scope). The store flags are shared.
M.manager_flags = {
  { name = "manager", default = "stolon", help = "Cluster manager: stolon or patroni" },
  { name = "patroni-scope", env = "PATRONI_SCOPE", default = "",
    help = "Patroni's scope (cluster name), with --manager patroni" },
  { name = "patroni-namespace", env = "PATRONI_NAMESPACE", default = "/service",
    help = "Patroni's namespace in the store, with --manager patroni" },
}

M.pgbouncer_flags = {
  { name = "pgbouncer-user", default = "pgbouncer", help = "Admin user of PgBouncer" },
  { name = "pgbouncer-password", env = "PGBOUNCER_PASSWORD", default = "", help = "Password for admin user" },
  { name = "pgbouncer-database", default = "pgbouncer", help = "PgBouncer special database (inadvisable to change)" },
  { name = "pgbouncer-socket-dir", default = "/var/run/postgresql", help = "Directory in which the unix socket resides" },
  { name = "pgbouncer-host", default = "", help = "Reach the admin console over TCP at this host instead of the socket" },
  { name = "pgbouncer-port", type = "int", default = "6432", help = "Port PgBouncer listens on" },
  { name = "pgbouncer-config-file", default = "/etc/pgbouncer/pgbouncer.ini", help = "Path to PgBouncer config file" },
  { name = "pgbouncer-config-template-file", default = "/etc/pgbouncer/pgbouncer.ini.template",
    help = "Path to PgBouncer config template file" },
}

M.token_flags = {
  { name = "token", env = "STBOUNCER_FAILOVER_TOKEN", default = "",
    help = "Authentication token for pauser API (prefer --token-file or the environment: argv is public)" },
  { name = "token-file", env = "STBOUNCER_FAILOVER_TOKEN_FILE", default = "",
    help = "Read the pauser API token from this file" },
}

-- spec(list, ...) -> one flag list made of the given lists
function M.spec(...)
  local out = {}
  for _, l in ipairs { ... } do
    for _, f in ipairs(l) do out[#out + 1] = f end
  end
  return out
end

function M.setup_logging(opts)
  if opts.debug then log.set_level("debug") end
end

-- token(opts) -> token string ("" when none) | nil, err
function M.token(opts)
  if opts.token_file and opts.token_file ~= "" then
    local text, err = fs.read(opts.token_file)
    if not text then return nil, ("--token-file: %s"):format(err) end
    return (text:gsub("%s+$", ""))
  end
  return opts.token or ""
end

function M.clusterdata_key(opts)
  return stolon.key(opts.store_prefix, opts.cluster_name)
end

-- model(opts) -> the manager's model module (lua/stolon.lua or lua/patroni.lua) |
-- nil, err for an unknown --manager. Commands without the manager flags get stolon.
function M.model(opts)
  local name = opts.manager or "stolon"
  if name ~= "stolon" and name ~= "patroni" then
    return nil, ("--manager %q: want stolon or patroni"):format(name)
  end
  return (require(name))
end

-- patroni_base(opts) -> "/<namespace>/<scope>/", the prefix Patroni's keys sit under
function M.patroni_base(opts)
  return require("patroni").base(opts.patroni_namespace, opts.patroni_scope)
end

-- lock_name(opts) -> the failover lock's name in etcd, shared by failover and
-- with-lock (and `etcdctl lock`): <clusterdata key>/failover for stolon, our own key
-- under the scope for Patroni.
function M.lock_name(opts)
  if opts.manager == "patroni" then return require("patroni").lock_key(M.patroni_base(opts)) end
  return M.clusterdata_key(opts) .. "/failover"
end

-- pause_prefix(opts) -> where a failover puts the key its pauses are tied to (one per
-- failover, on its pause lease), which a pauser with store access accepts and
-- watches: <clusterdata key>/pause/ for stolon, our own key under the scope for Patroni.
function M.pause_prefix(opts)
  if opts.manager == "patroni" then return M.patroni_base(opts) .. "stolon-pgbouncer/pause/" end
  return M.clusterdata_key(opts) .. "/pause/"
end

-- has_store_target(opts) -> true when opts name a cluster (--cluster-name, or the
-- Patroni scope with --manager patroni): the pauser's store access is optional.
function M.has_store_target(opts)
  if opts.manager == "patroni" then return (opts.patroni_scope or "") ~= "" end
  return (opts.cluster_name or "") ~= ""
end

-- connect_store(opts) -> etcd client | nil, err
function M.connect_store(opts)
  if opts.store_backend ~= "etcdv3" then
    return nil, ("unsupported store backend: %s (only etcdv3)"):format(opts.store_backend)
  end
  local _, merr = M.model(opts)
  if merr then return nil, merr end
  if opts.manager == "patroni" then
    if opts.patroni_scope == "" then return nil, "--patroni-scope (or $PATRONI_SCOPE) is required" end
  elseif opts.cluster_name == "" then
    return nil, "--cluster-name (or $STOLONCTL_CLUSTER_NAME) is required"
  end
  local function opt(v) if v ~= "" then return v end end
  return etcd.connect {
    endpoints = opts.store_endpoints,
    timeout = opts.store_timeout,
    dial_timeout = opts.store_dial_timeout,
    ca_file = opt(opts.store_ca_file or ""),
    cert_file = opt(opts.store_cert_file or ""),
    key_file = opt(opts.store_key or ""),
    skip_tls_verify = opts.store_skip_tls_verify,
  }
end

-- read_clusterdata(client, key) -> cd, kv, revision | nil, err
function M.read_clusterdata(client, key)
  local res, err = client:get(key)
  if not res then return nil, ("get %s: %s"):format(key, tostring(err)) end
  local kv = res.kvs and res.kvs[1]
  if not kv then return nil, ("no clusterdata found at %s"):format(key) end
  local cd, derr = stolon.decode(kv.value, key)
  if not cd then return nil, derr end
  return cd, kv, res.revision
end

-- Where Debian and other systems put server programs, which an ordinary user's PATH
-- often lacks (Debian installs PgBouncer as /usr/sbin/pgbouncer).
M.sbin_dirs = { "/usr/local/sbin", "/usr/sbin", "/sbin" }

-- find_program(name [, path [, fallbacks]]) -> absolute path | nil, err
-- name with a '/' is taken as it is (it must exist); otherwise the first folder of
-- path (default $PATH) that holds it, then of fallbacks (default M.sbin_dirs). err
-- names every folder looked in. Any context; does not yield.
function M.find_program(name, path, fallbacks)
  if name:find("/", 1, true) then
    if fs.exists(name) then return name end
    return nil, ("%s: no such file"):format(name)
  end
  local looked = {}
  local function try(dir)
    if dir == "" then dir = "." end
    looked[#looked + 1] = dir
    local candidate = dir .. "/" .. name
    if fs.exists(candidate) then return candidate end
  end
  for dir in ((path or os.getenv("PATH") or "") .. ":"):gmatch("([^:]*):") do
    local found = try(dir)
    if found then return found end
  end
  for _, dir in ipairs(fallbacks or M.sbin_dirs) do
    local found = try(dir)
    if found then return found end
  end
  return nil, ("%s not found (looked in %s)"):format(name, table.concat(looked, ":"))
end

-- pgbouncer_admin(opts) -> admin connection (connects lazily, reconnects when dropped)
function M.pgbouncer_admin(opts, timeout)
  local conf = {
    port = opts.pgbouncer_port,
    user = opts.pgbouncer_user,
    password = opts.pgbouncer_password ~= "" and opts.pgbouncer_password or nil,
    dbname = opts.pgbouncer_database,
    -- --pgbouncer-timeout bounds the connect and every admin command but PAUSE
    -- (which waits for transactions: its own timeout comes with each request)
    timeout = timeout or 5,
    command_timeout = timeout or 5,
    lazy = true,
  }
  if opts.pgbouncer_host and opts.pgbouncer_host ~= "" then
    conf.host = opts.pgbouncer_host
  else
    conf.socket_dir = opts.pgbouncer_socket_dir
  end
  return pgbouncer.connect(conf)
end

-- pgbouncer_listen_hosts(opts, ini) -> hosts: where a PgBouncer run with the config
-- text ini (a template or the rendered file) and reached with opts would listen:
-- --pgbouncer-host or else the folder --pgbouncer-socket-dir, ini's unix_socket_dir,
-- and each literal address of ini's listen_addr ("*" is probed on 127.0.0.1). Values
-- that are template actions are skipped: they are only known once rendered.
function M.pgbouncer_listen_hosts(opts, ini)
  local hosts, seen = {}, {}
  local function add(h)
    h = h and h:match("^%s*(.-)%s*$")
    if h and h ~= "" and not h:find("{{", 1, true) and not seen[h] then
      seen[h] = true
      hosts[#hosts + 1] = h
    end
  end
  if opts.pgbouncer_host and opts.pgbouncer_host ~= "" then
    add(opts.pgbouncer_host)
  else
    add(opts.pgbouncer_socket_dir)
  end
  for line in (ini or ""):gmatch("[^\n]+") do
    local k, v = line:match("^%s*([%w_]+)%s*=%s*(.-)%s*$")
    if k == "unix_socket_dir" then add(v) end
    if k == "listen_addr" then
      for a in v:gmatch("[^,]+") do add((a:gsub("^%s*%*%s*$", "127.0.0.1"))) end
    end
  end
  return hosts
end

-- listener(opts, hosts) -> where, detail | nil: the first of hosts (socket folders or
-- addresses) where something accepts connections on --pgbouncer-port, named as
-- "dir/.s.PGSQL.port" or "host:port". A refused connection or a missing socket file is
-- a free address (PgBouncer replaces a stale socket file itself); any other answer,
-- an error included, is someone listening. No password is sent. Task only; yields.
function M.listener(opts, hosts)
  local port = opts.pgbouncer_port
  for _, host in ipairs(hosts) do
    local conn, err = pg.connect({ host = host, port = port, dbname = opts.pgbouncer_database,
      user = opts.pgbouncer_user }, { timeout = 3 })
    if conn then conn:close() end
    local free = not conn and (err:find("No such file or directory", 1, true)
      or err:find("Connection refused", 1, true) or err:find("Cannot assign requested address", 1, true))
    if not free then
      local where = host:sub(1, 1) == "/" and ("%s/.s.PGSQL.%d"):format(host, port) or ("%s:%d"):format(host, port)
      return where, err or "accepted a connection"
    end
  end
  return nil
end

-- pgbouncer_identity(admin) -> {pid=, conffile=} | nil, err: who answers on the admin
-- console: its config file and its pid, read from the pidfile it names in SHOW CONFIG
-- (pid is nil when it keeps no pidfile). Task only; yields.
function M.pgbouncer_identity(admin)
  local rows, err = admin:show("CONFIG")
  if not rows then return nil, err end
  local conf = {}
  for _, r in ipairs(rows) do conf[r.key] = r.value end
  local id = { conffile = conf.conffile }
  if conf.pidfile and conf.pidfile ~= "" then
    local text, rerr = fs.read(conf.pidfile)
    id.pid = text and tonumber(text:match("%d+"))
    if not id.pid then return nil, ("pidfile %s: %s"):format(conf.pidfile, tostring(rerr or "no pid in it")) end
  end
  return id
end

-- The original tool's metrics, same names and labels, plus ours (prefixed the same).
local defs
function M.metrics()
  if defs then return defs end
  defs = {
    cluster_identifier = metrics.gauge("stolon_cluster_identifier", "Set to 1, is labelled with the cluster_name",
      { "cluster_name" }),
    shutdown_seconds = metrics.gauge("stolon_pgbouncer_shutdown_seconds",
      "Shutdown time (received termination signal) since unix epoch in seconds"),
    outstanding_connections = metrics.gauge("stolon_pgbouncer_outstanding_connections",
      "Number of outstanding connections in PgBouncer during shutdown"),
    store_poll_interval = metrics.gauge("stolon_pgbouncer_store_poll_interval", "Seconds between each store poll attempt"),
    store_last_update_seconds = metrics.gauge("stolon_pgbouncer_store_last_update_seconds",
      "Last time we received a value from our store as seconds since unix epoch"),
    last_keeper_seconds = metrics.gauge("stolon_pgbouncer_last_keeper_seconds",
      "Most recent primary keeper update time since unix epoch in seconds", { "keeper" }),
    last_reload_seconds = metrics.gauge("stolon_pgbouncer_last_reload_seconds",
      "Most recent PgBouncer reload time since unix epoch in seconds", { "keeper" }),
    certificate_expiry = metrics.gauge("stolon_store_certificate_expiry_seconds",
      "Expiry of the store client certificate as seconds since unix epoch", { "cert_file" }),
    config_errors = metrics.counter("stolon_pgbouncer_config_errors_total",
      "PgBouncer config renders or writes that failed (the previous config was kept)", { "reason" }),
    clusterdata_errors = metrics.counter("stolon_pgbouncer_clusterdata_errors_total",
      "Clusterdata documents that could not be used (malformed or without master)", { "reason" }),
    reload_errors = metrics.counter("stolon_pgbouncer_reload_errors_total", "PgBouncer RELOADs that failed"),
    pgbouncer_restarts = metrics.counter("stolon_pgbouncer_pgbouncer_restarts_total",
      "Times the supervised PgBouncer exited and was started again"),
    pauses = metrics.counter("stolon_pgbouncer_pauser_requests_total", "Pauser API requests", { "path", "status" }),
    paused = metrics.gauge("stolon_pgbouncer_paused", "1 while the pauser holds PgBouncer paused"),
  }
  return defs
end

local function unix_now()
  return os.time()
end
M.unix_now = unix_now

-- serve_metrics(opts) -> server | nil. Port 0: none. A port that cannot be bound is
-- logged, not fatal (as in the original, where supervise and pauser on one node
-- both default to 127.0.0.1:9446).
function M.serve_metrics(opts)
  if not opts.metrics_port or opts.metrics_port == 0 then return nil end
  local http = require "http"
  local srv, err = http.serve {
    address = opts.metrics_address,
    port = opts.metrics_port,
    handler = function(req)
      if req.path == "/metrics" then return metrics.handler(req) end
      return 404, { error = "not found" }
    end,
  }
  if not srv then
    log.error { event = "metrics.listen_failed", address = opts.metrics_address, port = opts.metrics_port,
      error = tostring(err), msg = "serving without metrics" }
    return nil
  end
  log.info { event = "metrics.listen", address = opts.metrics_address, port = opts.metrics_port }
  return srv
end

-- certificate_expiry(file) -> unix seconds | nil, err (openssl, no shell)
function M.certificate_expiry(file)
  local code, out, err = proc.run { "openssl", "x509", "-noout", "-enddate", "-dateopt", "iso_8601", "-in", file }
  if code ~= 0 then return nil, (err or ""):gsub("%s+$", "") end
  local y, mo, d, h, mi, s = out:match("notAfter=(%d+)-(%d+)-(%d+) (%d+):(%d+):(%d+)")
  if not y then return nil, "unrecognised openssl output: " .. out end
  -- os.time interprets the table as local time; correct by the UTC offset
  local t = os.time { year = y, month = mo, day = d, hour = h, min = mi, sec = s }
  local utc = os.time(os.date("!*t", t))
  return t + (t - utc)
end

-- follow_prefix(client, prefix, opts, fn): call fn(snap) with every key under
-- prefix now, and again after every change under it: snap = {kvs=, mod_revision=}
-- (mod_revision: the store's revision of that read, so deliveries only grow, never
-- twice for one). Each round is one read of the prefix (a change can touch several
-- keys; a read sees them together), then a wait for the next event under it or for
-- opts.poll_interval (the read after a quiet interval is the safety net). A broken
-- watch is opened again from the last read. Returns when fn returns true; runs until
-- cancelled otherwise (the watch is closed either way). Task only; yields.
function M.follow_prefix(client, prefix, opts, fn)
  local last, backoff = 0, 0.1
  local poll = opts.poll_interval or 60
  local held <close> = setmetatable({}, { __close = function(h) if h.w then h.w:close() end end })
  while true do
    local res, err = client:get(prefix, { prefix = true })
    if not res then
      log.warn { event = "store_get_failed", key = prefix, error = tostring(err) }
      task.sleep(backoff)
      backoff = math.min(backoff * 2, 5)
    else
      backoff = 0.1
      if opts.on_read then opts.on_read() end
      local rev = res.revision or 0
      if rev > last then
        last = rev
        if fn { kvs = res.kvs or {}, mod_revision = rev } == true then return true end
      end
      if not held.w then
        local werr
        held.w, werr = client:watch(prefix, { prefix = true, start_revision = rev + 1 })
        if not held.w then
          log.warn { event = "store_watch_failed", key = prefix, error = tostring(werr) }
          task.sleep(1)
        end
      end
      if held.w then
        local evs, e2, code = held.w:next(poll)
        if not evs and code ~= "timeout" then
          log.warn { event = "store_watch_interrupted", key = prefix, error = tostring(e2), code = tostring(code),
            msg = "re-reading and watching again" }
          held.w:close()
          held.w = nil
        end
      end
    end
  end
end

-- follow(client, key, opts, fn): call fn(kv) for the current value of key and then
-- for every change, in revision order, never twice for one revision. Watches the
-- exact key; on a compacted revision or a broken watch it re-reads and watches
-- again; every opts.poll_interval without events it also re-reads (a safety net),
-- and watches again when that read finds a change the watch missed (a frozen member).
-- Returns when fn returns true; runs until cancelled otherwise. Task only.
function M.follow(client, key, opts, fn)
  local last = 0
  local poll = opts.poll_interval or 60
  local function deliver(kv)
    if kv and kv.mod_revision and kv.mod_revision > last then
      last = kv.mod_revision
      return fn(kv)
    end
  end
  local backoff = 0.1
  while true do
    local res, err = client:get(key)
    if not res then
      log.warn { event = "store_get_failed", key = key, error = tostring(err) }
      task.sleep(backoff)
      backoff = math.min(backoff * 2, 5)
    else
      backoff = 0.1
      if opts.on_read then opts.on_read() end
      if deliver(res.kvs and res.kvs[1]) then return true end
      local w, werr = client:watch(key, { start_revision = (res.revision or 0) + 1 })
      if not w then
        log.warn { event = "store_watch_failed", key = key, error = tostring(werr) }
        task.sleep(1)
      else
        while true do
          local evs, e2, code = w:next(poll)
          if evs then
            if opts.on_read then opts.on_read() end
            for _, ev in ipairs(evs) do
              if ev.type == "put" and ev.key == key and deliver(ev) then
                w:close()
                return true
              end
            end
          elseif code == "timeout" then
            local r2, _, gcode = client:get(key)
            -- a read that timed out moved the client on to the next member: ask it now
            if not r2 and gcode == "timeout" and #client.endpoints > 1 then r2 = client:get(key) end
            if r2 then
              if opts.on_read then opts.on_read() end
              local kv = r2.kvs and r2.kvs[1]
              local missed = kv and kv.mod_revision and kv.mod_revision > last
              if deliver(kv) then
                w:close()
                return true
              end
              if missed then
                -- the watch slept through a change: its member is frozen or cut
                -- off while its connection stays open. Watch again, from the member
                -- the read just succeeded on.
                log.warn { event = "store_watch_stalled", key = key, revision = kv.mod_revision,
                  msg = "the poll found a change the watch missed; watching again" }
                w:close()
                break
              end
            end
          else
            log.warn { event = "store_watch_interrupted", key = key, error = tostring(e2), code = tostring(code),
              msg = "re-reading and watching again" }
            w:close()
            break
          end
        end
      end
    end
  end
end

function M.json(v)
  return cjson.encode(v)
end

return M
