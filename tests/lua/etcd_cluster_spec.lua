-- etcd primitive against a 3-member cluster on 127.0.0.1-3: kill the member in use.
local etcd = require "etcd"
local httpc = require "httpc"
local cjson = require "cjson.safe"
local E = require "support.etcd"

-- Endpoints ordered so that the first is a follower: killing it then needs no
-- leader election, so no write is left with an unknown outcome ("request timed
-- out" from etcd itself), and the test can demand every write succeed.
local function follower_first(endpoints)
  local order = {}
  for _, ep in ipairs(endpoints) do
    local r = assert(httpc.request { url = ep .. "/v3/maintenance/status", body = "{}", timeout = 5 })
    local st = assert(cjson.decode(r.body))
    if st.leader == st.header.member_id then table.insert(order, ep) else table.insert(order, 1, ep) end
  end
  return order
end

describe("etcd cluster failover", function()
  local srv

  setup(function()
    srv = E.start { members = 3 }
  end)

  teardown(function()
    if srv then srv:stop() end
  end)

  it("carries reads, writes and an open watch through a killed member, losing no event", function()
    local eps = follower_first(srv.endpoints)
    local c = etcd.connect { endpoints = eps, timeout = 10, dial_timeout = 1 }
    local start = assert(c:put("fo/start", "x")).revision
    local w <close> = c:watch("fo/", { prefix = true, start_revision = start + 1 })
    assert.equals("timeout", select(3, w:next(0.3))) -- stream open on member 1
    local N, revs, seen = 40, {}, {}
    local function drain(t)
      local evs = w:next(t)
      if evs then for _, ev in ipairs(evs) do seen[#seen + 1] = ev end end
    end
    for i = 1, N do
      if i == N // 2 then
        for m = 1, 3 do -- the member the client (and the watch) use
          if srv.endpoints[m] == eps[c.cur] then srv:kill_member(m) end
        end
      end
      local p = assert(c:put(("fo/k%02d"):format(i), tostring(i)))
      revs[i] = p.revision
      assert.equals(tostring(i), assert(c:get(("fo/k%02d"):format(i))).kvs[1].value)
      if i % 7 == 0 then drain(0.05) end
    end
    for _ = 1, 100 do
      if #seen >= N then break end
      drain(1)
    end
    assert.equals(N, #seen)
    for i = 1, N do
      assert.equals(("fo/k%02d"):format(i), seen[i].key)
      assert.equals(revs[i], seen[i].mod_revision)
      if i > 1 then assert.is_true(seen[i].mod_revision > seen[i - 1].mod_revision) end
    end
    assert.equals("timeout", select(3, w:next(0.3))) -- and nothing twice
    assert.are_not.equal(1, c.cur, "requests moved to another member")
    assert.are_not.equal(1, w.ep, "the watch moved to another member")
    local all = assert(c:get("fo/", { prefix = true, count_only = true }))
    assert.equals(N + 1, all.count)
  end)

  it("takes and releases a lock while a member is down", function()
    local c = etcd.connect { endpoints = srv.endpoints, timeout = 10, dial_timeout = 1 }
    local h = assert(c:lock("fo/lock", { timeout = 10, ttl = 5 }))
    assert.is_true(h:unlock())
  end)
end)
