local duration = require "duration"
local flags = require "flags"
local jsonedit = require "jsonedit"
local pretty = require "pretty"

describe("duration", function()
  it("parses Go durations", function()
    assert.equals(5, duration.parse("5s"))
    assert.equals(90, duration.parse("1m30s"))
    assert.equals(0.25, duration.parse("250ms"))
    assert.equals(5400, duration.parse("1.5h"))
    assert.equals(0, duration.parse("0"))
    assert.equals(-1, duration.parse("-1s"))
  end)
  it("rejects what Go rejects", function()
    for _, bad in ipairs { "", "5", "s", "5x", "1m30", "--1s" } do
      assert.is_nil((duration.parse(bad)), bad)
    end
  end)
  it("formats like Go", function()
    assert.equals("1s", duration.format(1))
    assert.equals("1m30s", duration.format(90))
    assert.equals("250ms", duration.format(0.25))
    assert.equals("1h0m0s", duration.format(3600))
  end)
end)

describe("flags", function()
  local spec = {
    { name = "cluster-name", env = "SPGB_TEST_CLUSTER", default = "" },
    { name = "poll-interval", type = "duration", default = "1m" },
    { name = "dry-run", type = "bool" },
    { name = "endpoints", type = "list", default = "http://127.0.0.1:2379" },
  }
  it("parses both spellings, defaults and lists", function()
    local o, rest = flags.parse(spec, { "--cluster-name", "main", "--poll-interval=5s", "--dry-run", "x" })
    assert.equals("main", o.cluster_name)
    assert.equals(5, o.poll_interval)
    assert.is_true(o.dry_run)
    assert.same({ "x" }, rest)
    assert.same({ "http://127.0.0.1:2379" }, o.endpoints)
    o = flags.parse(spec, { "--no-dry-run", "--endpoints", "a, b" })
    assert.is_false(o.dry_run)
    assert.same({ "a", "b" }, o.endpoints)
  end)
  it("names the bad flag", function()
    local o, err = flags.parse(spec, { "--poll-interval", "soon" })
    assert.is_nil(o)
    assert.matches("--poll-interval", err, 1, true)
    o, err = flags.parse(spec, { "--nope" })
    assert.is_nil(o)
    assert.equals("unknown flag --nope", err)
    assert.equals("help", flags.parse(spec, { "--help" }))
  end)
  it("stops at the first argument when asked (with-lock CMD...)", function()
    local o, rest = flags.parse(spec, { "--dry-run", "psql", "--no-psqlrc" }, { interspersed = false })
    assert.is_true(o.dry_run)
    assert.same({ "psql", "--no-psqlrc" }, rest)
  end)
end)

describe("jsonedit", function()
  it("replaces a nested value and keeps the rest byte for byte", function()
    local doc = '{"a": {"b": [1, {"c": "x\\"y"}], "d": null}, "e": true}'
    assert.equals('{"a": {"b": [1, {"c": "x\\"y"}], "d": 7}, "e": true}', jsonedit.set(doc, { "a", "d" }, "7"))
    assert.equals('[1, {"c": "x\\"y"}]', jsonedit.get(doc, { "a", "b" }))
  end)
  it("adds a missing member", function()
    assert.equals('{"s":{"x":1,"f":true}}', jsonedit.set('{"s":{"x":1}}', { "s", "f" }, "true"))
    assert.equals('{"s":{"f":true}}', jsonedit.set('{"s":{}}', { "s", "f" }, "true"))
  end)
  it("reports malformed input and missing parents", function()
    assert.is_nil((jsonedit.set('{"s":', { "s", "f" }, "1")))
    assert.is_nil((jsonedit.set('{"s":{}}', { "t", "f" }, "1")))
    assert.is_nil((jsonedit.set('{"s":{}}', { "s" }, "{bad")))
  end)
end)

describe("pretty", function()
  it("prints nested tables sorted and survives cycles", function()
    local t = { 1, 2, b = { c = "x" }, a = true }
    t.self = t
    local s = pretty.format(t)
    assert.matches('a = true', s, 1, true)
    assert.matches('c = "x"', s, 1, true)
    assert.matches("<cycle", s, 1, true)
    assert.is_true(s:find("a = true", 1, true) < s:find("b = {", 1, true))
  end)
end)

describe("pretty scalars", function()
  it("names json.null and quotes strings with readable escapes", function()
    assert.equals("json.null", pretty.format(require("cjson").null))
    assert.equals('"a\\n\\tb \\"q\\" \\\\ \\000"', pretty.format("a\n\tb \"q\" \\ \0"))
    assert.equals('{\n  "x",\n  k = json.null,\n}', pretty.format({ "x", k = require("cjson.safe").null }))
  end)
end)

describe("common.certificate_expiry", function()
  local common = require "common"
  local proc = require "proc"
  it("reads a certificate's notAfter as unix seconds (stolon_store_certificate_expiry_seconds)", function()
    local _, out = proc.run { "mktemp", "-d" }
    local dir = out:gsub("%s+$", "")
    local code, _, err = proc.run { "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
      "-subj", "/CN=store-client", "-keyout", dir .. "/k.pem", "-out", dir .. "/c.pem" }
    assert.equals(0, code, err)
    local expiry = assert(common.certificate_expiry(dir .. "/c.pem"))
    local want = os.time() + 2 * 86400
    assert.is_true(math.abs(expiry - want) < 120, ("%d vs %d"):format(expiry, want))
    assert.is_nil((common.certificate_expiry(dir .. "/missing.pem")))
    proc.run { "rm", "-rf", dir }
  end)
end)

describe("common.find_program", function()
  local common = require "common"
  it("finds PgBouncer where Debian puts it when PATH lacks /usr/sbin", function()
    assert.equals("/usr/sbin/pgbouncer", common.find_program("pgbouncer", "/usr/bin:/bin"))
  end)

  it("prefers PATH, keeps a path as given, and names every folder it looked in", function()
    assert.equals("/bin/sh", common.find_program("sh", "/nonexistent:/bin"))
    assert.equals("/usr/sbin/pgbouncer", common.find_program("/usr/sbin/pgbouncer", ""))
    local none, err = common.find_program("no-such-program", "/nonexistent:/usr/bin", { "/opt/x" })
    assert.is_nil(none)
    assert.equals("no-such-program not found (looked in /nonexistent:/usr/bin:/opt/x)", err)
    none, err = common.find_program("/opt/none/pgbouncer")
    assert.is_nil(none)
    assert.matches("/opt/none/pgbouncer: no such file", err, 1, true)
  end)
end)
