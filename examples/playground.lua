-- The playground that stays up (`make playground`; scripts/playground.sh starts this
-- in its own session): boot the demo's loopback cluster and hold it until TERM or
-- INT, then tear it down. The stand-in sentinel runs in this process, so the cluster
-- lives exactly as long as it does.
--
--   stolon-pgbouncer run examples/playground.lua STATE_DIR
--
-- STATE_DIR (created by the caller) receives:
--   pids      every process the playground runs ("pid starttime what" per line), rewritten every
--             2 s (the sentinel restarts Postgres nodes, supervise restarts PgBouncer),
--             so playground-down can stop exactly these even if this process died;
--   env       shell assignments: the store, cluster name, token file, ports;
--   try       the commands to try against it (printed by `make playground`);
--   ready     written last, once everything answers.
-- On the way out it removes pids, env, try and ready.
local cluster = require "playground.cluster"
local fs = require "fs"
local log = require "log"
local procstat = require "playground.procstat"
local task = require "task"

local state = arg[1]
if not state or state == "" then
  io.stderr:write("usage: stolon-pgbouncer run examples/playground.lua STATE_DIR\n")
  return 2
end

local function write(name, text)
  local ok, err = fs.write_atomic(state .. "/" .. name, text, "0644")
  if not ok and err then log.error { event = "playground_state_write_failed", file = name, error = err } end
end

local function shell_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

-- A process's start time (field 22 of /proc/PID/stat, in clock ticks since boot): with
-- the pid it names one process for good, even after the pid is reused.
local function start_time(pid)
  local f = procstat.fields(pid)
  return f and f[22]
end

local function record_pids(c)
  local lines = {}
  for _, p in ipairs(c:pids()) do
    local st = start_time(p.pid)
    if st then lines[#lines + 1] = ("%d %s %s"):format(p.pid, st, p.what) end
  end
  write("pids", table.concat(lines, "\n") .. "\n")
end

local function describe(c)
  local o = c.o
  local bin = rawget(package, "spgb_dir") .. "/stolon-pgbouncer"
  local token_file = c.base .. "/token"
  local env = {
    "STOLONCTL_CLUSTER_NAME=" .. shell_quote(o.cluster_name),
    "STOLONCTL_STORE_ENDPOINTS=" .. shell_quote(c.etcd_endpoint),
    "STBOUNCER_FAILOVER_TOKEN_FILE=" .. shell_quote(token_file),
    "PLAYGROUND_BASE=" .. shell_quote(c.base),
    "PLAYGROUND_PAUSER_PORT=" .. o.pauser_port,
    "PLAYGROUND_EXTRA_PAUSER=" .. shell_quote(("%s:%d"):format(o.proxy_host, o.pauser_port)),
    "PLAYGROUND_APP=" .. shell_quote(c.app_conninfo),
  }
  write("env", table.concat(env, "\n") .. "\n")
  local failover = {}
  for i, a in ipairs(c:failover_args()) do failover[i] = a:find("[%s{}'\"]") and shell_quote(a) or a end
  local try = {
    ("the playground is up: cluster %q, etcd %s, primary %s, proxy PgBouncer %s:%d"):format(o.cluster_name,
      c.etcd_endpoint, (c:primary() or {}).host or "?", o.proxy_host, o.bouncer_port),
    ("logs and data in %s; `make playground-down` stops it"):format(c.base),
    "",
    "try (in this folder):",
    ("  export STOLONCTL_CLUSTER_NAME=%s STOLONCTL_STORE_ENDPOINTS=%s"):format(o.cluster_name, c.etcd_endpoint),
    ("  export STBOUNCER_FAILOVER_TOKEN_FILE=%s"):format(token_file),
    ("  %s status --pauser-port %d --extra-pauser %s:%d --metrics-port 0"):format(bin, o.pauser_port,
      o.proxy_host, o.pauser_port),
    ("  %s %s"):format(bin, table.concat(failover, " ")),
    ("  psql %s -c 'select inet_server_addr()'"):format(shell_quote(c.app_conninfo)),
    ("  %s repl      then:  c = etcd.connect{endpoints = {%q}}"):format(bin, c.etcd_endpoint),
    ("                      c:get(%q)"):format(("stolon/cluster/%s/clusterdata"):format(o.cluster_name)),
    "  make playground-status",
  }
  write("try", table.concat(try, "\n") .. "\n")
end

local c
local stopping = false
local stop = task.event()
for _, sig in ipairs { "TERM", "INT", "HUP" } do
  task.on_signal(sig, function(name)
    log.info { event = "playground_stopping", signal = name }
    stopping = true
    stop:set()
  end)
end

-- A signal during the boot is only noted: the boot is not cancelled half-way (what it
-- started would be left running); the cluster is stopped once it is up.
local function hold()
  local err
  c, err = cluster.boot {}
  if not c then error("playground: " .. tostring(err), 0) end
  describe(c)
  record_pids(c)
  write("ready", os.date("!%Y-%m-%dT%H:%M:%SZ") .. "\n")
  while not stopping do
    stop:wait(2)
    if not stopping then record_pids(c) end
  end
end

local ok, res = pcall(hold)
if c then c:stop() end
for _, f in ipairs { "ready", "try", "env", "pids" } do fs.remove(state .. "/" .. f) end
if not ok then
  io.stderr:write(tostring(res), "\n")
  return 1
end
return 0
