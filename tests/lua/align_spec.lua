-- Tick-aligned failover (issue 15): `failover` learns the sentinel's rhythm from its
-- clusterdata writes and starts PAUSE so that forceFail lands just before the
-- sentinel's next read. Against a real etcd, a fake sentinel in this spec (a task:
-- read clusterdata, work CHECK seconds, compare-and-swap it back, sleep the
-- document's sleepInterval; on forceFail the no-master document, on the next tick a
-- converged one) and fake pausers (HTTP servers answering /health, /pause after a
-- delay a case sets, /resume). Each failover is started right after one of the
-- sentinel's reads: without alignment its forceFail lands inside that check, between
-- the read and the write, so the sentinel's compare-and-swap fails and it only acts
-- a whole period later. Also: --no-align-to-sentinel, a second writer that hides the
-- period (fall back, say why), and a PAUSE slower than the moment (write at once).
--
-- Addresses and ports: 127.0.8.x only; etcd 22800-22803; fake pausers 26361.
-- Timing assertions are a few hundred ms wide: the sentinel's period is 1.6 s.
local D = require "support.daemon"
local E = require "support.etcd"
local CD = require "playground.clusterdata"
local cjson = require "cjson.safe"
local etcd = require "etcd"
local fs = require "fs"
local http = require "http"
local task = require "task"

local HOSTS = { "127.0.8.1", "127.0.8.2", "127.0.8.3" }
local EXTRA = "127.0.8.4" -- a front pauser (--extra-pauser)
local PORT = 26361
local CLUSTER = "align"
local KEY = "stolon/cluster/" .. CLUSTER .. "/clusterdata"
local CHECK = 0.6 -- the fake sentinel's work between its read and its write

