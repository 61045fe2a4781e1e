-- Faults under `supervise` (issue 8), on real processes: a 3-member etcd on
-- 127.0.3.1-3, one PostgreSQL listening on the three addresses (so a "master move" is a
-- change of host that a query through PgBouncer can see: inet_server_addr()), and
-- `supervise` daemons each running their own PgBouncer. docs/faults.md lists each
-- fault, what must hold and how this file checks it.
--
-- Addresses and ports: 127.0.3.x only; etcd 22672-22677; PostgreSQL 26301; PgBouncers
-- 26311+; metrics 26321+.
local P = require "support.pg"
local D = require "support.daemon"
local E = require "support.etcd"
local T = require "support.template"
local CD = require "playground.clusterdata"
local etcd = require "etcd"
local http = require "http"
local pg = require "pg"
local proc = require "proc"
local task = require "task"

local HOSTS = { "127.0.3.1", "127.0.3.2", "127.0.3.3" }
local PG_PORT = 26301

local function sh(argv)
  local code, out, err = proc.run(argv)
  assert(code == 0, table.concat(argv, " ") .. ": " .. tostring(code) .. " " .. tostring(err or out))
  return out
end

local read = require("fs").read -- text | nil, err

-- clusterdata with keeper<i-1> (on HOSTS[i]) as master.
local function clusterdata(i)
  local keepers = {}
  for k, h in ipairs(HOSTS) do keepers[k] = { uid = "keeper" .. (k - 1), host = h, port = PG_PORT } end
  return CD.encode(CD.new { keepers = keepers, master = "keeper" .. (i - 1), sync = { "keeper" .. (i % 3) } })
end

local function template_text(o, marker)
  return T.pgbouncer { head = "; " .. marker, dir = o.dir, host = "127.0.3.1", port = o.port,
    settings = { "max_client_conn = 100", "default_pool_size = 5", "log_connections = 0", "log_disconnections = 0" } }
end

local Sup = {}
Sup.__index = Sup

-- The host PgBouncer sends queries to right now (nil, err when it does not serve).
function Sup:served()
  local conn, err = pg.connect({ host = "127.0.3.1", port = self.port, dbname = "postgres", user = "postgres",
    connect_timeout = 2 }, { timeout = 3 })
  if not conn then return nil, err end
  local rows, qerr = conn:query("SELECT host(inet_server_addr()) AS a")
  conn:close()
  if not rows then return nil, qerr end
  return rows[1].a
end

function Sup:config() return read(self.ini) end

function Sup:logs() return self.d:logs() or "" end

-- metric(name_with_labels) -> number (0 when absent)
function Sup:metric(series)
  local r = http.request { url = ("http://127.0.3.1:%d/metrics"):format(self.metrics_port), timeout = 3 }
  assert(r and r.status == 200, "metrics unavailable")
  for line in r.body:gmatch("[^\n]+") do
    local name, v = line:match("^(%S+)%s+(%S+)$")
    if name == series then return tonumber(v) end
  end
  return 0
end

function Sup:write_template(text)
  D.write_file(self.tmpl, text)
end

-- Wait (at most seconds) until PgBouncer serves host; returns the elapsed time.
function Sup:wait_served(host, seconds)
  local t0 = task.now()
  local ok, err = D.eventually(seconds, function()
    local h, e = self:served()
    if h == host then return true end
    return nil, ("serving %s (%s)"):format(tostring(h), tostring(e))
  end)
  assert(ok, ("PgBouncer did not serve %s within %ss: %s\n%s"):format(host, seconds, tostring(err), self:logs()))
  return task.now() - t0
end

function Sup:stop()
  if self.d then
    local code, _, _, err = self.d:stop("TERM", 15)
    -- SPGB_FAULTS_LOGS=1 shows each daemon's log (to read what an operator would see)
    if os.getenv("SPGB_FAULTS_LOGS") then print(("\n== %s (exit %s)\n%s"):format(self.name, tostring(code), err)) end
  end
  -- the tmpfs, and a read-only bind mount on it if a failed case left one
  for _ = 1, 3 do
    if not self.mounted or proc.run { "mountpoint", "-q", self.cfgdir } ~= 0 then break end
    proc.run { "umount", "-l", self.cfgdir }
  end
  proc.run { "rm", "-rf", self.dir }
