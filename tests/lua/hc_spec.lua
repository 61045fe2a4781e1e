-- httpc.request's own client (src/hc.c): plain http:// to a numeric address goes
-- over kept-alive connections of our own; these specs pin what it must parse and
-- when it may reuse a connection. The odd responses come from a scripted server
-- (support/raw_http.py, python3 is there for Patroni); the plain ones from our
-- http.serve, which reports the client's port.
local http = require "http"
local httpc = require "httpc"
local proc = require "proc"
local task = require "task"
local P = require "support.pg"

local HOST, RAW_PORT, SERVE_PORT = "127.0.12.80", 31080, 31081
local RAW = ("http://%s:%d"):format(HOST, RAW_PORT)

describe("httpc's own client", function()
  local raw, srv

  setup(function()
    raw = assert(proc.spawn { "python3", "tests/lua/support/raw_http.py", HOST, tostring(RAW_PORT),
      stdout = "null", stderr = "inherit" })
    assert(P.eventually(10, function() return httpc.request { url = RAW .. "/up", timeout = 1 } end))
    srv = assert(http.serve { address = HOST, port = SERVE_PORT, handler = function(req)
      return 200, { port = req.remote_port, body = req.body }
    end })
  end)

  teardown(function()
    if srv then srv:close() end
    if raw then raw:signal("KILL"); raw:wait(5) end
  end)

  local function get(path, o)
    o = o or {}
    o.url = RAW .. path
    return httpc.request(o)
  end

  it("reuses one kept-alive connection for requests one after another", function()
    local url = ("http://%s:%d/x"):format(HOST, SERVE_PORT)
    local ports = {}
    for i = 1, 5 do
      local r = assert(httpc.request { url = url, method = "POST", body = "b" .. i,
        headers = { ["Content-Type"] = "text/plain" } })
      assert.equals(200, r.status)
      local v = require("cjson").decode(r.body)
      assert.equals("b" .. i, v.body)
      ports[i] = v.port
    end
    for i = 2, 5 do assert.equals(ports[1], ports[i]) end
    assert.is_true(httpc.idle_connections() >= 1)
  end)

  it("opens a connection for each request in flight, and keeps them for the next fan-out", function()
    local url = ("http://%s:%d/y"):format(HOST, SERVE_PORT)
    local function round()
      local fns = {}
      for i = 1, 4 do fns[i] = function() return require("cjson").decode(assert(httpc.request { url = url }).body).port end end
      local res = assert(task.all(fns))
      local set = {}
      for i = 1, 4 do set[res[i][1]] = true end
      return set
    end
    local first, second = round(), round()
    local n = 0
    for p in pairs(first) do n = n + 1; assert.is_true(second[p], "port " .. p .. " not reused") end
    assert.equals(4, n)
  end)

  it("decodes a chunked body with extensions and trailers", function()
    local r = assert(get("/chunked"))
    assert.equals(200, r.status)
    assert.equals("hello world", r.body)
    local r2 = assert(get("/again"))
    assert.equals(r.headers["x-conn"], r2.headers["x-conn"], "the connection was not kept after a chunked body")
  end)

  it("reads a body that ends with the connection, and does not reuse that connection", function()
    local r = assert(get("/close"))
    assert.equals("until the end", r.body)
    local r2 = assert(get("/after-close"))
    assert.equals("/after-close", r2.body)
    assert.are_not.equal(r.headers["x-conn"], r2.headers["x-conn"])
  end)

  it("sends a request larger than the socket takes at once, to a server slow to read it", function()
    local body = ("0123456789abcdef"):rep(1 << 20) -- 16 MiB: more than loopback's buffers hold
    local r = assert(get("/late-read", { method = "POST", body = body, timeout = 20 }))
    assert.equals(200, r.status)
    assert.equals(tostring(#body), r.body)
    -- and the connection, its write done, is kept for the next request
    local again = assert(get("/after"))
    assert.equals(r.headers["x-conn"], again.headers["x-conn"])
  end)

  it("skips an interim 100 response", function()
    local r = assert(get("/continue"))
    assert.equals(201, r.status)
    assert.equals("ok", r.body)
  end)

  it("reports a malformed response, a dropped connection and a too large body, with their codes", function()
    local r, err, code = get("/bad")
    assert.is_nil(r)
    assert.equals("io", code)
    assert.matches("malformed status line", err, 1, true)
    r, err, code = get("/drop")
    assert.is_nil(r)
    assert.equals("io", code)
    assert.matches("closed the connection", err, 1, true)
    r, err, code = get("/big", { max_body = 1000 })
    assert.is_nil(r)
    assert.equals("too_large", code)
    assert.matches("too large", err, 1, true)
    assert.equals(5000, #assert(get("/big")).body)
  end)

  it("times out a slow response and closes its connection", function()
    local r, err, code = get("/slow", { timeout = 0.5 })
    assert.is_nil(r)
    assert.equals("timeout", code)
    assert.matches("httpc.request", err, 1, true)
    local ok = assert(task.timeout(0.3, function() return get("/fine") end))
    assert.equals("/fine", ok.body)
  end)

  it("sends again on a new connection when the server closed the kept one unseen", function()
    local r = assert(get("/then-close"))
    -- block the whole process (no loop turns) while the server closes the idle
    -- connection: the next request takes it, unaware, and finds it dead.
    os.execute("sleep 0.5")
    local r2 = assert(get("/next"))
    assert.equals("/next", r2.body)
    assert.are_not.equal(r.headers["x-conn"], r2.headers["x-conn"])
  end)

  it("leaves host names, user info and https to libcurl, and can be told to use it for all", function()
    local named = assert(http.serve { address = "127.0.0.1", port = 0, handler = function(req)
      return 200, req.path end })
    local before = httpc.idle_connections()
    local r = httpc.request { url = ("http://localhost:%d/by-name"):format(named:port()) }
    named:close()
    assert.equals("/by-name", assert(r).body)
    assert.equals(before, httpc.idle_connections(), "a host name went to our own client")
    local kept = assert(get("/kept")).headers["x-conn"]
    local prev = httpc.set_client("curl")
    assert.equals("auto", prev)
    local ok, r2 = pcall(get, "/by-curl")
    httpc.set_client("auto")
    assert.are_not.equal(kept, r2.headers["x-conn"], "set_client('curl') still used our own client")
    assert.equals(kept, assert(get("/kept")).headers["x-conn"])
    assert.is_true(ok, tostring(r2))
    assert.equals("/by-curl", assert(r2).body)
    assert.has_error(function() httpc.set_client("wget") end)
  end)

  it("survives requests cancelled while they wait, and serves the next", function()
    for _ = 1, 20 do
      local r = task.timeout(0.01, function() return get("/slow") end)
      assert.is_nil(r)
    end
    assert.equals("/still", assert(get("/still")).body)
  end)
end)
