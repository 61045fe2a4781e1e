local task = require "task"

describe("task", function()
  it("runs 1,000 sleeping tasks in about the time of one", function()
    local t0 = task.now()
    local hs = {}
    for i = 1, 1000 do
      hs[i] = task.spawn(function() task.sleep(0.2) return i end)
    end
    local sum = 0
    for i = 1, 1000 do
      local ok, v = hs[i]:wait()
      assert.is_true(ok)
      sum = sum + v
    end
    assert.equals(500500, sum)
    local elapsed = task.now() - t0
    assert.is_true(elapsed >= 0.2, "slept at least once")
    assert.is_true(elapsed < 2.0, "not serially: " .. elapsed)
  end)
end)

describe("task semantics", function()
  local proc = require "proc"

  it("spawn/wait returns results and errors carry file:line", function()
    local h = task.spawn(function(a, b) return a + b, "x" end, 2, 3)
    assert.same({ true, 5, "x" }, { h:wait() })
    local bad = task.observed(function() local t = nil; return t.field end)
    local ok, err = bad:wait()
    assert.is_false(ok)
    assert.matches("task_spec%.lua:%d+: attempt to index", err)
  end)

  it("all returns each result and reports every error", function()
    local res, err = task.all {
      function() task.sleep(0.05) return 1 end,
      function() error("first", 0) end,
      function() return 3, 4 end,
      function() error("second", 0) end,
    }
    assert.equals(1, res[1][1])
    assert.same({ 3, 4 }, { res[3][1], res[3][2] })
    assert.equals("first", res[2].error)
    assert.equals("task 2: first; task 4: second", err)
  end)

  it("timeout cancels the function and frees its pending operation", function()
    task.sleep(0)
    local before = task.stats()
    local cleaned = false
    local r = table.pack(task.timeout(0.1, function()
      local ok, err = pcall(task.sleep, 30)
      cleaned = not ok and err == "cancelled"
    end))
    assert.same({ n = 3, nil, "task.timeout: timeout after 0.1s", "timeout" }, r)
    task.sleep(0.01)
    assert.is_true(cleaned)
    local after = task.stats()
    assert.equals(before.waiting, after.waiting)
    assert.equals(before.live, after.live)
  end)

  it("returns the function's results within the timeout and re-raises its error", function()
    assert.same({ 1, 2 }, { task.timeout(1, function() return 1, 2 end) })
    assert.has_error(function() task.timeout(1, function() error("inner", 0) end) end, "inner")
  end)

  it("cancelling a task cancels what it spawned", function()
    local child
    local parent = task.spawn(function()
      child = task.spawn(function() task.sleep(30) end)
      task.sleep(30)
    end)
    task.sleep(0.01)
    parent:cancel()
    task.sleep(0.01)
    assert.equals("cancelled", parent:status())
    assert.equals("cancelled", child:status())
  end)

  it("a yielding primitive in a plain coroutine says it needs a task", function()
    local co = coroutine.wrap(function() task.sleep(0.01) end)
    assert.has_error(co, "task.sleep needs a task (called outside a task, e.g. in a plain coroutine)")
    -- plain coroutines still work as generators
    local gen = coroutine.wrap(function() coroutine.yield(1) coroutine.yield(2) end)
    assert.same({ 1, 2 }, { gen(), gen() })
  end)

  it("a signal reaches on_signal in a new task", function()
    local dir = assert(os.getenv("SPGB_LUA_DIR"))
    local script = os.tmpname()
    local f = assert(io.open(script, "w"))
    f:write([[
      local task = require "task"
      task.on_signal("TERM", function(name) io.write("got ", name, "\n") io.flush() os.exit(0) end)
      io.write("ready\n") io.flush()
      task.sleep(20)
      return 5
    ]])
    f:close()
    local p = assert(proc.spawn { dir .. "/stolon-pgbouncer", "run", script, stdout = "capture" })
    task.sleep(0.5)
    assert(p:signal("TERM"))
    local code = p:wait(10)
    os.remove(script)
    assert.equals(0, code)
    assert.equals("ready\ngot TERM\n", (p:output()))
  end)
end)

