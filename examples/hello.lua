-- A short tour of the host: tasks in parallel, a template rendered and written
-- atomically, a child process. Run: ./stolon-pgbouncer run examples/hello.lua
local task = require "task"
local log = require "log"
local proc = require "proc"

local t0 = task.now()
local results = task.all {
  function() task.sleep(0.2) return "etcd watch" end,
  function() task.sleep(0.2) return "pause pgbouncer" end,
  function() task.sleep(0.2) return "health check" end,
}
print(("three 200 ms tasks in parallel took %.0f ms: %s, %s, %s"):format(
  (task.now() - t0) * 1000, results[1][1], results[2][1], results[3][1]))

local ok, template = pcall(require, "template")
if ok then
  local t = assert(template.compile("[databases]\n* = host={{.Host}} port={{.Port}}\n", "inline"))
  io.write(assert(t:render { Host = "127.0.0.11", Port = 5432 }))
end

local code, out = proc.run { "uname", "-sr" }
log.info { event = "hello", msg = "child process finished", code = code, output = out:gsub("\n", "") }
