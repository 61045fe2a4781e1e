local pipeline = require "pipeline"
local task = require "task"

describe("pipeline", function()
  it("runs steps in order and defers in reverse, registered before the action", function()
    local trace = {}
    local p = pipeline.new()
    p:step("a", function() trace[#trace + 1] = "a" end):defer("undo_a", function() trace[#trace + 1] = "undo_a" end)
    p:step("b", function() trace[#trace + 1] = "b"; error("b broke", 0) end)
      :defer("undo_b", function() trace[#trace + 1] = "undo_b" end)
    p:step("c", function() trace[#trace + 1] = "c" end)
    local ok, err = p:run()
    assert.is_nil(ok)
    assert.equals("b: b broke", err)
    assert.same({ "a", "b", "undo_b", "undo_a" }, trace)
    assert.equals("failed", p.report.steps[2].status)
    assert.equals(4, #p.report.steps)
  end)

  it("treats nil, err as failure and keeps running defers after a failing defer", function()
    local trace = {}
    local p = pipeline.new()
    p:step("a", function() end):defer("d1", function() trace[#trace + 1] = "d1" end)
    p:step("b", function() end):defer("d2", function() return nil, "nope" end)
    p:step("c", function() return nil, "refused" end)
    local ok, err = p:run()
    assert.is_nil(ok)
    assert.equals("c: refused", err)
    assert.same({ "d1" }, trace)
    assert.equals("failed", p.report.steps[4].status)
  end)

  it("bounds a hanging defer by the cleanup timeout", function()
    local p = pipeline.new { cleanup_timeout = 0.2 }
    local later = false
    p:step("a", function() end):defer("slow", function() task.sleep(30) end)
    p:step("b", function() end):defer("fast", function() later = true end)
    local t0 = task.now()
    local ok, err = p:run()
    assert.is_true(ok == nil and err:match("^slow:") ~= nil, err)
    assert.is_true(later)
    assert.is_true(task.now() - t0 < 5)
  end)

  it("runs the defers when the task running it is cancelled", function()
    local undone = false
    local h = task.spawn(function()
      local p = pipeline.new()
      p:step("lock", function() end):defer("unlock", function()
        task.sleep(0.05) -- cleanup may still do I/O after the cancellation
        undone = true
      end)
      p:step("wait", function() task.sleep(30) end)
      return p:run()
    end)
    task.sleep(0.1)
    h:cancel()
    local ok, r1, r2 = h:wait(5)
    assert.is_true(ok)
    assert.is_nil(r1)
    assert.matches("interrupted", r2)
    assert.is_true(undone)
  end)
end)

describe("pipeline cancelled for a reason", function()
  it("fails the step cut short with ctx.cancel_reason, and still runs the defers", function()
    local undone = false
    local ctx = {}
    local h = task.spawn(function()
      local p = pipeline.new()
      p:step("pause", function() end):defer("resume", function() undone = true end)
      p:step("wait", function() task.sleep(30) end)
      return p:run(ctx)
    end)
    task.sleep(0.1)
    ctx.cancel_reason = "pause lease lost"
    h:cancel()
    local ok, r1, r2 = h:wait(5)
    assert.is_true(ok)
    assert.is_nil(r1)
    assert.equals("wait: pause lease lost", r2)
    assert.is_true(undone)
  end)
end)

describe("pipeline clean-up under cancellation (issue 12, item 2)", function()
  -- A defer that does its work in child tasks (as resume does, under task.all), and
  -- a cancel that arrives while it runs: every child must finish, and the defers
  -- after it must still run.
  it("a cancel that arrives while a defer runs neither aborts it nor skips the next", function()
    local sent, undone = {}, false
    local in_defer = task.event()
    local h = task.spawn(function()
      local p = pipeline.new { cleanup_timeout = 10 }
      p:step("lock", function() end):defer("unlock", function() undone = true end)
      p:step("pause", function() end):defer("resume", function()
        in_defer:set()
        local _, err = task.all {
          function() task.sleep(0.5) sent[#sent + 1] = "keeper" end,
        }
        assert(not err, err)
        sent[#sent + 1] = "extra"
      end)
      p:step("fails", function() return nil, "no recovery" end)
      return p:run()
    end)
    assert(in_defer:wait(5))
    h:cancel()
    task.sleep(0.1)
    h:cancel() -- a second signal
    local ok, r1, r2 = h:wait(10)
    assert.is_true(ok, r1)
    assert.is_nil(r1)
    assert.equals("fails: no recovery", r2)
    assert.same({ "keeper", "extra" }, sent)
    assert.is_true(undone)
  end)

  it("still bounds a shielded defer by the cleanup timeout", function()
    local p = pipeline.new { cleanup_timeout = 0.3 }
    local later = false
    local h = task.spawn(function()
      p:step("a", function() end):defer("slow", function() task.sleep(30) end)
      p:step("b", function() end):defer("fast", function() later = true end)
      p:step("wait", function() task.sleep(30) end)
      return p:run()
    end)
    task.sleep(0.05)
    h:cancel()
    local t0 = task.now()
    local ok, r1, r2 = h:wait(10)
    assert.is_true(ok)
    assert.is_nil(r1)
    assert.matches("interrupted", r2)
    assert.is_true(later)
    assert.is_true(task.now() - t0 < 5)
    assert.equals("failed", p.report.steps[#p.report.steps].status)
  end)
end)