describe("task.event and task.mutex", function()
  it("set wakes every waiter, and is remembered when nobody waits", function()
    local ev = task.event()
    local woken = 0
    local hs = {}
    for i = 1, 3 do hs[i] = task.spawn(function() assert(ev:wait(5)) woken = woken + 1 end) end
    task.sleep(0.01)
    assert.equals(0, woken)
    ev:set()
    for i = 1, 3 do hs[i]:wait() end
    assert.equals(3, woken)
    ev:set()
    assert.is_true(ev:wait(0.01))
    assert.same({ nil, "event.wait: timeout", "timeout" }, { ev:wait(0.01) })
  end)

  it("mutex serialises critical sections", function()
    local m = task.mutex()
    local inside, max = 0, 0
    local fns = {}
    for i = 1, 5 do
      fns[i] = function()
        m:with(function()
          inside = inside + 1
          max = math.max(max, inside)
          task.sleep(0.01)
          inside = inside - 1
        end)
      end
    end
    local _, err = task.all(fns)
    assert.is_nil(err)
    assert.equals(1, max)
  end)

  -- The pauser serves a client's /pause then /resume in the order they came.
  it("mutex hands the lock over in the order tasks asked for it", function()
    local m = task.mutex()
    assert(m:lock())
    local order, hs = {}, {}
    for i = 1, 4 do
      hs[i] = task.spawn(function() m:with(function() order[#order + 1] = i end) end)
      task.yield() -- each one queues before the next starts
    end
    m:unlock()
    for i = 1, 4 do assert.is_true((hs[i]:wait(5))) end
    assert.same({ 1, 2, 3, 4 }, order)
  end)

  it("mutex skips a waiter that timed out or was cancelled", function()
    local m = task.mutex()
    assert(m:lock())
    local timed_out = task.spawn(function() return m:lock(0.05) end)
    local cancelled = task.spawn(function() return m:lock(5) end)
    local got = {}
    local last = task.spawn(function() assert(m:lock(5)) got[#got + 1] = "last" m:unlock() end)
    task.sleep(0.1)
    local done, locked, _, code = timed_out:wait(1)
    assert.is_true(done)
    assert.is_nil(locked)
    assert.equals("timeout", code)
    cancelled:cancel()
    m:unlock()
    assert.is_true((last:wait(5)))
    assert.same({ "last" }, got)
    assert.equals("cancelled", cancelled:status())
    assert.is_true(m:lock(0.1), "the lock was left held")
    m:unlock()
  end)
end)

describe("task.shield and task.detached", function()
  it("shield holds a cancel until fn is done, sparing the tasks it runs, then raises it", function()
    local done, saw_cancel, after = {}, nil, nil
    local inside = task.event()
    local h = task.spawn(function()
      local r = task.shield(function()
        inside:set()
        local _, err = task.all {
          function() task.sleep(0.3) done[#done + 1] = "child" end,
        }
        assert(not err, err)
        task.sleep(0.1)
        saw_cancel = task.cancelled()
        done[#done + 1] = "fn"
        return "result"
      end)
      after = r
      task.sleep(30) -- the held cancel lands here
    end)
    assert(inside:wait(5))
    h:cancel()
    h:cancel()
    local ok, err = h:wait(10)
    assert.is_false(ok)
    assert.equals("cancelled", err)
    assert.equals("cancelled", h:status())
    assert.same({ "child", "fn" }, done)
    assert.is_true(saw_cancel)
    assert.equals("result", after)
  end)

  it("shield also holds a cancel of the task's parent, and one that arrived before it began", function()
    local finished = false
    local parent = task.spawn(function()
      local child = task.spawn(function()
        task.shield(function() task.sleep(0.3) finished = true end)
      end)
      child:wait()
    end)
    task.sleep(0.05)
    parent:cancel()
    task.sleep(0.5)
    assert.is_true(finished)

    local ran = false
    local h = task.spawn(function()
      local ev = task.event()
      ev:set()
      ev:wait() -- returns at once: no yield, so a cancel now is pending, not raised
      task.current():cancel()
      task.shield(function() task.sleep(0.05) ran = true end)
      task.sleep(30)
    end)
    local ok, err = h:wait(5)
    assert.is_true(ran)
    assert.is_false(ok)
    assert.equals("cancelled", err)
  end)

  it("shield keeps fn's own timeouts, returns its results and re-raises its error", function()
    local r = table.pack(task.shield(task.timeout, 0.1, task.sleep, 30))
    assert.same({ n = 3, nil, "task.timeout: timeout after 0.1s", "timeout" }, r)
    assert.same({ 1, 2 }, { task.shield(function(a) return a, 2 end, 1) })
    assert.has_error(function() task.shield(function() error("inner", 0) end) end, "inner")
    local co = coroutine.wrap(function() task.shield(function() end) end)
    assert.has_error(co, "task.shield needs a task (called outside a task, e.g. in a plain coroutine)")
  end)

  it("detached: cancelling the task that spawned it does not cancel it; its own cancel does", function()
    local d
    local parent = task.spawn(function()
      d = task.detached("keep", function() task.sleep(30) end)
      task.sleep(30)
    end)
    task.sleep(0.01)
    parent:cancel()
    task.sleep(0.05)
    assert.equals("cancelled", parent:status())
    assert.equals("waiting", d:status())
    assert.equals("keep", d:name())
    d:cancel()
    task.sleep(0.01)
    assert.equals("cancelled", d:status())
    assert.matches("^task#", task.detached(nil, function() end):name())
  end)
end)
