-- failover: a zero-downtime switch of the stolon primary.
--
-- The steps live in lua/failover.lua; this policy puts them in order. To change the
-- procedure for your site, copy this file, edit the pipeline below, and run
-- `stolon-pgbouncer failover --policy /path/to/your/failover.lua ...`:
--
--   p:step("notify_chat", function() ... end)                       -- add a step at the end
--   p:insert_before("pause", "my_check", function() ... end)        -- or before another
--   p:insert_before("pause", "x", do_x):defer("undo_x", undo_x)     -- with its undo
--
-- A step fails by raising or by returning nil, err; every undo registered so far
-- (release_lock, restore_sleep_interval, resume) then runs in reverse order.
local failover = require "failover"

local f = failover.prepare(arg)
local p = f:pipeline(failover.display())
return f:run(p)