describe("tick-aligned failover", function()
  local srv, client, sentinel
  local servers = {}
  local pause_delay = 0
  local health_delay, health_log = 0, {}
  local s -- the fake sentinel's record: reads, writes, conflicts, reaction

  local function now_string()
    return CD.format_time(os.time() + (task.now() % 1))
  end

  -- One check of the fake sentinel, as stolon's: read, work, write back with CAS.
  local function tick()
    local r = assert(client:get(KEY))
    local kv = r.kvs[1]
    local read_at = task.now()
    s.reads[#s.reads + 1] = read_at
    local doc = assert(CD.decode(kv.value))
    task.sleep(CHECK)
    local next_doc, what
    if s.phase == "normal" and CD.failed_keeper(doc) then
      next_doc, what = assert(CD.consume_failkeeper(doc, { now = now_string() })), "no-master"
    elseif s.phase == "switching" then
      local p = assert(CD.promoted(doc, { now = now_string() }))
      next_doc, what = assert(CD.converged(p, { now = now_string() })), "switched"
    else
      next_doc, what = CD.update_status(doc, {}, { now = now_string() }), "status"
      next_doc.changeTime = now_string() -- as stolon's lastHealthyTime: a write every tick
    end
    local res = assert(client:txn {
      compare = { { key = KEY, target = "mod", result = "==", value = kv.mod_revision } },
      success = { { put = { key = KEY, value = CD.encode(next_doc) } } },
    })
    local w = { at = task.now(), read_at = read_at, what = what, ok = res.succeeded }
    s.writes[#s.writes + 1] = w
    if not res.succeeded then
      s.conflicts = s.conflicts + 1
    elseif what == "no-master" then
      s.phase, s.reaction = "switching", w
    elseif what == "switched" then
      s.phase = "done"
    end
    return CD.sleep_interval(next_doc)
  end

  local function start_sentinel()
    s = { reads = {}, writes = {}, conflicts = 0, phase = "normal" }
    sentinel = task.spawn(function()
      while true do task.sleep(tick()) end
    end)
  end

  -- Wait for the sentinel's next read, then run the failover with these flags.
  local function failover(extra)
    local n = #s.reads
    assert(D.eventually(5, function() return #s.reads > n end), "the fake sentinel does not tick")
    local report = os.tmpname()
    local args = { "failover", "--cluster-name", CLUSTER, "--store-endpoints", srv.endpoints[1],
      "--pauser-port", tostring(PORT), "--metrics-port", "0", "--failover-sleep-interval", "1s",
      "--report-file", report }
    for _, a in ipairs(extra) do args[#args + 1] = a end
    local started = task.now()
    local code, out, err = D.run(args, { timeout = 60, env = { STBOUNCER_FAILOVER_TOKEN = "fake" } })
    local r = cjson.decode(fs.read(report) or "") or {}
    os.remove(report)
    assert.equals(0, code, (out or "") .. (err or ""))
    return r, err, started, out
  end

  -- The first read of the sentinel at or after t.
  local function read_after(t)
    for _, at in ipairs(s.reads) do
      if at >= t then return at end
    end
  end

  setup(function()
    srv = E.start { members = 1, hosts = { HOSTS[1] }, port = 22800 }
    client = assert(etcd.connect { endpoints = srv.endpoints, timeout = 5 })
    for _, h in ipairs { HOSTS[1], HOSTS[2], HOSTS[3], EXTRA } do
      servers[#servers + 1] = assert(http.serve { address = h, port = PORT, handler = function(req)
        if req.path == "/health" then
          health_log[#health_log + 1] = { host = h, at = task.now() }
          if health_delay > 0 then task.sleep(health_delay) end
          health_log[#health_log].done = task.now()
          return 200, { status = "healthy", config = { pool_mode = "transaction" } }
        end
        if req.path == "/pause" and pause_delay > 0 then task.sleep(pause_delay) end
        return 200, {}
      end })
    end
  end)

  before_each(function()
    local keepers = {}
    for k, h in ipairs(HOSTS) do keepers[k] = { uid = "keeper" .. (k - 1), host = h, port = 5432 } end
    assert(client:put(KEY, CD.encode(CD.new { keepers = keepers, master = "keeper0", sync = { "keeper1" },
      sleep_interval = "1s" })))
    pause_delay, health_delay, health_log = 0, 0, {}
    start_sentinel()
  end)

  after_each(function()
    if sentinel then sentinel:cancel() end
    sentinel = nil
  end)

  teardown(function()
    for _, x in ipairs(servers) do x:close() end
    if srv then srv:stop() end
  end)

  it("writes forceFail shortly before the sentinel's next read, which acts on it", function()
    local r, err, _, out = failover {}
    assert.is_true(r.ok)
    assert.is_true(r.align and r.align.aligned, err)
    local read = assert(read_after(r.failkeeper_at), "no sentinel read after forceFail")
    -- the window before the read: the lead and margin planned (~0.06 s), plus what a
    -- loaded machine adds; without alignment forceFail lands 0.1-0.5 s after a read
    assert.is_true(read - r.failkeeper_at < 0.4, ("forceFail %.3f s before the read"):format(read - r.failkeeper_at))
    assert.equals(0, s.conflicts, "the sentinel's compare-and-swap failed: forceFail landed inside its check")
    assert.equals(read, s.reaction.read_at) -- that very read acted on it
    -- the PAUSE (fake pausers answer at once) came in under its lead: failkeeper
    -- waited for its own moment and aimed a margin ahead of the predicted read. When
    -- it lands is the machine's business (a loaded CAS once took 1 ms past the
    -- prediction, and the read above still acted on it): only a gross miss fails.
    assert.is_true(r.align.write_wait > 0, tostring(r.align.write_wait))
    assert.is_true(r.failkeeper_at < r.align.predicted_read + 0.25,
      ("forceFail %.3f s after the predicted read"):format(r.failkeeper_at - r.align.predicted_read))
    assert.is_true(r.align.margin <= 0.010, tostring(r.align.margin))
    -- the report's reaction: the no-master write, seen through the watch
    assert.equals("no_master", r.reaction)
    assert.is_true(math.abs(r.reacted_at - s.reaction.at) < 0.2)
    assert.is_true(r.reaction_wait_seconds < CHECK + 0.4, tostring(r.reaction_wait_seconds))
    assert.matches("event=align_to_sentinel ", err, 1, true)
    assert.matches("forceFail -> manager's first reaction", out, 1, true)
  end)

  it("plans the PAUSE's lead from health checks sent in the PAUSE's rounds, with one drain allowance", function()
    health_delay = 0.05
    local r, err = failover { "--extra-pauser", EXTRA .. ":" .. PORT }
    assert.is_true(r.ok)
    assert.is_true(r.align and r.align.aligned, err)
    -- the front pauser's check answered before any keeper's went out, as its PAUSE does
    local extra_done, keepers = nil, {}
    for _, e in ipairs(health_log) do
      if e.host == EXTRA then extra_done = e.done else keepers[#keepers + 1] = e end
    end
    assert.is_not_nil(extra_done)
    assert.equals(3, #keepers)
    for _, e in ipairs(keepers) do assert.is_true(e.at >= extra_done, "a keeper's check went out with the extra's") end
    -- each round measured its own slowest (>= the 50 ms its pausers sleep), and the
    -- lead is 1.5 x their sum + one 10 ms drain: the keepers' round drains nothing the
    -- front PgBouncer, paused first, has not
    local h = r.align.health_slowest
    assert.is_true(h.extra >= 0.05 and h.keeper >= 0.05, cjson.encode(h))
    local pause_lead = r.align.lead - r.align.write_lead
    assert.is_true(math.abs(pause_lead - (1.5 * (h.extra + h.keeper) + 0.01)) < 1e-6,
      ("pause lead %.4f for health %s"):format(pause_lead, cjson.encode(h)))
    assert.equals(0, s.conflicts)
  end)

  it("--no-align-to-sentinel pauses at once, wherever that lands in the sentinel's cycle", function()
    local r, err, started = failover { "--no-align-to-sentinel" }
    assert.is_true(r.ok)
    assert.is_false(r.align.aligned)
    assert.equals("--no-align-to-sentinel", r.align.reason)
    assert.is_nil(err:find("event=align_to_sentinel ", 1, true))
    -- no learning, no waiting: started right after a read, it lands inside that check,
    -- the sentinel's write fails, and it reacts one period later
    assert.is_true(r.failkeeper_at - started < 1.0, ("forceFail %.3f s after the start"):format(r.failkeeper_at - started))
    assert.is_nil(r.align.waited)
    assert.is_true(s.conflicts >= 1, "the sentinel's write did not conflict: the start was not inside a check")
    assert.is_true(r.reaction_wait_seconds > 1.0, tostring(r.reaction_wait_seconds))
  end)

  it("falls back to pausing at once, saying why, when the writes do not show one period", function()
    -- a second writer every 0.3 s until forceFail is there: no gap of one interval
    local writer = task.spawn(function()
      while true do
        local r = assert(client:get(KEY))
        local doc = assert(CD.decode(r.kvs[1].value))
        if CD.failed_keeper(doc) then return end
        doc.changeTime = now_string()
        client:txn {
          compare = { { key = KEY, target = "mod", result = "==", value = r.kvs[1].mod_revision } },
          success = { { put = { key = KEY, value = CD.encode(doc) } } },
        }
        task.sleep(0.3)
      end
    end)
    local r, err = failover {}
    writer:cancel()
    assert.is_true(r.ok)
    assert.is_false(r.align.aligned)
    assert.matches("not one sleepInterval", r.align.reason, 1, true)
    assert.matches("event=align_to_sentinel_fallback", err, 1, true)
    assert.is_nil(err:find("event=align_to_sentinel ", 1, true))
  end)

  it("writes at once when PAUSE takes longer than the moment allowed", function()
    pause_delay = 0.8
    local r, err = failover {}
    assert.is_true(r.ok)
    assert.is_true(r.align.aligned, err)
    assert.matches("event=align_moment_missed", err, 1, true)
    assert.equals(0, r.align.write_wait) -- the moment had passed: no wait before the write
    -- forceFail right after the last PAUSE answered: no waiting for another moment
    assert.is_true(r.failkeeper_at - r.pause_done_at < 0.2,
      ("forceFail %.3f s after PAUSE"):format(r.failkeeper_at - r.pause_done_at))
    assert.is_true(r.pause_done_at > r.align.predicted_read - 0.1)
  end)
end)
