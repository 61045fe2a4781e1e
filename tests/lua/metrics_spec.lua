-- The Prometheus registry: API, exposition format, promtool, and /metrics over HTTP.
local metrics = require "metrics"
local http = require "http"
local proc = require "proc"

local function promtool(text)
  local code, out, err = proc.run { "promtool", "check", "metrics", stdin = text, timeout = 30 }
  return code, (out or "") .. (err or "")
end

describe("metrics", function()
  it("registers gauges, counters and histograms with labels", function()
    local g = metrics.gauge("spec_level", "A gauge.", { "node" })
    g:set(3, { node = "a" })
    g:inc(2, { node = "a" })
    g:dec({ node = "a" })
    assert.equals(4, g:get { node = "a" })
    assert.equals(0, g:get { node = "never" })
    local c = metrics.counter("spec_requests_total", "Requests.", { "code", "method" })
    c:inc({ code = 200, method = "GET" })
    c:inc(4, { code = "200", method = "GET" })
    assert.equals(5, c:get { code = 200, method = "GET" })
    local h = metrics.histogram("spec_latency_seconds", "Latency.", {}, { 0.1, 1, 10 })
    h:observe(0.05)
    h:observe(0.5)
    h:observe(100)
    local n, sum = h:get()
    assert.equals(3, n)
    assert.near(100.55, sum, 1e-9)
    assert.equals("histogram", h:type())
    assert.equals("spec_level", g:name())
  end)

  it("returns the same metric for the same name and raises on a conflict", function()
    local a = metrics.counter("spec_same_total", "x", { "l" })
    local b = metrics.counter("spec_same_total", "x", { "l" })
    a:inc({ l = "v" })
    b:inc({ l = "v" })
    assert.equals(2, a:get { l = "v" })
    assert.has_error(function() metrics.gauge("spec_same_total", "x", { "l" }) end)
    assert.has_error(function() metrics.counter("spec_same_total", "x", { "other" }) end)
  end)

  it("raises on invalid names, labels, values and misuse", function()
    assert.has_error(function() metrics.gauge("1bad", "x") end)
    assert.has_error(function() metrics.gauge("bad-name", "x") end)
    assert.has_error(function() metrics.gauge("", "x") end)
    assert.has_error(function() metrics.gauge("spec_ok", "x", { "bad-label" }) end)
    assert.has_error(function() metrics.gauge("spec_ok", "x", { "__reserved" }) end)
    assert.has_error(function() metrics.histogram("spec_h_le", "x", { "le" }) end)
    assert.has_error(function() metrics.histogram("spec_h_bad", "x", {}, { 1, 1 }) end)
    local c = metrics.counter("spec_up_total", "x")
    assert.has_error(function() c:inc(-1) end)
    assert.has_error(function() c:dec() end)
    assert.has_error(function() c:set(1) end)
    assert.has_error(function() c:observe(1) end)
    local g = metrics.gauge("spec_labelled", "x", { "a" })
    assert.has_error(function() g:set(1) end)
    assert.has_error(function() g:set(1, {}) end)
    assert.has_error(function() g:set(1, { a = "x", b = "y" }) end)
    assert.has_error(function() g:set("x", { a = "x" }) end)
  end)

  it("exposes the text format with escaping, sorted and deterministic", function()
    local g = metrics.gauge("spec_escape", 'Help with \\ backslash and\nnewline.', { "v" })
    g:set(1, { v = 'quote " backslash \\ newline \n end' })
    g:set(2, { v = "a" })
    local text = metrics.expose()
    assert.matches('# HELP spec_escape Help with \\\\ backslash and\\nnewline.\n', text, 1, true)
    assert.matches('# TYPE spec_escape gauge\n', text, 1, true)
    assert.matches('spec_escape{v="quote \\" backslash \\\\ newline \\n end"} 1\n', text, 1, true)
    -- series sorted by label value: "a" < "quote..."
    assert.is_true(text:find('spec_escape{v="a"} 2', 1, true) <
                   text:find('spec_escape{v="quote', 1, true))
    -- metrics sorted by name
    assert.is_true(text:find("# HELP spec_escape", 1, true) <
                   text:find("# HELP spec_level", 1, true))
    assert.equals(text, metrics.expose())
    assert.matches('spec_latency_seconds_bucket{le="0.1"} 1\n', text, 1, true)
    assert.matches('spec_latency_seconds_bucket{le="1"} 2\n', text, 1, true)
    assert.matches('spec_latency_seconds_bucket{le="10"} 2\n', text, 1, true)
    assert.matches('spec_latency_seconds_bucket{le="+Inf"} 3\n', text, 1, true)
    assert.matches('spec_latency_seconds_sum 100.55\n', text, 1, true)
    assert.matches('spec_latency_seconds_count 3\n', text, 1, true)
    assert.matches('spec_requests_total{code="200",method="GET"} 5\n', text, 1, true)
    -- an unlabelled metric shows 0 before its first update
    metrics.gauge("spec_fresh", "Never set.")
    assert.matches("\nspec_fresh 0\n", metrics.expose(), 1, true)
  end)

  it("passes promtool check metrics", function()
    local h = metrics.histogram("spec_labelled_seconds", "Labelled histogram.", { "step" })
    h:observe(0.003, { step = "pause" })
    h:observe(7, { step = "resume" })
    metrics.gauge("spec_special_values", "Infinities.", { "k" }):set(math.huge, { k = "inf" })
    local code, out = promtool(metrics.expose())
    assert.equals(0, code, out)
    -- and promtool does reject broken text, so the check means something
    local bad = promtool("# TYPE x gauge\nx{a=\"unterminated} 1\n")
    assert.are_not.equal(0, bad)
  end)

  it("serves /metrics through http.serve", function()
    local s = assert(http.serve { port = 0, handler = function(req)
      if req.path == "/metrics" then return metrics.handler(req) end
      return 404, "no"
    end })
    local code, out = proc.run { "curl", "-sS", "-i", "--max-time", "10",
      "http://127.0.0.1:" .. s:port() .. "/metrics", timeout = 15 }
    s:close()
    assert.equals(0, code)
    local head, body = out:match("^(.-)\r\n\r\n(.*)$")
    assert.matches("HTTP/1.1 200", head)
    assert.matches("text/plain; version=0.0.4", head, 1, true)
    assert.matches("# TYPE spec_requests_total counter", body, 1, true)
    local pc, pout = promtool(body)
    assert.equals(0, pc, pout)
  end)
end)
