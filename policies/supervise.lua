-- supervise: keep a PgBouncer pointed at the current primary (stolon's, or with
-- --manager patroni, Patroni's: the leader key's member running as master/primary).
--
-- Waits for a primary, renders the config template with its address, starts
-- PgBouncer, and from then on re-renders and RELOADs only when the primary's address
-- changes. A malformed document, a bad template or a failed write never replaces
-- the last good config. On TERM/INT/QUIT: wait the grace period, DISABLE every
-- database, wait for clients to drain, then stop PgBouncer. Only our own child is
-- ever reloaded, disabled or stopped: supervise refuses to start where another
-- PgBouncer listens, and ENABLEs what an earlier one of ours left disabled.
--
-- Copy this file and run it with `stolon-pgbouncer supervise --policy FILE` to change
-- what happens; the steps below are the whole behaviour.
local common = require "common"
local flags = require "flags"
local fs = require "fs"
local log = require "log"
local proc = require "proc"
local task = require "task"
local template = require "template"

local spec = common.spec(common.global_flags, common.stolon_flags, common.manager_flags, common.pgbouncer_flags, {
  { name = "poll-interval", type = "duration", default = "1m", help = "Store poll interval (safety net; we also watch)" },
  { name = "pgbouncer-timeout", type = "duration", default = "5s", help = "Timeout for PgBouncer operations" },
  { name = "pgbouncer-retry-timeout", type = "duration", default = "5s",
    help = "Retry failed PgBouncer operations at this interval" },
  { name = "termination-grace-period", type = "duration", default = "5s",
    help = "Pause before rejecting new PgBouncer connections (on shutdown)" },
  { name = "termination-poll-interval", type = "duration", default = "10s",
    help = "Poll PgBouncer for outstanding connections at this rate" },
  { name = "child-process", type = "bool", default = "true",
    help = "Run PgBouncer as our child (--no-child-process: only render and RELOAD)" },
  { name = "pgbouncer-binary", default = "pgbouncer", help = "PgBouncer program to run" },
  { name = "pgbouncer-start-timeout", type = "duration", default = "10s",
    help = "Stop and start again a PgBouncer that does not answer within this time of its start" },
  { name = "restart-backoff", type = "duration", default = "1s",
    help = "First delay before restarting a PgBouncer that exited or never answered (doubles up to 30s)" },
})

local opts = flags.parse_or_exit(spec, arg, { command = "supervise", description = "Manages local PgBouncer" })
common.setup_logging(opts)
local m = common.metrics()
local L = log.with { component = "supervise" }

-- Resolve PgBouncer once, before anything else: not in PATH is common for ordinary
-- users (Debian puts it in /usr/sbin), and retrying a missing program every second
-- helps nobody.
if opts.child_process then
  local path, perr = common.find_program(opts.pgbouncer_binary)
  if not path then
    L.error { event = "pgbouncer_not_found", error = perr,
      msg = "install pgbouncer or give its path with --pgbouncer-binary" }
    return 1
  end
  opts.pgbouncer_binary = path
end

