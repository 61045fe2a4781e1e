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
--   local l, why = c:learn()      -- {period=, spread=, last=, gaps=, late=} | nil, why
--   local plan = c:plan(task.now(), lead)            -- {start=, read=, k=, margin=} | nil, why
local M = {}
M.__index = M

M.MIN_GAPS = 3 -- regular gaps (MIN_GAPS + 1 writes) before the period counts as learned
M.MAX_GAPS = 8 -- the newest gaps used; older ones may predate the short interval
-- Seconds before the predicted read, for what can make the read come earlier than
-- last arrival + S: our watch delivering the sentinel's write late (0-3 ms seen on a
-- loaded 2-core VM; a delivery tens of ms late is caught by learn, below), the
-- sentinel's timer firing on a stale loop clock, our own timer.
-- Nothing proportional to S: a sentinel's sleep that overshoots (and the stand-in's
-- read of the interval after its write) only makes the read later, which costs
-- waiting, never a period. The write's own latency is the caller's lead.
M.BASE_MARGIN = 0.010

-- new{interval=S [, previous=P]} -> clock. S: the sleepInterval (seconds) the
-- sentinel now uses; P: the one it used before (the failover shortened it), which
-- bounds how long a check may look (see learn).
function M.new(o)
  assert(type(o) == "table" and type(o.interval) == "number" and o.interval > 0, "sentinel_clock.new{interval=}")
  assert(o.previous == nil or type(o.previous) == "number", "sentinel_clock.new{previous=}")
  return setmetatable({ interval = o.interval, previous = o.previous, arrivals = {}, revisions = {} }, M)
end

-- longest_gap() -> seconds: the longest gap that still counts as one check plus one
-- sleep of S. A check's length does not move the next read (it comes S after the
-- write), so the bound only has to tell the short interval from the previous one:
-- S + 1 s, but below 0.9 x the previous interval when that is known (a gap of the
-- old interval must not pass for a slow check); never below 1.5 S + 0.2 s.
function M:longest_gap()
  local S = self.interval
  local hi = S + 1.0
  if self.previous and self.previous > S then hi = math.min(hi, 0.9 * self.previous) end
  return math.max(hi, 1.5 * S + 0.2)
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

-- c:learn() -> {period=, spread=, last=, gaps=, late=} | nil, why. last: the write the
-- next read is S after (see below; late = by how much the last write came later than
-- the period, when the one before anchors instead). Uses the newest run of
-- gaps that each look like one check plus one sleep of S (between 0.9 S and
-- longest_gap()); needs MIN_GAPS of them. spread is the largest distance of one gap
-- from their median: how much the check's length varies. It does not move the next
-- read (last write + S, whatever the check took), only the ones after it, so it is
-- not a reason to refuse: on a loaded machine the stand-in's check varies by 100 ms.
-- why says what was missing.
function M:learn()
  local a, S = self.arrivals, self.interval
  local lo, hi = 0.9 * S, self:longest_gap()
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
  local spread, spread_before = 0, 0
  for i, g in ipairs(gaps) do
    spread = math.max(spread, math.abs(g - period))
    if i < #gaps then spread_before = math.max(spread_before, math.abs(g - period)) end
  end
  -- The anchor of the next read: the last write's arrival, unless that write came
  -- later than any check before it explains. Then either its check was long (its
  -- read still comes S after it: the earlier anchor costs some waiting) or we saw it
  -- late (our watch, etcd under load: 88 ms seen at 250ms), and its read does not
  -- wait for us (the later anchor costs a whole period). Take the earlier one.
  local last, late = a[#a], nil
  local excess = gaps[#gaps] - period
  if excess > math.max(2 * M.BASE_MARGIN, spread_before) then
    last, late = a[#a - 1] + period, excess
  end
  return { period = period, spread = spread, last = last, gaps = #gaps, late = late }
end

-- c:plan(now, lead) -> {start=, read=, k=, margin=, period=, late=} | nil, why. read: the k-th
-- predicted read after the last write (last + S + (k - 1) period), the first one with
-- start = read - margin - lead >= now; lead: what must happen between start and the
-- forceFail being in etcd (the PAUSE and the failkeeper write). margin: BASE_MARGIN,
-- + spread x sqrt(k - 1) for a read after further checks, whose lengths vary. The
-- caller aims its write at read - margin (failover's failkeeper waits for it).
function M:plan(now, lead)
  local l, why = self:learn()
  if not l then return nil, why end
  for k = 1, 1000 do
    local read = l.last + self.interval + (k - 1) * l.period
    local margin = M.BASE_MARGIN + l.spread * math.sqrt(k - 1)
    local start = read - margin - lead
    if start >= now then
      return { start = start, read = read, k = k, margin = margin, period = l.period, spread = l.spread,
        late = l.late }
    end
  end
  return nil, "no read predicted within 1000 periods"
end

return M