end

describe("supervise under faults", function()
  local srv, writer, db
  local sups = {}
  local n = 0

  -- put(cluster, master index) through members 2 and 3 only (member 1 may be down)
  local function put(cluster, i)
    local r, err = writer:put("stolon/cluster/" .. cluster .. "/clusterdata", clusterdata(i))
    assert(r, err)
    return r.revision
  end

  -- start_supervise{endpoints=, tmpfs=} -> Sup, serving HOSTS[1]
  local function start_supervise(o)
    n = n + 1
    local s = setmetatable({ name = "faults" .. n, port = 26310 + n, metrics_port = 26320 + n }, Sup)
    s.dir = P.tmpdir("spgb-faults")
    s.cfgdir = s.dir .. "/cfg"
    sh { "mkdir", "-m", "0755", s.cfgdir }
    if o.tmpfs then
      sh { "mount", "-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs", s.cfgdir }
      s.mounted = true
    end
    if P.is_root() then sh { "chown", "postgres:postgres", s.cfgdir } end
    s.ini = s.cfgdir .. "/pgbouncer.ini"
    s.tmpl = s.dir .. "/pgbouncer.ini.template"
    s:write_template(template_text(s, "template v1"))
    D.write_file(s.dir .. "/userlist.txt", '"pgbouncer" ""\n"postgres" ""\n')
    put(s.name, 1)
    s.d = D.start({ "supervise", "--cluster-name", s.name, "--store-endpoints", table.concat(o.endpoints, ","),
      "--store-timeout", "1s", "--store-dial-timeout", "1s",
      "--pgbouncer-config-file", s.ini, "--pgbouncer-config-template-file", s.tmpl,
      "--pgbouncer-socket-dir", s.dir, "--pgbouncer-port", tostring(s.port),
      "--pgbouncer-binary", P.pgbouncer, "--poll-interval", o.poll or "30s", "--pgbouncer-retry-timeout", "1s",
      "--restart-backoff", "1s", "--termination-grace-period", "0s", "--termination-poll-interval", "1s",
      "--metrics-address", "127.0.3.1", "--metrics-port", tostring(s.metrics_port) }, { as_postgres = true })
    sups[#sups + 1] = s
    s:wait_served(HOSTS[1], 20)
    return s
  end

  -- Stop member 1 (the one the daemons use first) and wait until members 2 and 3 have
  -- a leader again (a write during the election would time out).
  local function kill_member1()
    srv:kill_member(1)
    assert(D.eventually(10, function()
      local r = http.request { url = srv.endpoints[2] .. "/health", timeout = 1 }
      return r and r.status == 200 and r.body:find('"health":"true"', 1, true)
    end), "members 2 and 3 have no leader")
  end

  setup(function()
    srv = E.start { members = 3, hosts = HOSTS, port = 22670 }
    writer = assert(etcd.connect { endpoints = { srv.endpoints[2], srv.endpoints[3] }, timeout = 5 })
    db = P.start_postgres { host = HOSTS[1], port = PG_PORT,
      settings = { "listen_addresses=" .. table.concat(HOSTS, ",") } }
  end)

  teardown(function()
    for _, s in ipairs(sups) do s:stop() end
    if db then db:destroy() end
    if srv then srv:stop() end
  end)

  describe("etcd faults", function()
    local single, multi

    setup(function()
      single = start_supervise { endpoints = { srv.endpoints[1] } }
      multi = start_supervise { endpoints = srv.endpoints }
    end)

    after_each(function()
      assert(srv:start_member(1))
    end)

    it("keeps PgBouncer serving on the last config while its etcd is gone, and converges within about a "
      .. "second of reaching etcd again to the latest master, missing nothing", function()
      local before = single:config()
      kill_member1()
      -- the master moves twice while `single` cannot see etcd (a partition for it)
      put(single.name, 2)
      put(single.name, 3)
      for _ = 1, 4 do
        task.sleep(0.5)
        assert.equals(HOSTS[1], single:served())
        assert.equals(before, single:config())
        assert.is_true(single.d:running())
      end
      assert(srv:start_member(1))
      local took = single:wait_served(HOSTS[3], 10)
      print(("\n  [faults] converged %.2f s after the member came back"):format(took))
      assert.is_true(took < 3, ("took %.2f s"):format(took))
      assert.matches("host=127.0.3.3 ", single:config())
      assert.is_true(single.d:running())
    end)

    it("fails over to the next member when the one it uses stops, while the master changes", function()
      kill_member1()
      local t0 = task.now()
      put(multi.name, 2)
      multi:wait_served(HOSTS[2], 10)
      put(multi.name, 3)
      multi:wait_served(HOSTS[3], 10)
      local took = task.now() - t0
      print(("\n  [faults] two master changes followed in %.2f s with member 1 down"):format(took))
      assert.is_true(took < 4, ("took %.2f s"):format(took))
      assert.matches("host=127.0.3.3 ", multi:config())
    end)

    it("notices a frozen member (SIGSTOP: connections stay open, nothing answers) through its poll, "
      .. "within --poll-interval + --store-timeout, and then follows changes promptly again", function()
      local frozen = start_supervise { endpoints = srv.endpoints, poll = "2s" }
      srv.members[1].proc:signal("STOP")
      local ok, err = pcall(function()
        assert(D.eventually(10, function()
          local r = http.request { url = srv.endpoints[2] .. "/health", timeout = 1 }
          return r and r.status == 200 and r.body:find('"health":"true"', 1, true)
        end), "members 2 and 3 have no leader")
        local t0 = task.now()
        put(frozen.name, 2)
        frozen:wait_served(HOSTS[2], 10)
        local first = task.now() - t0
        t0 = task.now()
        put(frozen.name, 3)
        frozen:wait_served(HOSTS[3], 10)
        local second = task.now() - t0
        print(("\n  [faults] frozen member: first change after %.2f s, next after %.2f s"):format(first, second))
        -- poll (2 s) + a read timing out on the frozen member (1 s), with slack
        assert.is_true(first < 5, ("took %.2f s"):format(first))
        assert.matches("event=store_watch_stalled", frozen:logs())
        -- watching a live member again: well under one poll interval
        assert.is_true(second < 2, ("took %.2f s"):format(second))
      end)
      srv.members[1].proc:signal("CONT")
      assert(ok, err)
    end)

    it("re-reads and converges when the watch revision was compacted while disconnected", function()
      put(single.name, 1)
      single:wait_served(HOSTS[1], 10)
      kill_member1()
      local rev
      for _, i in ipairs { 2, 3, 2, 3, 2 } do rev = put(single.name, i) end
      for k = 1, 5 do assert(writer:put("faults/filler", tostring(k))) end
      local c = assert(writer:compact(rev + 5, { physical = true }))
      assert(c)
      assert.equals(HOSTS[1], single:served())
      assert(srv:start_member(1))
      local took = single:wait_served(HOSTS[2], 10)
      print(("\n  [faults] converged %.2f s after the member came back (compacted history)"):format(took))
      assert.is_true(took < 3, ("took %.2f s"):format(took))
      assert.matches("code=compacted", single:logs())
    end)
  end)

  describe("PgBouncer, template and config folder faults", function()
    local s

    setup(function()
      s = start_supervise { endpoints = srv.endpoints, tmpfs = P.is_root() }
    end)

    it("restarts a SIGKILLed PgBouncer with the current config (backoff) and counts the restart", function()
      put(s.name, 2)
      s:wait_served(HOSTS[2], 10)
      local config = s:config()
      local pid = assert(read(s.dir .. "/pgbouncer.pid")):match("%d+")
      sh { "kill", "-KILL", pid }
      assert(D.eventually(15, function()
        local now = read(s.dir .. "/pgbouncer.pid")
        return now and now:match("%d+") and now:match("%d+") ~= pid and s:served() == HOSTS[2]
      end), s:logs())
      assert.equals(config, s:config())
      assert.equals(1, s:metric("stolon_pgbouncer_pgbouncer_restarts_total"))
      assert.matches("event=pgbouncer_exited", s:logs())
      assert.is_true(s.d:running())
    end)

    it("keeps following the master with the last good template when the template breaks or vanishes, "
      .. "logs file:line:col, counts it, and uses the fixed template at the next render", function()
      put(s.name, 1)
      s:wait_served(HOSTS[1], 10)
      local base = s:metric('stolon_pgbouncer_config_errors_total{reason="template"}')
      s:write_template(template_text(s, "template v2"):gsub("{{%.Host}}", "{{.Host", 1))
      put(s.name, 3)
      s:wait_served(HOSTS[3], 10)
      assert.matches("; template v1", s:config(), 1, true)
      assert.matches("event=template_invalid", s:logs())
      assert.matches("pgbouncer.ini.template:3:%d+:", s:logs())
      assert.equals(base + 1, s:metric('stolon_pgbouncer_config_errors_total{reason="template"}'))

      sh { "rm", "-f", s.tmpl }
      put(s.name, 2)
      s:wait_served(HOSTS[2], 10)
      assert.matches("; template v1", s:config(), 1, true)
      assert.matches("No such file or directory", s:logs())
      assert.equals(base + 2, s:metric('stolon_pgbouncer_config_errors_total{reason="template"}'))

      s:write_template(template_text(s, "template v3"))
      put(s.name, 1)
      s:wait_served(HOSTS[1], 10)
      assert.matches("; template v3", s:config(), 1, true)
      assert.equals(base + 2, s:metric('stolon_pgbouncer_config_errors_total{reason="template"}'))
    end)

    -- Run `spoil` on the config folder, move the master, check the old config stays
    -- and the failure is logged and counted; `mend` it and check the retry recovers.
    local function unwritable_folder(spoil, mend, errtext)
      put(s.name, 1)
      s:wait_served(HOSTS[1], 10)
      local before = s:config()
      local base = s:metric('stolon_pgbouncer_config_errors_total{reason="write"}')
      spoil()
      local ok, mended = pcall(function()
        put(s.name, 2)
        assert(D.eventually(10, function()
          return s:metric('stolon_pgbouncer_config_errors_total{reason="write"}') >= base + 2
        end), "no failed write counted\n" .. s:logs())
        assert.equals(before, s:config())
        assert.equals(HOSTS[1], s:served())
        assert.matches("event=config_write_failed[^\n]*" .. errtext, s:logs())
        local t0 = task.now()
        mend()
        return t0
      end)
      if not ok then
        pcall(mend)
        error(mended, 0)
      end
      s:wait_served(HOSTS[2], 10)
      print(("\n  [faults] recovered %.2f s after the folder was mended"):format(task.now() - mended))
      assert.matches("host=127.0.3.2 ", s:config())
    end

    it("keeps the old config when the config folder is read-only, logs and counts it, and recovers", function()
      if P.is_root() then
        -- a read-only bind mount of the folder onto itself
        unwritable_folder(function()
          sh { "mount", "--bind", s.cfgdir, s.cfgdir }
          sh { "mount", "-o", "remount,bind,ro", s.cfgdir }
        end, function() sh { "umount", s.cfgdir } end, "Read%-only file system")
      else
        unwritable_folder(function() sh { "chmod", "0555", s.cfgdir } end,
          function() sh { "chmod", "0755", s.cfgdir } end, "Permission denied")
      end
    end)

    if P.is_root() then
      it("keeps the old config when the config folder (a 64k tmpfs) is full, logs and counts it, "
        .. "and recovers", function()
        local filler = s.cfgdir .. "/filler"
        unwritable_folder(function()
          proc.run { "dd", "if=/dev/zero", "of=" .. filler, "bs=4k", "count=64" } -- fails at ENOSPC: intended
          local code, out = proc.run { "df", "--output=avail", s.cfgdir }
          assert(code == 0 and out:match("\n%s*0%s*$"), "tmpfs not full: " .. tostring(out))
        end, function() sh { "rm", "-f", filler } end, "No space left on device")
      end)
    else
      pending("config folder full: needs root to mount a 64k tmpfs (run this suite as root to check it)")
    end
  end)
end)
