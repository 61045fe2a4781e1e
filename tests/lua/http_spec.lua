-- The HTTP server against real clients: curl and our own httpc (when linked).
local http = require "http"
local proc = require "proc"
local task = require "task"
local cjson = require "cjson"

local function curl(args)
  local argv = { "curl", "-sS", "--max-time", "10", timeout = 15 }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  local code, out, err = proc.run(argv)
  assert(code == 0, "curl failed: " .. tostring(code) .. " " .. tostring(err))
  return out
end

-- curl -i output -> status, lowercased headers, body
local function parse(out)
  local head, body = out:match("^(.-)\r\n\r\n(.*)$")
  local status = tonumber(head:match("^HTTP/1%.%d (%d+)"))
  local headers = {}
  for k, v in head:gmatch("\r\n([^:\r\n]+):%s*([^\r\n]*)") do headers[k:lower()] = v end
  return status, headers, body
end

local function handler(req)
  if req.path == "/echo" then
    return 200, { method = req.method, path = req.path, query = req.query, body = req.body,
                  agent = req.headers["user-agent"], x = req.headers["x-test"],
                  remote = req.remote }
  elseif req.path == "/json" then
    local v, err = http.json(req)
    if not v then return 400, { error = err } end
    return 201, { got = v }
  elseif req.path == "/text" then
    return 202, "plain words", { ["X-Reply"] = "yes" }
  elseif req.path == "/teapot" then
    return 418, "short and stout", { ["Content-Type"] = "text/x-tea" }
  elseif req.path == "/error" then
    error("deliberate failure")
  elseif req.path == "/badstatus" then
    return "nope", "x"
  elseif req.path == "/sleep" then
    task.sleep(0.5)
    return 200, "slept"
  end
  return 404, { error = "not found" }
end

