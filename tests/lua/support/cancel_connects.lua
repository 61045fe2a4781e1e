-- Run as a child host by httpc_spec ("stolon-pgbouncer run <this file>"): requests
-- cancelled or timed out while their connect is in flight, to a live and a dead
-- port, then a request that must still work. curl 7.88-8.1 closes such a socket
-- before its CURL_POLL_REMOVE and without the close-socket callback (curl#11439);
-- a poll handle left watching that number made libuv abort() the whole process.
-- Prints "ok" and exits 0 when the loop survived.
local http = require "http"
local httpc = require "httpc"
local task = require "task"

local live_host, live_port, dead_host, dead_port = arg[1], tonumber(arg[2]), arg[3], tonumber(arg[4])
local srv = assert(http.serve { address = live_host, port = live_port, handler = function() return 200, "ok" end })
local live = ("http://%s:%d/x"):format(live_host, live_port)
local dead = ("http://%s:%d/x"):format(dead_host, dead_port)
for round = 1, 300 do
  local hs = {}
  for i = 1, 8 do
    local url = (i % 2 == 0) and dead or live
    local timeout = 0.001 * (round % 5) + 0.0005
    hs[i] = task.spawn(function() return httpc.request { url = url, timeout = timeout } end)
  end
  for _ = 1, round % 3 do task.yield() end
  for i = 1, 8, 3 do hs[i]:cancel() end
  task.sleep(0.002)
  local r = assert(httpc.request { url = live, timeout = 5 })
  assert(r.status == 200, "status " .. tostring(r.status))
end
srv:close()
print("ok")
