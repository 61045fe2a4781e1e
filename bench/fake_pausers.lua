-- bench/fake_pausers.lua HOST BASE_PORT N: N cheap fake pausers for bench/fanout.lua,
-- one process: an http.serve on each of HOST:BASE_PORT .. BASE_PORT+N-1 answering
-- GET /health, POST /pause and POST /resume at once with 200 (no PgBouncer behind,
-- so its "own PAUSE" is nil). They stand in for pausers on other machines, where the
-- failover's fan-out to many of them is what is measured. Prints "ready N" on stdout
-- once every port listens; serves until TERM.
local http = require "http"
local task = require "task"

local host, base, n = arg[1], tonumber(arg[2]), tonumber(arg[3])
assert(host and base and n, "usage: fake_pausers.lua HOST BASE_PORT N")

local servers = {}
local function handler(req)
  if req.path == "/health" then return 200, { status = "healthy", config = { pool_mode = "transaction" } } end
  if req.path == "/pause" then return 200, { created_at = "", expires_at = "" } end
  return 200, {}
end
for i = 0, n - 1 do
  servers[#servers + 1] = assert(http.serve { address = host, port = base + i, handler = handler })
end
io.stdout:write(("ready %d\n"):format(n))
io.stdout:flush()
local stop = false
local sig = task.on_signal("TERM", function() stop = true end)
while not stop do task.sleep(0.2) end
sig:stop()
for _, s in ipairs(servers) do s:close() end
return 0
