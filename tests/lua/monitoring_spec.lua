-- monitoring/: the Prometheus alert rules pass `promtool check rules` and their unit
-- tests (`promtool test rules`); the Grafana dashboard is valid JSON whose every query
-- is valid PromQL (checked by promtool as recording rules) and names only metrics the
-- commands export, and every exported metric has a panel.
local cjson = require "cjson"
local common = require "common"
local fs = require "fs"
local proc = require "proc"

local DIR = "monitoring"

-- The metric names in a PromQL expression: identifiers followed by {, [ or a space
-- or the end, that start with stolon_ (label names and functions never do).
local function metric_names(expr)
  local names = {}
  for name in expr:gmatch("(stolon_[%w_]+)") do names[#names + 1] = name end
  return names
end

local function exported()
  local set = {}
  for _, m in pairs(common.metrics()) do set[m:name()] = true end
  return set
end

describe("monitoring", function()
  it("alert rules pass promtool check rules and promtool test rules", function()
    local code, out, err = proc.run { "promtool", "check", "rules", DIR .. "/alerts.yml", timeout = 60 }
    assert.equals(0, code, out .. err)
    assert.matches("SUCCESS: 6 rules found", out, 1, true)
    code, out, err = proc.run { "promtool", "test", "rules", "alerts_test.yml", cwd = DIR, timeout = 60 }
    assert.equals(0, code, out .. err)
    assert.matches("SUCCESS", out, 1, true)
  end)

  it("alert rules name only metrics the commands export", function()
    local known = exported()
    local text = assert(fs.read(DIR .. "/alerts.yml"))
    local n = 0
    for name in text:gmatch("(stolon_[%w_]+)") do
      n = n + 1
      assert.is_true(known[name] ~= nil, name .. " in alerts.yml is not exported")
    end
    assert.is_true(n > 5)
  end)

  it("the dashboard's queries are valid PromQL over exported metrics, and cover every metric", function()
    local dash = cjson.decode((assert(fs.read(DIR .. "/dashboard.json"))))
    assert.equals("stolon-pgbouncer", dash.uid)
    local known, used = exported(), {}
    local rules = { "groups:", "  - name: dashboard", "    rules:" }
    local count = 0
    for _, panel in ipairs(dash.panels) do
      for _, target in ipairs(panel.targets or {}) do
        count = count + 1
        for _, name in ipairs(metric_names(target.expr)) do
          assert.is_true(known[name] ~= nil, ("panel %q: %s is not exported"):format(panel.title, name))
          used[name] = true
        end
        local expr = target.expr:gsub("%$instance", ".*")
        rules[#rules + 1] = ("      - record: dashboard:q%d"):format(count)
        rules[#rules + 1] = "        expr: " .. cjson.encode(expr)
      end
    end
    for name in pairs(known) do
      assert.is_true(used[name] ~= nil, name .. " has no panel in dashboard.json")
    end
    local tmp = assert(fs.tmpdir("spgb-monitoring"))
    assert(fs.write_atomic(tmp .. "/dashboard-queries.yml", table.concat(rules, "\n") .. "\n"))
    local code, out, err = proc.run { "promtool", "check", "rules", tmp .. "/dashboard-queries.yml", timeout = 60 }
    proc.run { "rm", "-rf", tmp }
    assert.equals(0, code, out .. err)
    assert.matches(("SUCCESS: %d rules found"):format(count), out, 1, true)
  end)
end)
