-- make playground / playground-status / playground-down (scripts/playground.sh): the
-- cluster stays up after the command returns, in a session of its own (so it outlives
-- the shell that started it), and down stops exactly what up started: through the
-- holder when it is alive, from the recorded pids when it was killed.
-- Uses the playground's default addresses (127.0.0.11-13, .20; ports 12379, 15432,
-- 16432, 18080): nothing else may run a playground meanwhile.
local fs = require "fs"
local proc = require "proc"
local procstat = require "playground.procstat"
local task = require "task"

local root = assert(os.getenv("SPGB_LUA_DIR"))

local function script(state, cmd)
  return proc.run { root .. "/scripts/playground.sh", cmd, env = { PLAYGROUND_STATE = state }, timeout = 180 }
end

-- Running, not a zombie: an exited holder's parent is whatever reaper it was handed
-- to when the shell that started it ended, and that one may reap it late.
local function alive(pid)
  local f = procstat.fields(pid)
  return f ~= nil and f[3] ~= "Z"
end

local function recorded(state)
  local text = assert(fs.read(state .. "/pids"))
  local pids = {}
  for pid in text:gmatch("(%d+) %d+ [^\n]+") do pids[#pids + 1] = tonumber(pid) end
  return pids
end

local function session_of(pid)
  return tonumber(assert(procstat.fields(pid))[6]) -- the session id
end

local function all_gone(pids)
  return require("support.pg").eventually(20, function()
    for _, p in ipairs(pids) do if alive(p) then return false end end
    return true
  end)
end

describe("make playground", function()
  local state

  before_each(function()
    state = assert(fs.tmpdir("spgb-playground-state"))
  end)

  after_each(function()
    script(state, "down")
    proc.run { "rm", "-rf", state }
  end)

  it("stays up, shows its status, and down stops everything through the holder", function()
    local code, out, err = script(state, "up")
    assert.equals(0, code, out .. err)
    assert.matches("the playground is up", out, 1, true)
    assert.matches("status --pauser-port 18080", out, 1, true)
    assert.matches("psql 'host=127.0.0.20 port=16432", out, 1, true)
    local holder = tonumber(assert(fs.read(state .. "/holder.pid")):match("%d+"))
    assert.equals(holder, session_of(holder)) -- its own session: the shell may go
    local pids = recorded(state)
    assert.is_true(#pids >= 16, "recorded " .. #pids) -- etcd, 3 postgres, 4 x (supervise, pauser, pgbouncer)
    code, out = script(state, "status")
    assert.equals(0, code, out)
    assert.matches("playground: up", out, 1, true)
    assert.matches("keeper0%s+127%.0%.0%.11:18080%s+HEALTHY", out)
    local env = assert(fs.read(state .. "/env"))
    local base = env:match("PLAYGROUND_BASE='([^']+)'")
    code, out = script(state, "down")
    assert.equals(0, code, out)
    assert.is_truthy(all_gone(pids))
    assert.is_false(alive(holder))
    assert.is_false(fs.exists(base), base .. " left behind; holder log:\n" .. tostring(fs.read(state .. "/holder.log")))
    code, out = script(state, "status")
    assert.equals(3, code, out)
    assert.matches("playground: down", out, 1, true)
  end)

  it("down stops what a killed holder left running, and only that", function()
    local code, out, err = script(state, "up")
    assert.equals(0, code, out .. err)
    local holder = tonumber(assert(fs.read(state .. "/holder.pid")):match("%d+"))
    local pids = recorded(state)
    -- a process of ours the playground did not start must survive its down
    local bystander = assert(proc.spawn { "sleep", "60", stdin = "null", stdout = "null", stderr = "null" })
    assert(proc.run { "kill", "-KILL", tostring(holder) } == 0)
    task.sleep(0.5)
    code, out = script(state, "status")
    assert.equals(1, code, out)
    assert.matches("the holder is gone", out, 1, true)
    code, out = script(state, "down")
    assert.equals(0, code, out)
    assert.matches("stopping what the holder left running", out, 1, true)
    assert.is_truthy(all_gone(pids))
    assert.is_true(bystander:running())
    bystander:signal("KILL")
    bystander:wait(5)
  end)
end)
