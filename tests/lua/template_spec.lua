-- template and fs from Lua: rendering pgbouncer.ini and replacing it atomically.
local template = require "template"
local fs = require "fs"

local INI = [[
[databases]
* = host={{ .Host }} port={{ .Port }}
{{- range $name, $db := .Databases }}
{{ $name }} = host={{ $.Host }} port={{ $.Port }} dbname={{ $db }}
{{- end }}

[pgbouncer]
listen_port = {{ .ListenPort }}
{{- /* auth is optional */}}
{{ if .AuthFile -}}
auth_file = {{ .AuthFile }}
{{ end -}}
pool_mode = transaction
]]

local function render_config(src, ctx)
  local t, err = template.compile(src, "pgbouncer.ini.tmpl")
  if not t then return nil, err end
  return t:render(ctx)
end

-- Render and write only if both succeed: a bad template never touches the file.
local function update_config(path, src, ctx)
  local text, err = render_config(src, ctx)
  if not text then return nil, err end
  return fs.write_atomic(path, text)
end

describe("template", function()
  it("renders a Go-style pgbouncer.ini template", function()
    local out = assert(render_config(INI, {
      Host = "10.0.0.5", Port = 5432, ListenPort = 6432,
      AuthFile = "/etc/pgbouncer/userlist.txt",
      Databases = { billing = "billing_prod", app = "app" },
    }))
    assert.equals([[
[databases]
* = host=10.0.0.5 port=5432
app = host=10.0.0.5 port=5432 dbname=app
billing = host=10.0.0.5 port=5432 dbname=billing_prod

[pgbouncer]
listen_port = 6432
auth_file = /etc/pgbouncer/userlist.txt
pool_mode = transaction
]], out)
  end)

  it("supports if/else, with, range over arrays and functions", function()
    local t = assert(template.compile(
      '{{range $i, $h := .Hosts}}{{if $i}},{{end}}{{$h.Name}}:{{printf "%d" $h.Port}}{{end}}'
      .. '{{with .Extra}} {{.}}{{else}} none{{end}} {{len .Hosts}}'))
    assert.equals("a:1,b:2 none 2", t:render { Hosts = { { Name = "a", Port = 1 }, { Name = "b", Port = 2 } },
      Extra = "" })
  end)

  it("reports compile errors as name:line:col", function()
    local t, err = template.compile("x\n  {{.Host", "pgbouncer.ini.tmpl")
    assert.is_nil(t)
    assert.equals("pgbouncer.ini.tmpl:2:3: unclosed action", err)
    t, err = template.compile("{{if .X}}")
    assert.is_nil(t)
    assert.equals("template:1:10: unexpected EOF, expected {{end}} for {{if}} at 1:1", err)
  end)

  it("makes a missing field an error, never <no value>", function()
    local t = assert(template.compile("host={{.Hos}}"))
    local out, err = t:render { Host = "h" }
    assert.is_nil(out)
    assert.equals('template:1:6: executing <.Hos>: map has no entry for key "Hos"', err)
  end)

  it("raises on wrong argument types", function()
    assert.has_error(function() template.compile(nil) end)
    local t = assert(template.compile("x"))
    assert.has_error(function() t.render("not a template") end)
  end)

  it("loads a template file and names errors after the path", function()
    local dir = assert(fs.tmpdir("template_spec"))
    local path = dir .. "/bad.tmpl"
    assert(fs.write_atomic(path, "ok\n{{end}}"))
    local t, err = template.load(path)
    assert.is_nil(t)
    assert.equals(path .. ":2:1: unexpected {{end}}", err)
    local missing
    missing, err = template.load(dir .. "/none.tmpl")
    assert.is_nil(missing)
    assert.equals(dir .. "/none.tmpl: No such file or directory", err)
    assert(fs.remove(path))
    assert(fs.remove(dir))
  end)
end)

describe("fs.write_atomic", function()
  local dir, path

  before_each(function()
    dir = assert(fs.tmpdir("template_spec"))
    path = dir .. "/pgbouncer.ini"
  end)

  after_each(function()
    fs.remove(path)
    assert(fs.remove(dir))
  end)

  it("reports whether the content changed", function()
    assert.is_true(fs.write_atomic(path, "a\n"))
    assert.is_false(fs.write_atomic(path, "a\n"))
    assert.is_true(fs.write_atomic(path, "b\n", "0600"))
    assert.equals("b\n", fs.read(path))
  end)

  it("a bad template never overwrites a good config file", function()
    local ctx = { Host = "10.0.0.5", Port = 5432, ListenPort = 6432, AuthFile = false, Databases = {} }
    assert.is_true(update_config(path, INI, ctx))
    local good = assert(fs.read(path))

    local ok, err = update_config(path, "* = host={{ .Host }\n", ctx)
    assert.is_nil(ok)
    assert.equals("pgbouncer.ini.tmpl:1:10: unclosed action", err)
    assert.equals(good, fs.read(path))

    ok, err = update_config(path, "* = host={{ .Hostname }}\n", ctx)
    assert.is_nil(ok)
    assert.matches('map has no entry for key "Hostname"', err, 1, true)
    assert.equals(good, fs.read(path))
  end)

  it("fails without leaving a temp file when the directory is missing", function()
    local ok, err = fs.write_atomic(dir .. "/missing/pgbouncer.ini", "x")
    assert.is_nil(ok)
    assert.equals(dir .. "/missing/pgbouncer.ini: No such file or directory (mkstemp)", err)
    assert.is_false(fs.exists(path))
  end)
end)
