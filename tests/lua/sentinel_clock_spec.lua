-- sentinel_clock: learning the sentinel's period and phase from write arrival times,
-- and planning the PAUSE so that forceFail lands before the next read. Pure Lua: the
-- times are made up here, no clock is read.
local sentinel_clock = require "sentinel_clock"

describe("sentinel_clock", function()
  -- writes every `period` from t0, n of them (a sleep of 1 s plus a 40 ms check)
  local function ticking(n, period, t0, interval)
    local c = sentinel_clock.new { interval = interval or 1 }
    for i = 0, n - 1 do c:add(t0 + i * period, 100 + i) end
    return c
  end

  it("learns the period from four regular writes, not from three", function()
    local c = ticking(3, 1.04, 10)
    local l, why = c:learn()
    assert.is_nil(l)
    assert.matches("3 writes seen, need 4", why, 1, true)
    c:add(10 + 3 * 1.04, 103)
    l = assert(c:learn())
    assert.near(1.04, l.period, 1e-9)
    assert.near(10 + 3 * 1.04, l.last, 1e-9)
    assert.equals(3, l.gaps)
  end)

  it("counts one revision once", function()
    local c = ticking(4, 1.04, 10)
    c:add(13.2, 103)
    assert.equals(4, #c.arrivals)
  end)

  it("uses only the newest run of gaps that fit the short interval (the old interval's are older)", function()
    local c = sentinel_clock.new { interval = 1 }
    local t = 0
    for i = 1, 3 do c:add(t, i) t = t + 5.04 end -- the old 5s interval
    for i = 4, 7 do c:add(t, i) t = t + 1.04 end
    local l = assert(c:learn())
    assert.near(1.04, l.period, 1e-9)
    assert.equals(3, l.gaps)
  end)

  it("refuses gaps that are not one interval plus a check apart, saying why", function()
    local c = ticking(5, 0.5, 0) -- twice as fast as the interval: not this sentinel
    local l, why = c:learn()
    assert.is_nil(l)
    assert.matches("not one sleepInterval", why, 1, true)
    c = sentinel_clock.new { interval = 1 }
    for i, t in ipairs { 0, 1.1, 2.2, 3.3, 3.6 } do c:add(t, i) end -- a second writer, last
    l, why = c:learn()
    assert.is_nil(l)
    assert.matches("0.300", why, 1, true)
  end)

  it("takes checks of varying length (a loaded machine): the next read is last write + S", function()
    local c = sentinel_clock.new { interval = 0.25 }
    for i, t in ipairs { 0, 0.47, 0.95, 1.33, 1.81 } do c:add(t, i) end -- checks of 0.13-0.23 s
    local l = assert(c:learn())
    assert.is_true(l.spread > 0.05)
    local p = assert(c:plan(1.82, 0.05))
    assert.equals(1, p.k)
    assert.near(2.06, p.read, 1e-9)
    assert.near(sentinel_clock.BASE_MARGIN, p.margin, 1e-9)
  end)

  it("plans from the write before when the last one came later than any check explains", function()
    -- bench/failover.lua, 250ms: the stand-in wrote at -326 ms, the failover saw it at
    -- -238 ms; planned from what it saw, forceFail came after the read (a period lost)
    local c = sentinel_clock.new { interval = 0.25 }
    for i, t in ipairs { 0, 0.306, 0.611, 0.901, 1.196, 1.613 } do c:add(t, i) end
    local l = assert(c:learn())
    assert.near(0.305, l.period, 1e-9)
    assert.near(1.196 + 0.305, l.last, 1e-9)
    assert.near(1.613 - 1.196 - 0.305, l.late, 1e-9)
    local p = assert(c:plan(1.62, 0.08))
    assert.equals(1, p.k)
    assert.near(1.196 + 0.305 + 0.25, p.read, 1e-9)
    assert.near(l.late, p.late, 1e-9)
    -- a last gap within the earlier checks' spread (or 20 ms) anchors on the last write
    c = sentinel_clock.new { interval = 0.25 }
    for i, t in ipairs { 0, 0.306, 0.611, 0.901, 1.196, 1.51 } do c:add(t, i) end
    l = assert(c:learn())
    assert.near(1.51, l.last, 1e-9)
    assert.is_nil(l.late)
  end)

  it("keeps the same margin before the next read at any interval: a long sleep only makes the read later", function()
    local p1 = assert(ticking(4, 1.04, 10):plan(13.2, 0.1))
    local c = sentinel_clock.new { interval = 0.25 }
    for i = 0, 4 do c:add(10 + i * 0.29, i) end
    local p2 = assert(c:plan(11.17, 0.01))
    assert.equals(1, p1.k)
    assert.equals(1, p2.k)
    assert.near(p1.margin, p2.margin, 1e-9)
    assert.is_true(p1.margin <= 0.010)
  end)

  it("takes a check longer than the interval, but not a gap of the previous interval", function()
    local c = sentinel_clock.new { interval = 0.25, previous = 2 }
    for i, t in ipairs { 0, 0.85, 1.7, 2.58 } do c:add(t, i) end -- checks of 0.6 s (a loaded stand-in)
    assert(c:learn())
    assert.near(1.25, c:longest_gap(), 1e-9)
    c = sentinel_clock.new { interval = 1, previous = 2 }
    for i, t in ipairs { 0, 2.05, 4.1, 6.15 } do c:add(t, i) end -- still sleeping the previous 2 s
    local l, why = c:learn()
    assert.is_nil(l)
    assert.matches("not one sleepInterval", why, 1, true)
    assert.near(1.8, c:longest_gap(), 1e-9)
    assert.near(1.7, sentinel_clock.new({ interval = 1, previous = 1.2 }):longest_gap(), 1e-9)
  end)

  it("plans the start a lead and a margin before the next read (last write + interval)", function()
    local c = ticking(4, 1.04, 10) -- last write at 13.12: next read at 14.12
    local p = assert(c:plan(13.2, 0.1))
    assert.equals(1, p.k)
    assert.near(14.12, p.read, 1e-9)
    local m = sentinel_clock.BASE_MARGIN
    assert.near(m, p.margin, 1e-9)
    assert.near(14.12 - 0.1 - m, p.start, 1e-9)
  end)

  it("moves to a later read when the next one is too close, with a wider margin", function()
    local c = sentinel_clock.new { interval = 1 }
    for i, t in ipairs { 0, 1.04, 2.06, 3.08 } do c:add(t, i) end -- period 1.02, spread 0.02
    local p = assert(c:plan(3.96, 0.1)) -- read at 4.08, start 4.08 - 0.01 - 0.1 = 3.97: in time
    assert.equals(1, p.k)
    p = assert(c:plan(3.98, 0.1))
    assert.equals(2, p.k)
    local l = assert(c:learn())
    assert.near(4.08 + l.period, p.read, 1e-9)
    assert.is_true(p.margin > sentinel_clock.BASE_MARGIN)
    assert.is_true(p.start >= 3.98)
  end)
end)
