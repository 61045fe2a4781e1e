-- sentinel_clock: the rhythm of stolon's sentinel, learned from the times its writes
-- of clusterdata arrive, to put the failover's forceFail just before its next read.
-- Pure Lua, no I/O: the caller passes every time (task.now() seconds).
--
-- The model (stolon's sentinel, and lua/playground/sentinel.lua): each check reads
-- clusterdata, works for d, writes it back with compare-and-swap on mod_revision
-- (nearly every check changes it: keepers' lastHealthyTime moves), then sleeps the
-- sleepInterval S before the next check. So writes arrive every P = d + S, and the
-- next read comes S after the last write arrived. A forceFail written before that read
-- is acted on in that check; one written between the read and the write makes the
-- sentinel's compare-and-swap fail and waits a whole period more.
--
--   local c = sentinel_clock.new { interval = 1 }   -- S, the interval the sentinel uses
--   c:add(task.now(), kv.mod_revision)                -- on each write seen
--   local l, why = c:learn()      -- {period=, spread=, last=, gaps=} | nil, why
--   local plan = c:plan(task.now(), lead)            -- {start=, read=, k=, margin=} | nil, why
local M = {}
M.__index = M

M.MIN_GAPS = 3 -- regular gaps (MIN_GAPS + 1 writes) before the period counts as learned
M.MAX_GAPS = 8 -- the newest gaps used; older ones may predate the short interval
M.BASE_MARGIN = 0.015 -- seconds before the predicted read: etcd's write latency, our timer
M.SLEEP_MARGIN = 0.02 -- and this fraction of the interval: the sentinel's sleep overshooting

-- new{interval=S} -> clock. S: the sleepInterval (seconds) the sentinel now uses.
function M.new(o)
  assert(type(o) == "table" and type(o.interval) == "number" and o.interval > 0, "sentinel_clock.new{interval=}")
  return setmetatable({ interval = o.interval, arrivals = {}, revisions = {} }, M)
end

-- c:add(t, revision): one write of the document arrived at t. Writes of one revision
-- count once; arrivals must come in time order.
function M:add(t, revision)
  local n = #self.arrivals
  if revision and self.revisions[n] == revision then return end
  self.arrivals[n + 1], self.revisions[n + 1] = t, revision
  if n + 1 > 4 * M.MAX_GAPS then
    table.remove(self.arrivals, 1)
    table.remove(self.revisions, 1)
  end
end

local function median(xs)
  local s = table.move(xs, 1, #xs, 1, {})
  table.sort(s)
  local n = #s
  if n % 2 == 1 then return s[(n + 1) // 2] end
  return (s[n // 2] + s[n // 2 + 1]) / 2
end

local function show(gaps)
  local out = {}
  for i, g in ipairs(gaps) do out[i] = ("%.3f"):format(g) end
  return table.concat(out, " ")
end

-- c:learn() -> {period=, spread=, last=, gaps=} | nil, why. Uses the newest run of
-- gaps that each look like one check plus one sleep of S (between 0.9 S and
-- 1.5 S + 0.2 s); needs MIN_GAPS of them. spread is the largest distance of one gap
-- from their median: how much the check's length varies. It does not move the next
-- read (last write + S, whatever the check took), only the ones after it, so it is
-- not a reason to refuse: on a loaded machine the stand-in's check varies by 100 ms.
-- why says what was missing.
function M:learn()
  local a, S = self.arrivals, self.interval
  local lo, hi = 0.9 * S, 1.5 * S + 0.2
  local gaps, all = {}, {}
  for i = #a, 2, -1 do
    local g = a[i] - a[i - 1]
    if #all < M.MAX_GAPS then table.insert(all, 1, g) end
    if #gaps < M.MAX_GAPS and #gaps == #all - 1 and g >= lo and g <= hi then table.insert(gaps, 1, g) end
  end
  if #gaps < M.MIN_GAPS then
    if #all == #gaps then
      return nil, ("%d writes seen, need %d one sleepInterval (%.3f s) apart"):format(#a, M.MIN_GAPS + 1, S)
    end
    return nil, ("the latest gaps between writes (%s s) are not one sleepInterval (%.3f s) plus a check")
      :format(show(all), S)
  end
  local period = median(gaps)
  local spread = 0
  for _, g in ipairs(gaps) do spread = math.max(spread, math.abs(g - period)) end
  return { period = period, spread = spread, last = a[#a], gaps = #gaps }
end

-- c:plan(now, lead) -> {start=, read=, k=, margin=, period=} | nil, why. read: the k-th
-- predicted read after the last write (last + S + (k - 1) period), the first one with
-- start = read - margin - lead >= now; lead: what must happen between start and the
-- forceFail being in etcd (the PAUSE and the failkeeper write). margin: BASE_MARGIN
-- + SLEEP_MARGIN x S, + spread x sqrt(k - 1) for a read after further checks, whose
-- lengths vary.
function M:plan(now, lead)
  local l, why = self:learn()
  if not l then return nil, why end
  for k = 1, 1000 do
    local read = l.last + self.interval + (k - 1) * l.period
    local margin = M.BASE_MARGIN + M.SLEEP_MARGIN * self.interval + l.spread * math.sqrt(k - 1)
    local start = read - margin - lead
    if start >= now then
      return { start = start, read = read, k = k, margin = margin, period = l.period, spread = l.spread }
    end
  end
  return nil, "no read predicted within 1000 periods"
end

return M
