-- Benchmark target: http.serve with a handler returning a small JSON body, driven by
-- wrk from inside the same process (wrk runs as a child while the server serves).
-- usage: stolon-pgbouncer run bench/http_server.lua [duration_s] [connections]
-- Prints one line: "rps=<requests/s> p99_ms=<p99 latency in ms> port=<port>".
local http = require "http"
local proc = require "proc"

local duration = tonumber(arg and arg[1]) or 10
local conns = tonumber(arg and arg[2]) or 64

local server = assert(http.serve { port = 0, connection_limit = 4096, handler = function()
  return 200, { ok = true, node = "bench", paused = false }
end })

local function ms(v, unit)
  local n = tonumber(v)
  if unit == "us" then return n / 1000 elseif unit == "s" then return n * 1000 end
  return n
end

local code, out, err = proc.run { "wrk", "-t2", "-c" .. conns, "-d" .. duration .. "s", "--latency",
  "http://127.0.0.1:" .. server:port() .. "/", timeout = duration + 60 }
server:close()
if code ~= 0 then
  io.stderr:write("wrk failed: ", tostring(err), "\n")
  return 1
end
io.stderr:write(out)
local rps = out:match("Requests/sec:%s*([%d.]+)")
local v, unit = out:match("\n%s*99%%%s+([%d.]+)(%a+)")
print(("rps=%s p99_ms=%.3f"):format(rps, ms(v, unit)))
return 0
