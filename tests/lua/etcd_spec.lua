-- etcd primitive against a real single-member etcd (and a garbage-spewing fake).
local etcd = require "etcd"
local task = require "task"
local proc = require "proc"
local E = require "support.etcd"

describe("etcd", function()
  local srv, c

  setup(function()
    srv = E.start { members = 1 }
    c = etcd.connect { endpoints = srv.endpoints, timeout = 5 }
  end)

  teardown(function()
    if srv then srv:stop() end
  end)

  it("puts and gets single keys, prefixes, binary values and revisions", function()
    local p1 = assert(c:put("kv/a", "1"))
    local p2 = assert(c:put("kv/b", "two\0bytes\255"))
    assert.is_true(p2.revision > p1.revision)
    local g = assert(c:get("kv/a"))
    assert.equals(1, #g.kvs)
    assert.equals("kv/a", g.kvs[1].key)
    assert.equals("1", g.kvs[1].value)
    assert.equals(p1.revision, g.kvs[1].mod_revision)
    assert.equals(p1.revision, g.kvs[1].create_revision)
    assert.equals(1, g.kvs[1].version)
    assert.is_true(g.revision >= p2.revision)
    local all = assert(c:get("kv/", { prefix = true }))
    assert.equals(2, all.count)
    assert.equals("two\0bytes\255", all.kvs[2].value)
    local lim = assert(c:get("kv/", { prefix = true, limit = 1 }))
    assert.equals(1, #lim.kvs)
    assert.is_true(lim.more)
    local old = assert(c:get("kv/a", { revision = p1.revision }))
    assert.equals("1", old.kvs[1].value)
    assert.equals(0, #assert(c:get("kv/missing")).kvs)
    local pv = assert(c:put("kv/a", "3", { prev_kv = true }))
    assert.equals("1", pv.prev_kv.value)
  end)

  it("deletes single keys and prefixes", function()
    assert(c:put("del/a", "x"))
    assert(c:put("del/b", "y"))
    assert(c:put("del/c", "z"))
    assert.equals(1, assert(c:delete("del/a")).deleted)
    assert.equals(0, assert(c:delete("del/a")).deleted)
    assert.equals(2, assert(c:delete("del/", { prefix = true })).deleted)
    assert.equals(0, #assert(c:get("del/", { prefix = true })).kvs)
  end)

  it("compare-and-swaps in one txn on value, mod_revision, create_revision, version", function()
    local p = assert(c:put("txn/k", "v1"))
    local ok = assert(c:txn {
      compare = { { key = "txn/k", target = "mod", result = "==", value = p.revision },
        { key = "txn/k", target = "value", result = "==", value = "v1" },
        { key = "txn/k", target = "version", result = ">", value = 0 } },
      success = { { put = { "txn/k", "v2" } }, { get = { "txn/k" } } },
      failure = { { get = { "txn/k" } } },
    })
    assert.is_true(ok.succeeded)
    assert.equals("put", ok.responses[1].type)
    assert.equals("v2", ok.responses[2].kvs[1].value)
    -- the same compare again fails: mod_revision moved on
    local no = assert(c:txn {
      compare = { { key = "txn/k", target = "mod", result = "==", value = p.revision } },
      success = { { put = { "txn/k", "v3" } } },
      failure = { { get = { "txn/k" } }, { delete = { "txn/other" } } },
    })
    assert.is_false(no.succeeded)
    assert.equals("v2", no.responses[1].kvs[1].value)
    assert.equals("delete", no.responses[2].type)
    local create = assert(c:txn {
      compare = { { key = "txn/new", target = "create", result = "==", value = 0 } },
      success = { { put = { key = "txn/new", value = "made" } } },
    })
    assert.is_true(create.succeeded)
    assert.has_error(function() c:txn { compare = { { key = "k", target = "bogus" } } } end)
  end)

  it("runs many requests in parallel under task.all", function()
    local fns = {}
    for i = 1, 50 do
      fns[i] = function()
        assert(c:put("par/" .. i, tostring(i)))
        return assert(c:get("par/" .. i)).kvs[1].value
      end
    end
    local res, err = task.all(fns)
    assert.is_nil(err)
    for i = 1, 50 do assert.equals(tostring(i), res[i][1]) end
  end)

  it("watches a prefix: events in revision order, puts and deletes", function()
    local start = assert(c:get("w1/")).revision
    local w <close> = c:watch("w1/", { prefix = true, start_revision = start + 1 })
    assert(c:put("w1/a", "1"))
    assert(c:put("w1/b", "2"))
    assert(c:delete("w1/a"))
    local seen = {}
    for _ = 1, 10 do
      if #seen >= 3 then break end
      for _, ev in ipairs(assert(w:next(5))) do seen[#seen + 1] = ev end
    end
    assert.equals(3, #seen)
    assert.same({ "put", "put", "delete" }, { seen[1].type, seen[2].type, seen[3].type })
    assert.same({ "w1/a", "w1/b", "w1/a" }, { seen[1].key, seen[2].key, seen[3].key })
    assert.equals("2", seen[2].value)
    assert.is_true(seen[1].mod_revision < seen[2].mod_revision)
    assert.is_true(seen[2].mod_revision < seen[3].mod_revision)
    local none, _, code = w:next(0.2)
    assert.is_nil(none)
    assert.equals("timeout", code)
  end)

  it("resumes a dropped stream from the next revision without duplicates", function()
    local w <close> = c:watch("w2/", { prefix = true })
    assert.equals("timeout", select(3, w:next(0.3))) -- stream established
    local got = {}
    for i = 1, 20 do
      assert(c:put("w2/k", tostring(i)))
      if i % 5 == 0 then
        for _, ev in ipairs(assert(w:next(5))) do got[#got + 1] = ev end
        w:reconnect() -- the stream drops; later events must come exactly once
      end
    end
    for _ = 1, 20 do
      if #got >= 20 then break end
      local evs = w:next(2)
      if evs then for _, ev in ipairs(evs) do got[#got + 1] = ev end end
    end
    assert.equals(20, #got)
    for i = 1, 20 do
      assert.equals(tostring(i), got[i].value)
      if i > 1 then assert.equals(got[i - 1].mod_revision + 1, got[i].mod_revision) end
    end
  end)

  it("reports compaction while a watcher was disconnected; a re-read then resumes", function()
    local w <close> = c:watch("w3/", { prefix = true })
    assert.equals("timeout", select(3, w:next(0.3)))
    assert(c:put("w3/k", "a"))
    local first = assert(w:next(5))
    w:reconnect()
    local last
    for i = 1, 5 do last = assert(c:put("w3/k", "b" .. i)) end
    assert(c:compact(last.revision))
    local evs, err, code, rev = w:next(5)
    assert.is_nil(evs, "expected compaction, got events")
    assert.equals("compacted", code)
    assert.matches("compact", err)
    assert.equals(last.revision, rev)
    assert.is_true(first[1].mod_revision < rev)
    local now = assert(c:get("w3/k"))
    assert.equals("b5", now.kvs[1].value)
    w:resume(now.revision + 1)
    assert(c:put("w3/k", "after"))
    local after = assert(w:next(5))
    assert.equals("after", after[1].value)
  end)

  it("closes the watch stream when the waiting task is cancelled", function()
    local w = c:watch("w4/")
    local t = task.spawn(function() return w:next() end)
    task.sleep(0.3)
    t:cancel()
    local ok, err = t:wait(5)
    assert.is_false(ok)
    assert.matches("cancelled", err)
    assert.is_nil(w.stream)
    assert.has_error(function() w:next(0.1) end)
  end)

  it("keeps a lease alive in the background and revokes it", function()
    local l = assert(c:lease(2))
    assert.is_true(l.id > 0)
    assert(c:put("lease/k", "v", { lease = l }))
    task.sleep(3.5) -- past the TTL: the keep-alive task renewed it
    assert.equals(1, #assert(c:get("lease/k")).kvs)
    assert.is_true(l:alive())
    assert.is_true(l:revoke())
    assert.is_true(l:revoke()) -- idempotent
    assert.equals(0, #assert(c:get("lease/k")).kvs)
  end)

  it("locks: a second holder waits, times out, then gets it after unlock", function()
    local h = assert(c:lock("locks/a", { ttl = 5 }))
    local none, err, code = c:lock("locks/a", { timeout = 0.5, ttl = 5 })
    assert.is_nil(none)
    assert.equals("timeout", code, err)
    assert.equals(1, #assert(c:get("locks/a/", { prefix = true })).kvs) -- the loser cleaned up
    local got = task.spawn(function() return assert(c:lock("locks/a", { timeout = 10, ttl = 5 })) end)
    task.sleep(0.3)
    assert.equals("waiting", got:status())
    assert.is_true(h:unlock())
    local ok, h2 = got:wait(10)
    assert.is_true(ok)
    assert.is_true(h2:unlock())
  end)

  it("interoperates with etcdctl lock in both directions", function()
    -- etcdctl holds the lock for 3 s; we wait and then acquire it.
    local ctl = assert(srv:etcdctl { "lock", "locks/ctl", "sleep", "3", spawn = true })
    for _ = 1, 50 do
      if #assert(c:get("locks/ctl/", { prefix = true })).kvs > 0 then break end
      task.sleep(0.1)
    end
    assert.equals(1, #assert(c:get("locks/ctl/", { prefix = true })).kvs)
    local t0 = task.now()
    local h = assert(c:lock("locks/ctl", { timeout = 20, ttl = 5 }))
    assert.is_true(task.now() - t0 > 1, "acquired while etcdctl held the lock")
    assert.equals(0, ctl:wait(10))
    -- we hold it: etcdctl waits until we unlock.
    local ctl2 = assert(srv:etcdctl { "lock", "locks/ctl", "echo", "got-it", spawn = true })
    task.sleep(1.5)
    assert.is_true(ctl2:running(), "etcdctl took the lock we hold")
    assert.is_true(h:unlock())
    assert.equals(0, ctl2:wait(10))
    assert.matches("got%-it", (ctl2:output()))
  end)

  it("frees the lock of a killed process when its lease expires", function()
    local dir = E.tempdir()
    local script = dir .. "/holder.lua"
    local f = assert(io.open(script, "w"))
    f:write([[
local etcd = require "etcd"
local task = require "task"
local c = etcd.connect { endpoints = { arg[1] } }
local h = assert(c:lock("locks/kill", { ttl = 2 }))
io.stdout:write("locked ", h.key, "\n")
io.stdout:flush()
task.sleep(60)
]])
    f:close()
    local child = assert(proc.spawn { E.host_binary(), "run", script, srv.endpoints[1],
      stdout = "capture", stderr = "capture", stdin = "null" })
    for _ = 1, 100 do
      if #assert(c:get("locks/kill/", { prefix = true })).kvs > 0 then break end
      task.sleep(0.1)
    end
    assert.equals(1, #assert(c:get("locks/kill/", { prefix = true })).kvs)
    assert.is_nil(c:lock("locks/kill", { timeout = 0.5, ttl = 5 }))
    child:signal("KILL")
    child:wait(5)
    local h = assert(c:lock("locks/kill", { timeout = 15, ttl = 5 }))
    assert.is_true(h:unlock())
    proc.run { "rm", "-rf", dir }
  end)

  it("returns an error code for a dead endpoint", function()
    local dead = etcd.connect { endpoints = { "http://127.0.0.1:1" }, timeout = 2 }
    local r, err, code = dead:get("x")
    assert.is_nil(r)
    assert.equals("connect", code, err)
  end)

  it("fails over to the next endpoint when the first refuses connections", function()
    local two = etcd.connect { endpoints = { "http://127.0.0.1:1", srv.endpoints[1] }, timeout = 5 }
    local p = assert(two:put("fo/k", "v"))
    assert.equals("v", assert(two:get("fo/k")).kvs[1].value)
    local w <close> = two:watch("fo/k", { start_revision = p.revision })
    assert.equals("v", assert(w:next(5))[1].value)
  end)

  it("rejects misuse with an error naming the function", function()
    assert.has_error(function() etcd.connect {} end)
    assert.has_error(function() c:get(42) end)
    assert.has_error(function() c:put("k", {}) end)
    assert.has_error(function() c:lease(0) end)
    local ok, err = pcall(coroutine.wrap(function() return c:get("k") end))
    assert.is_false(ok)
    assert.matches("needs a task", err)
  end)
end)

describe("etcd against garbage", function()
  local dir, server, base

  setup(function()
    dir = E.tempdir()
    assert.equals(0, (proc.run { "cc", "-O1", "-o", dir .. "/etcd_garbage", "tests/fake/etcd_garbage.c" }))
    local port = 24800 + os.time() % 100
    server = assert(proc.spawn { dir .. "/etcd_garbage", tostring(port), stdout = "capture", stdin = "null" })
    base = "http://127.0.0.1:" .. port
    for _ = 1, 50 do
      if (server:output()):find("listening") then break end
      task.sleep(0.05)
    end
  end)

  teardown(function()
    if server then server:signal("KILL"); server:wait(5) end
    if dir then proc.run { "rm", "-rf", dir } end
  end)

  local function client(mode, timeout)
    return etcd.connect { endpoints = { base .. "/" .. mode }, timeout = timeout or 3 }
  end

  local cases = {
    { "nonjson", "bad_response" },
    { "null", "bad_response" },
    { "html500", 500 },
    { "etcderr", "etcdserver: requested lease not found" },
    { "shape", "bad_response" },
    { "badb64", "bad_response", put_ok = true }, -- a put reply has no kvs to decode
    { "truncated", "io" },
  }
  for _, case in ipairs(cases) do
    it("turns a '" .. case[1] .. "' reply into nil, err, code", function()
      local r, err, code = client(case[1]):get("k")
      assert.is_nil(r)
      assert.is_string(err)
      assert.equals(case[2], code, err)
      if not case.put_ok then
        local p, _, pcode = client(case[1]):put("k", "v")
        assert.is_nil(p)
        assert.equals(case[2], pcode)
      end
    end)
  end

  it("times out on a server that never answers", function()
    local r, _, code = client("hang", 0.5):get("k")
    assert.is_nil(r)
    assert.equals("timeout", code)
  end)

  for _, mode in ipairs { "watchgarbage", "watchtrunc", "watchbadevent" } do
    it("survives a '" .. mode .. "' watch stream (reconnects, never crashes)", function()
      local w <close> = client(mode):watch("k")
      local evs, _, code = w:next(1)
      assert.is_nil(evs)
      assert.equals("timeout", code)
    end)
  end
end)
