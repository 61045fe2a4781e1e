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
