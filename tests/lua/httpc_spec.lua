-- httpc.request against a real HTTP server (etcd's gateway) and dead ports.
local httpc = require "httpc"
local task = require "task"
local E = require "support.etcd"

describe("httpc", function()
  local srv, base

  setup(function()
    srv = E.start { members = 1 }
    base = srv.endpoints[1]
  end)

  teardown(function()
    if srv then srv:stop() end
  end)

  it("GETs with status, lowercased headers and body", function()
    local r = assert(httpc.request { url = base .. "/version" })
    assert.equals(200, r.status)
    assert.equals("application/json", r.headers["content-type"])
    assert.matches('"etcdserver"', r.body)
  end)

  it("POSTs a body with headers", function()
    local r = assert(httpc.request { method = "POST", url = base .. "/v3/kv/range",
      headers = { ["Content-Type"] = "application/json" }, body = '{"key":"eA=="}', timeout = 5 })
    assert.equals(200, r.status)
    assert.matches('"header"', r.body)
  end)

  it("returns non-2xx statuses as responses", function()
    local r = assert(httpc.request { url = base .. "/no/such/path" })
    assert.equals(404, r.status)
  end)

  it("runs 100 requests in parallel under task.all", function()
    local fns = {}
    for i = 1, 100 do
      fns[i] = function() return assert(httpc.request { url = base .. "/health" }).status end
    end
    local res, err = task.all(fns)
    assert.is_nil(err)
    for i = 1, 100 do assert.equals(200, res[i][1]) end
  end)

  it("reports a refused connection as nil, err, 'connect'", function()
    local r, err, code = httpc.request { url = "http://127.0.0.1:1/", timeout = 2 }
    assert.is_nil(r)
    assert.matches("httpc.request", err)
    assert.equals("connect", code)
  end)

  it("honours cancellation by task.timeout", function()
    -- a watch never ends: the enclosing timeout cancels the request.
    local r, _, code = task.timeout(0.5, function()
      return httpc.request { url = base .. "/v3/watch", body = '{"create_request":{"key":"eA=="}}',
        timeout = 30 }
    end)
    assert.is_nil(r)
    assert.equals("timeout", code)
    local r2, _, code2 = httpc.request { url = base .. "/v3/watch",
      body = '{"create_request":{"key":"eA=="}}', timeout = 0.5 }
    assert.is_nil(r2)
    assert.equals("timeout", code2)
  end)

  -- In a child host: the failure this guards against is an abort() of the process.
  it("survives requests cancelled or timed out while they connect (curl#11439)", function()
    local D = require "support.daemon"
    local code, out, err = D.run({ "run", "tests/lua/support/cancel_connects.lua", "127.0.12.70", "31070",
      "127.0.12.71", "31071" }, { timeout = 120 })
    assert.equals(0, code, tostring(err))
    assert.matches("^ok", out)
  end)

  it("rejects misuse", function()
    assert.has_error(function() httpc.request {} end)
    assert.has_error(function() httpc.request { url = "ftp://x/" } end)
    assert.has_error(function() httpc.request { url = base, headers = { X = "a\r\nB: c" } } end)
    local ok, err = pcall(coroutine.wrap(function() return httpc.request { url = base } end))
    assert.is_false(ok)
    assert.matches("needs a task", err)
  end)
end)