local PATRONI = opts.manager == "patroni"
m.cluster_identifier:set(1, { cluster_name = PATRONI and opts.patroni_scope or opts.cluster_name })
m.store_poll_interval:set(opts.poll_interval)
-- Alert before the store client certificate expires (stolon-pgbouncer#128).
if opts.store_cert_file and opts.store_cert_file ~= "" then
  local expiry, xerr = common.certificate_expiry(opts.store_cert_file)
  if expiry then
    m.certificate_expiry:set(expiry, { cert_file = opts.store_cert_file })
  else
    L.warn { event = "certificate_expiry_unknown", cert_file = opts.store_cert_file, error = tostring(xerr) }
  end
end
common.serve_metrics(opts)

-- The template is read at start-up (a broken file stops us before anything is
-- touched) and again at every render, so an edited template takes effect at the next
-- render. A template that has become broken or was deleted does not stop us from
-- following the primary: the error (file:line:col) is logged and counted, and the
-- last good template renders the config instead. (The original refused templates
-- without extra_float_digits too.)
local function load_template()
  local text, err = fs.read(opts.pgbouncer_config_template_file)
  if not text then return nil, err end
  if not text:match("ignore_startup_parameters%s*=[^\n]*extra_float_digits") then
    return nil, ("PgBouncer is misconfigured: expected config file '%s' to define "
      .. "'ignore_startup_parameters' to include 'extra_float_digits'"):format(opts.pgbouncer_config_template_file)
  end
  return template.compile(text, opts.pgbouncer_config_template_file)
end

local good_tmpl, terr = load_template() -- the last template that compiled (and rendered)
if not good_tmpl then
  L.error { event = "template_invalid", error = terr }
  return 1
end

-- render_config(ctx) -> text | nil, err: with the template as it is now on disk, or
-- with the last good one when that is broken.
local function render_config(ctx)
  local fresh, lerr = load_template()
  if not fresh then
    m.config_errors:inc(1, { reason = "template" })
    L.error { event = "template_invalid", error = lerr, msg = "rendering with the last good template" }
  else
    local text, rerr = fresh:render(ctx)
    if text then
      good_tmpl = fresh
      return text
    end
    m.config_errors:inc(1, { reason = "render" })
    L.error { event = "template_render_failed", error = rerr, msg = "rendering with the last good template" }
  end
  local text, rerr = good_tmpl:render(ctx)
  if not text and not fresh then m.config_errors:inc(1, { reason = "render" }) end
  return text, rerr
end

local client, cerr = common.connect_store(opts)
if not client then
  L.error { event = "store_connect_failed", error = cerr }
  return 1
end
-- stolon: the clusterdata key; Patroni: the scope's prefix, every key under it.
local key = PATRONI and common.patroni_base(opts) or common.clusterdata_key(opts)
local admin = common.pgbouncer_admin(opts, opts.pgbouncer_timeout)
local stolon = require "stolon"
local patroni = require "patroni"

local state = {
  latest = nil,         -- newest kv seen
  applied_host = nil,   -- host:port PgBouncer was last reloaded to
  changed = task.event(),
  config_version = 0,   -- configs written so far
  written = task.event(), -- set at each config written while we have no ready child
  starting = nil,       -- our PgBouncer, spawned, not (yet) confirmed ready
  child = nil,          -- our PgBouncer, confirmed alive and answering as itself
  stopping = false,
}

-- template_fields(master, cd) -> the template's fields: stolon's (Host, Port,
-- Keeper, DbUID, ClusterName, MasterDbUID) or Patroni's (Host, Port, Member, Scope).
local function template_fields(master, cd)
  if PATRONI then
    return { Host = master.host, Port = master.port or "", Member = master.name, Scope = opts.patroni_scope }
  end
  return {
    Host = master.host, Port = master.port or "", Keeper = master.keeper or "", DbUID = master.uid,
    ClusterName = opts.cluster_name, MasterDbUID = cd:master_uid() or "",
  }
end

-- Render and write the config for master m. Returns true, or nil, err (old config kept).
local function write_config(master, cd)
  local ctx = template_fields(master, cd)
  local text, err = render_config(ctx)
  if not text then return nil, err end
  local _, werr = fs.write_atomic(opts.pgbouncer_config_file, text)
  if werr then
    m.config_errors:inc(1, { reason = "write" })
    return nil, werr
  end
  state.config_version = state.config_version + 1
  return true
end

-- answers_as(pid) -> true | nil, why: the PgBouncer answering on the admin console is
-- process pid: the pid in its pidfile is pid, or (no pidfile) it runs our config file.
local function answers_as(pid)
  local id, err = common.pgbouncer_identity(admin)
  if not id then return nil, err end
  if id.pid and id.pid ~= pid then
    return nil, ("the PgBouncer answering is pid %d, not %d"):format(id.pid, pid)
  end
  if not id.pid and id.conffile ~= opts.pgbouncer_config_file then
    return nil, ("the PgBouncer answering runs %s, not %s"):format(tostring(id.conffile), opts.pgbouncer_config_file)
  end
  return true
end

-- is_ready(p) -> true | nil, why: p, our child, is alive and is the PgBouncer answering
-- on the admin console. Nothing but SHOW is sent to an admin console before this holds
-- (issue 12: a foreign PgBouncer on our socket answered for a child that had exited).
local function is_ready(p)
  if not p:running() then return nil, "it exited" end
  local ok, err = answers_as(p:pid())
  if ok and not p:running() then return nil, "it exited" end
  return ok, err
end

-- ours_alive() -> our ready child, when it still runs
local function ours_alive()
  local p = state.child
  if p and p:running() then return p end
end

local function wait_ready(p, timeout)
  local deadline = task.now() + timeout
  local ok, err
  repeat
    ok, err = is_ready(p)
    if ok or not p:running() then break end
    task.sleep(0.05)
  until task.now() > deadline
  return ok, err
end

-- announce(): tell systemd (Type=notify) that PgBouncer accepts and where it routes:
-- READY=1 the first time, the route in STATUS= every time. A no-op without systemd.
local function announce()
  local status = "STATUS=PgBouncer routes to " .. tostring(state.applied_host)
  require("notify").send(state.announced and status or ("READY=1\n" .. status))
  state.announced = true
end

-- stop_child(p): PgBouncer's safe shutdown (INT), KILL after 10 s; waits until it is
-- reaped. Task only; yields.
local function stop_child(p)
  p:signal("INT")
  if not p:wait(10) then
    p:signal("KILL")
    p:wait(5)
  end
end

-- The addresses our child will listen on must be free: if something answers there,
-- our child would exit ("unix socket is in use") while we talked to the other one.
local function address_in_use(ini)
  local where, why = common.listener(opts, common.pgbouncer_listen_hosts(opts, ini))
  if not where then return nil end
  return ("something already listens on %s (%s): supervise runs its own PgBouncer there and touches "
    .. "no other; stop that one, or run supervise with --no-child-process to manage it")
    :format(where, tostring(why):gsub("%s+$", ""):gsub("\n%s*", "; "))
end

-- start_pgbouncer() -> p | nil, err: spawn PgBouncer with the config on disk and wait
-- until it answers as itself. One that does not within --pgbouncer-start-timeout is
-- stopped. state.starting holds it meanwhile, so a shutdown stops it too.
local function start_pgbouncer()
  local in_use = address_in_use(fs.read(opts.pgbouncer_config_file))
  if in_use then
    L.error { event = "pgbouncer_address_in_use", error = in_use }
    return nil, in_use
  end
  local version = state.config_version
  local p, err = proc.spawn { opts.pgbouncer_binary, opts.pgbouncer_config_file }
  if not p then return nil, err end
  state.starting = p
  L.info { event = "pgbouncer_started", pid = p:pid() }
  local ok, rerr = wait_ready(p, opts.pgbouncer_start_timeout)
  if not ok then
    L.error { event = "pgbouncer_not_ready", pid = p:pid(), error = tostring(rerr), msg = "stopping it" }
    if p:running() then stop_child(p) end
    state.starting = nil
    return nil, "not ready: " .. tostring(rerr)
  end
  state.child, state.starting = p, nil
  announce()
  -- a config written while it started may have come after it read its own
  if state.config_version ~= version then
    local rok, rrerr = admin:reload()
    if not rok then
      m.reload_errors:inc()
      L.error { event = "reload_failed", error = tostring(rrerr) }
    end
  end
  return p
end

-- Keep our PgBouncer running, from the first config written until shutdown: start it,
-- wait for it to exit, start it again, backing off while starts fail (documented in
-- the README). A top-level task: the worker that writes configs may be cancelled while
-- this one must still account for the child it started.
local function keep_pgbouncer()
  while state.config_version == 0 do state.written:wait() end
  local backoff = opts.restart_backoff
  while not state.stopping do
    local p, err = start_pgbouncer()
    if p then
      backoff = opts.restart_backoff
      local code, sig = p:wait()
      if state.stopping then return end
      state.child = nil
      L.error { event = "pgbouncer_exited", code = tostring(code), signal = tostring(sig), restart_in = backoff }
      m.pgbouncer_restarts:inc()
    else
      L.error { event = "pgbouncer_start_failed", error = tostring(err), retry_in = backoff }
      backoff = math.min(backoff * 2, 30)
    end
    task.sleep(backoff)
  end
end

-- decode(kv) -> the cluster view | nil, err: clusterdata (kv.value) or, for Patroni,
-- the scope's keys (kv.kvs, follow_prefix's snapshot).
local function decode(kv)
  if PATRONI then return patroni.decode(kv.kvs, key) end
  return stolon.decode(kv.value, key)