describe("http server", function()
  local server, base

  setup(function()
    server = assert(http.serve { port = 0, handler = handler })
    base = "http://127.0.0.1:" .. server:port()
  end)

  teardown(function()
    if server then server:close() end
  end)

  it("picks a free port when port=0", function()
    assert.is_true(server:port() > 0)
    assert.matches("port %d+", tostring(server))
  end)

  it("gives the handler method, path, query, lowercased headers and body", function()
    local status, headers, body = parse(curl { "-i", "-H", "X-Test: hello",
      "--data-binary", "payload", base .. "/echo?a=1&b=two%20words" })
    assert.equals(200, status)
    assert.equals("application/json", headers["content-type"])
    local v = cjson.decode(body)
    assert.equals("POST", v.method)
    assert.equals("/echo", v.path)
    assert.same({ a = "1", b = "two words" }, v.query)
    assert.equals("payload", v.body)
    assert.equals("hello", v.x)
    assert.matches("^curl/", v.agent)
    assert.equals("127.0.0.1", v.remote)
  end)

  it("sends string bodies as text with the handler's status and headers", function()
    local status, headers, body = parse(curl { "-i", base .. "/text" })
    assert.equals(202, status)
    assert.equals("plain words", body)
    assert.equals("yes", headers["x-reply"])
    assert.matches("^text/plain", headers["content-type"])
    status, headers, body = parse(curl { "-i", base .. "/teapot" })
    assert.equals(418, status)
    assert.equals("text/x-tea", headers["content-type"])
    assert.equals("short and stout", body)
  end)

  it("decodes JSON bodies with http.json and answers 400 on invalid JSON", function()
    local status, _, body = parse(curl { "-i", "-H", "Content-Type: application/json",
      "--data-binary", '{"timeout": 5, "list": [1, 2]}', base .. "/json" })
    assert.equals(201, status)
    assert.same({ got = { timeout = 5, list = { 1, 2 } } }, cjson.decode(body))
    status, _, body = parse(curl { "-i", "--data-binary", '{"timeout": ', base .. "/json" })
    assert.equals(400, status)
    assert.matches("invalid JSON", cjson.decode(body).error)
    status = parse(curl { "-i", base .. "/json" })
    assert.equals(400, status)
  end)

  it("answers 500 with a JSON error when the handler fails", function()
    local status, headers, body = parse(curl { "-i", base .. "/error" })
    assert.equals(500, status)
    assert.equals("application/json", headers["content-type"])
    assert.equals("internal server error", cjson.decode(body).error)
    status = parse(curl { "-i", base .. "/badstatus" })
    assert.equals(500, status)
  end)

  it("keeps connections alive between requests", function()
    local out = curl { "-w", "%{http_code} %{num_connects}\n",
      "-o", "/dev/null", base .. "/text", "-o", "/dev/null", base .. "/text",
      "-o", "/dev/null", base .. "/text" }
    assert.equals("202 1\n202 0\n202 0\n", out)
  end)

  it("runs each request in its own task (slow handlers overlap)", function()
    local t0 = task.now()
    local fns = {}
    for i = 1, 20 do
      fns[i] = function() return curl { base .. "/sleep" } end
    end
    local results, err = task.all(fns)
    assert.is_nil(err)
    for i = 1, 20 do assert.equals("slept", results[i][1]) end
    -- 20 handlers sleeping 0.5 s each: serially that would be 10 s.
    assert.is_true(task.now() - t0 < 5, "requests were served one after another")
  end)

  it("works with our own client, many requests in parallel", function()
    local httpc = require "httpc"
    assert.equals(httpc.request, http.request)
    local fns = {}
    for i = 1, 50 do
      fns[i] = function()
        return http.request { url = base .. "/json", method = "POST",
                              body = cjson.encode { n = i }, timeout = 10 }
      end
    end
    local results, err = task.all(fns)
    assert.is_nil(err)
    for i = 1, 50 do
      local resp = results[i][1]
      assert.equals(201, resp.status)
      assert.equals(i, cjson.decode(resp.body).got.n)
      assert.equals("application/json", resp.headers["content-type"])
    end
  end)

  it("raises on misuse and returns nil, err when it cannot listen", function()
    assert.has_error(function() http.serve {} end)
    assert.has_error(function() http.serve { port = 0 } end)
    assert.has_error(function() http.serve { port = 70000, handler = handler } end)
    assert.has_error(function() http.serve { port = 0, handler = handler, tls_cert = "x" } end)
    local s, err = http.serve { port = server:port(), handler = handler }
    assert.is_nil(s)
    assert.matches("http.serve", err)
  end)

  it("stops listening on close", function()
    local s = assert(http.serve { port = 0, handler = handler })
    local url = "http://127.0.0.1:" .. s:port() .. "/text"
    assert.equals("plain words", curl { url })
    s:close()
    s:close() -- idempotent
    local code = proc.run { "curl", "-sS", "--max-time", "5", url }
    assert.are_not.equal(0, code)
    assert.has_error(function() s:port() end)
  end)

  it("cancels running handlers when closed", function()
    local started = false
    local s = assert(http.serve { port = 0, handler = function()
      started = true
      task.sleep(30)
      return 200, "late"
    end })
    local url = "http://127.0.0.1:" .. s:port() .. "/"
    local h = task.spawn(function()
      return proc.run { "curl", "-sS", "--max-time", "10", url, timeout = 15 }
    end)
    for _ = 1, 100 do
      if started then break end
      task.sleep(0.05)
    end
    assert.is_true(started)
    s:close()
    local ok, code = h:wait(15)
    assert.is_true(ok)
    assert.are_not.equal(0, code) -- connection closed without a response
  end)

  it("serves HTTPS with a certificate and key", function()
    local _, dir = proc.run { "mktemp", "-d" }
    dir = dir:gsub("%s+$", "")
    local code = proc.run { "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
      "-keyout", dir .. "/key.pem", "-out", dir .. "/cert.pem", "-days", "1",
      "-subj", "/CN=127.0.0.1", timeout = 60 }
    assert.equals(0, code)
    local s = assert(http.serve { port = 0, handler = handler,
      tls_cert = dir .. "/cert.pem", tls_key = dir .. "/key.pem" })
    local url = "https://127.0.0.1:" .. s:port() .. "/text"
    assert.equals("plain words", curl { "--cacert", dir .. "/cert.pem", url })
    -- plain HTTP on the TLS port is refused, not served
    local c = proc.run { "curl", "-sS", "--max-time", "5", "http://127.0.0.1:" .. s:port() .. "/text" }
    assert.are_not.equal(0, c)
    s:close()
    proc.run { "rm", "-rf", dir }
  end)
end)
