-- Bad input against the HTTP server: every case ends in a 4xx or a closed
-- connection, never a crash or a stuck loop, and the server keeps answering
-- ordinary requests meanwhile. The misbehaving client is tests/fake/http_abuse.c.
local http = require "http"
local proc = require "proc"
local task = require "task"
local cjson = require "cjson"

local dir, tool

local function sh(argv)
  argv.timeout = argv.timeout or 60
  local code, out, err = proc.run(argv)
  assert(code == 0, table.concat(argv, " ") .. ": " .. tostring(code) .. " " .. tostring(err))
  return out
end

local function handler(req)
  if req.path == "/json" then
    local v, err = http.json(req)
    if not v then return 400, { error = err } end
    return 200, v
  elseif req.path == "/flood" then
    task.sleep(1) -- hold every flood connection open at the same time
    return 200, "flooded"
  end
  return 200, "pong"
end

-- curl -> http status (number), or nil and curl's exit code when no response came
local function status_of(args)
  local argv = { "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10",
                 timeout = 15 }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  local code, out = proc.run(argv)
  local st = tonumber(out)
  if code ~= 0 or st == 0 then return nil, code end
  return st
end

-- Ordinary requests while fn runs: returns fn's result and how many pings succeeded.
local function while_pinging(url, fn)
  local done, pings, failures = false, 0, {}
  local pinger = task.spawn(function()
    while not done do
      local st, code = status_of { url }
      if st == 200 then pings = pings + 1 else failures[#failures + 1] = tostring(code) end
      task.sleep(0.2)
    end
  end)
  local result = fn()
  done = true
  assert(pinger:wait(20))
  assert.same({}, failures)
  return result, pings
end

local function raw(port, data, timeout)
  return sh { tool, "raw", tostring(port), tostring(timeout or 5), stdin = data }
end

describe("http server under abuse", function()
  local server, base, port

  setup(function()
    dir = sh { "mktemp", "-d" }:gsub("%s+$", "")
    tool = dir .. "/http_abuse"
    sh { "cc", "-O2", "-o", tool, "tests/fake/http_abuse.c" }
    server = assert(http.serve { port = 0, handler = handler, max_body = 1000,
      max_header = 4096, request_timeout = 2, connection_timeout = 5,
      connection_limit = 1100 })
    port = server:port()
    base = "http://127.0.0.1:" .. port
  end)

  teardown(function()
    if server then server:close() end
    if dir then proc.run { "rm", "-rf", dir } end
  end)

  it("answers malformed request lines with 4xx or closes", function()
    local bad = {
      "GARBAGE\r\n\r\n",
      "GET\r\n\r\n",
      "GET / HTTP/9.9\r\nHost: x\r\n\r\n",
      "GET / HTTP/1.1\r\n\r\n", -- HTTP/1.1 without Host
      "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
      "GET / HTTP/1.1\r\nHost: x\r\nBroken header line\r\n\r\n",
      "\0\1\2\3\255\254\r\n\r\n",
      "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    }
    for _, req in ipairs(bad) do
      local out = raw(port, req, 3)
      local st = tonumber(out:match("^HTTP/1%.%d (%d%d%d)"))
      local closed = out:match("END closed\n$") ~= nil
      assert.is_true((st ~= nil and st >= 400 and st < 600) or (st == nil and closed),
        ("request %q got %q"):format(req, out))
      assert.is_true(closed or out:match("END timeout") ~= nil)
    end
    assert.equals(200, status_of { base .. "/" })
  end)

  it("refuses oversized headers", function()
    local st, code = status_of { "-H", "X-Big: " .. string.rep("a", 20000), base .. "/" }
    assert.is_true(st == 431 or st == 413 or (st == nil and code ~= 0), tostring(st))
    assert.equals(200, status_of { base .. "/" })
  end)

  it("answers 413 to an oversized body, with or without Content-Length", function()
    local big = string.rep("b", 5000)
    assert.equals(413, status_of { "--data-binary", big, base .. "/json" })
    local st, code = status_of { "-H", "Transfer-Encoding: chunked", "--data-binary", big,
                                 base .. "/json" }
    assert.is_true(st == 413 or (st == nil and code ~= 0), tostring(st))
    -- a body just under the limit is served
    assert.equals(200, status_of { "--data-binary", cjson.encode { s = ("c"):rep(900) },
                                   base .. "/json" })
  end)

  it("answers 400 to invalid JSON", function()
    for _, body in ipairs { "{", "[1,2", "nul", '{"a": tru}', "\255\254" } do
      assert.equals(400, status_of { "--data-binary", body, base .. "/json" })
    end
  end)

  it("cuts off a client that sends one byte a second, and serves others meanwhile", function()
    local out, pings = while_pinging(base .. "/", function()
      return sh { tool, "slow", tostring(port), "1", "20", timeout = 30 }
    end)
    local after = tonumber(out:match("^closed after=([%d.]+)"))
    assert.is_not_nil(after, out)
    assert.is_true(after < 10, out) -- request_timeout is 2 s, checked every second
    assert.is_true(pings >= 3, "pings: " .. pings)
  end)

  it("survives 1,000 connections at once, and serves others meanwhile", function()
    local out, pings = while_pinging(base .. "/", function()
      return sh { tool, "flood", tostring(port), "1000", "30", timeout = 60 }
    end)
    local r = {}
    for k, v in out:gmatch("(%w+)=(%d+)") do r[k] = tonumber(v) end
    assert.equals(0, r.pending, out)
    assert.equals(0, r.status5xx, out)
    assert.equals(1000, r.ok + r.status4xx + r.closed + r.refused, out)
    assert.is_true(r.ok >= 900, out)
    assert.is_true(pings >= 2, "pings: " .. pings)
    assert.equals(200, status_of { base .. "/" })
  end)

  it("holds connections over connection_limit back (in the listen backlog)", function()
    local s = assert(http.serve { port = 0, connection_limit = 50, handler = function()
      task.sleep(0.1)
      return 200, "ok"
    end })
    local most, done = 0, false
    local watcher = task.spawn(function()
      while not done do
        most = math.max(most, s:connections())
        task.sleep(0.05)
      end
    end)
    local out = sh { tool, "flood", tostring(s:port()), "1000", "40", timeout = 60 }
    done = true
    watcher:wait(5)
    local r = {}
    for k, v in out:gmatch("(%w+)=(%d+)") do r[k] = tonumber(v) end
    assert.equals(0, r.pending, out)
    assert.equals(0, r.status5xx, out)
    assert.equals(1000, r.ok + r.status4xx + r.closed + r.refused, out)
    assert.is_true(most > 0 and most <= 50, "most connections at once: " .. most)
    assert.equals(200, status_of { "http://127.0.0.1:" .. s:port() .. "/" })
    s:close()
  end)
end)
