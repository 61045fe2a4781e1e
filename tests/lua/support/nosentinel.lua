-- support.nosentinel: a stolon cluster without a sentinel, for specs that run real
-- failovers against real pausers: clusterdata with three keepers that nothing
-- updates, so a failover that pauses waits for a master change that never comes and
-- faults can arrive while it waits (faults_failover_spec, pause_lease_spec). Task only.
--
--   local N = require "support.nosentinel"
--   local env = N.new { client = c, cluster = "x", hosts = {...}, pg_port = 1, pauser_port = 2, token = "t" }
--   env:reset()                         -- fresh clusterdata: keeper0 master, keeper1 sync, 2s
--   env:health(i) -> /health body of pauser i | nil
--   env:doc() -> the clusterdata document; env:count(suffix) -> keys under KEY .. suffix
--   env:failover_args(endpoint, extra) -> argv for `stolon-pgbouncer failover`
local CD = require "playground.clusterdata"
local cjson = require "cjson.safe"
local http = require "http"

local M = {}
local Env = {}
Env.__index = Env

--- new{client=, cluster=, hosts=, pg_port=, pauser_port=, token=} -> env (env.key:
--- the clusterdata key)
function M.new(o)
  local env = setmetatable({}, Env)
  for k, v in pairs(o) do env[k] = v end
  env.key = "stolon/cluster/" .. o.cluster .. "/clusterdata"
  return env
end

function Env:reset()
  local keepers = {}
  for k, h in ipairs(self.hosts) do keepers[k] = { uid = "keeper" .. (k - 1), host = h, port = self.pg_port } end
  assert(self.client:put(self.key, CD.encode(CD.new { keepers = keepers, master = "keeper0", sync = { "keeper1" },
    sleep_interval = "2s" })))
end

function Env:health(i)
  local r = http.request { url = ("http://%s:%d/health"):format(self.hosts[i], self.pauser_port),
    headers = { Authorization = self.token }, timeout = 2 }
  if not r or r.status ~= 200 then return nil end
  return cjson.decode(r.body)
end

function Env:doc()
  local r = assert(self.client:get(self.key))
  return assert(cjson.decode(r.kvs[1].value))
end

--- env:count(suffix) -> number of keys under key .. suffix, and the kvs
function Env:count(suffix)
  local r = assert(self.client:get(self.key .. suffix, { prefix = true }))
  return #r.kvs, r.kvs
end

--- env:failover_args(endpoint [, extra]) -> argv: a failover of this cluster with a
--- sleepInterval (3s) longer than the document's, so nothing delays its pause.
function Env:failover_args(endpoint, extra)
  local args = { "failover", "--cluster-name", self.cluster, "--store-endpoints", endpoint,
    "--pauser-port", tostring(self.pauser_port), "--metrics-port", "0",
    "--failover-sleep-interval", "3s", "--health-check-timeout", "1s" }
  for _, a in ipairs(extra or {}) do args[#args + 1] = a end
  return args
end

return M