end

-- Act on the newest clusterdata (Patroni: the newest read of the scope's keys):
-- called by the single worker task.
local function apply(kv)
  local cd, err = decode(kv)
  if not cd then
    m.clusterdata_errors:inc(1, { reason = "malformed" })
    L.error { event = "clusterdata_invalid", key = key, revision = kv.mod_revision, error = err,
      msg = "keeping the current PgBouncer config" }
    return true
  end
  local master, why = cd:primary()
  if not master or not master.host then
    m.clusterdata_errors:inc(1, { reason = "no_master" })
    L.info { event = "clusterdata_no_master", reason = why, msg = "no master found, not reloading PgBouncer" }
    return true
  end
  master.keeper = master.keeper or master.name -- Patroni's member name labels what stolon's keeper does
  local addr = master.host .. ":" .. tostring(master.port)
  if addr == state.applied_host then return true end
  m.last_keeper_seconds:set(common.unix_now(), { keeper = master.keeper })
  L.info { event = "generate_configuration", host = master.host, port = master.port, keeper = master.keeper }
  local ok, werr = write_config(master, cd)
  if not ok then
    L.error { event = "config_write_failed", error = werr, msg = "keeping the current PgBouncer config" }
    return nil, werr
  end
  if opts.child_process and not ours_alive() then
    -- no PgBouncer of ours runs: keep_pgbouncer starts one with this config. Nothing
    -- was reloaded, so neither the reload metric nor event=reloaded says so.
    state.applied_host = addr
    state.written:set()
    L.info { event = "config_written", host = master.host, keeper = master.keeper, revision = kv.mod_revision,
      msg = "PgBouncer starts with it" }
    return true
  else
    L.info { event = "reload" }
    local rok, rerr = admin:reload()
    if not rok then
      m.reload_errors:inc()
      return nil, "reload: " .. tostring(rerr)
    end
    -- No server connection to the old primary may survive the switch
    -- (pgbouncer#1311, #432): RECONNECT closes each one once its client releases it.
    local rc_ok, rc_err = admin:reconnect()
    if not rc_ok then L.warn { event = "reconnect_failed", error = tostring(rc_err) } end
  end
  state.applied_host = addr
  announce()
  m.last_reload_seconds:set(common.unix_now(), { keeper = master.keeper })
  L.info { event = "reloaded", host = master.host, keeper = master.keeper, revision = kv.mod_revision }
  return true
end

local function worker()
  local done_rev = 0
  while true do
    state.changed:wait()
    while state.latest and state.latest.mod_revision > done_rev do
      local kv = state.latest
      local ok, err = apply(kv)
      if ok then
        done_rev = kv.mod_revision
      else
        L.error { event = "apply_failed", error = tostring(err), retry_in = opts.pgbouncer_retry_timeout }
        -- retry after the interval, or sooner if a newer document arrives
        state.changed:wait(opts.pgbouncer_retry_timeout)
      end
    end
  end
end

local function watcher()
  local follow = PATRONI and common.follow_prefix or common.follow
  follow(client, key, {
    poll_interval = opts.poll_interval,
    on_read = function() m.store_last_update_seconds:set(common.unix_now()) end,
  }, function(kv)
    if not state.latest or kv.mod_revision > state.latest.mod_revision then
      state.latest = kv
      state.changed:set()
    end
  end)
end

-- Before DISABLE, drain_and_stop records here which databases it disables in which
-- PgBouncer: if we die mid-drain, that PgBouncer outlives us with clients refused, and
-- the next supervise ENABLEs them (enable_leftovers).
local DISABLED_FILE = opts.pgbouncer_config_file .. ".disabled"

-- Drain and stop our PgBouncer: only a child of ours that runs and answers as itself
-- (one still starting may have clients already: it is drained once it answers, or
-- stopped when it does not). Nothing is sent to a PgBouncer that is not ours, and
-- nothing once ours has exited.
local function drain_and_stop()
  local p = ours_alive()
  local s = state.starting
  if not p and s and s:running() then
    if not wait_ready(s, opts.pgbouncer_start_timeout) then return stop_child(s) end
    p, state.child, state.starting = s, s, nil
  end
  if not p then return end
  L.info { event = "termination_grace_period", msg = "waiting for grace period", seconds = opts.termination_grace_period }
  task.sleep(opts.termination_grace_period)
  if not p:running() then return end
  L.info { event = "disable", msg = "disabling new PgBouncer connections" }
  local names = {}
  for _, db in ipairs(admin:show("DATABASES") or {}) do
    if db.name ~= "pgbouncer" then names[#names + 1] = db.name end
  end
  local _, werr = fs.write_atomic(DISABLED_FILE, ("pid=%d\n%s\n"):format(p:pid(), table.concat(names, "\n")), "0600")
  if werr then L.error { event = "disable_record_failed", error = tostring(werr) } end
  for _, name in ipairs(names) do
    local ok, err = admin:disable(name)
    if not ok then L.error { event = "disable_failed", database = name, error = tostring(err) } end
  end
  -- Outstanding = client connections (SHOW CLIENTS), not server ones: PgBouncer
  -- keeps idle server connections for server_idle_timeout, which would hold the
  -- shutdown for minutes with no client left.
  while p:running() do
    local rows, err = admin:show("CLIENTS")
    if not rows then
      L.error { event = "pgbouncer.error", error = tostring(err), msg = "could not contact PgBouncer" }
      break
    end
    local per_db, total = {}, 0
    for _, c in ipairs(rows) do
      if c.database ~= "pgbouncer" then
        per_db[c.database] = (per_db[c.database] or 0) + 1
        total = total + 1
      end
    end
    for db, n in pairs(per_db) do L.info { event = "outstanding_connections", database = db, count = n } end
    m.outstanding_connections:set(total)
    if total == 0 then break end
    L.info { event = "shutdown_pending", total = total,
      msg = "waiting for outstanding connections to complete before terminating PgBouncer" }
    task.sleep(opts.termination_poll_interval)
  end
  L.info { event = "idle", msg = "no more connections in PgBouncer, shutting down" }
  if p:running() then stop_child(p) end
  fs.remove(DISABLED_FILE) -- the DISABLEs ended with that PgBouncer
end

-- enable_leftovers(): ENABLE what an earlier supervise of ours DISABLEd in a PgBouncer
-- that outlived it (DISABLED_FILE), if that very PgBouncer still answers: the pauser
-- RESUMEs on start for the same reason.
local function enable_leftovers()
  local text = fs.read(DISABLED_FILE)
  if not text then return end
  local pid = tonumber(text:match("^pid=(%d+)"))
  local ok, why = answers_as(pid or -1)
  if ok then
    for name in text:gmatch("\n([^\n]+)") do
      local eok, eerr = admin:enable(name)
      local log_at = eok and L.warn or L.error
      log_at { event = "enable_leftover", database = name, pid = pid, error = eerr and tostring(eerr),
        msg = "an earlier supervise left it disabled" }
    end
  else
    L.info { event = "disable_record_stale", pid = pid, reason = tostring(why), msg = "that PgBouncer is gone" }
  end
  fs.remove(DISABLED_FILE)
end

local main_tasks = {}
local done = task.event()
local function shutdown(signame)
  if state.stopping then
    L.error { event = "second_signal", msg = "received second signal, exiting immediately" }
    if state.child then state.child:signal("TERM") end
    if state.starting then state.starting:signal("TERM") end
    os.exit(1)
  end
  state.stopping = true
  require("notify").send("STOPPING=1\nSTATUS=draining PgBouncer")
  m.shutdown_seconds:set(common.unix_now())
  L.info { event = "shutdown_requested", signal = signame }
  for _, t in ipairs(main_tasks) do t:cancel() end
  drain_and_stop()
  done:set()
end
for _, sig in ipairs { "TERM", "INT", "QUIT" } do task.on_signal(sig, shutdown) end

L.info { event = "start", key = key, endpoints = table.concat(opts.store_endpoints, ","),
  child_process = opts.child_process }
enable_leftovers()
if opts.child_process then
  local in_use = address_in_use(fs.read(opts.pgbouncer_config_template_file))
  if in_use then
    L.error { event = "pgbouncer_address_in_use", error = in_use }
    return 1
  end
  main_tasks[#main_tasks + 1] = task.named("pgbouncer", keep_pgbouncer)
end
main_tasks[#main_tasks + 1] = task.named("worker", worker)
main_tasks[#main_tasks + 1] = task.named("watcher", watcher)
done:wait()
L.info { event = "shutdown" }
return 0
