-- policies/examples/refuse-long-transactions.lua on a playground (127.0.4.21-23,
-- proxy 127.0.4.30): with a transaction open longer than --max-transaction-age the
-- policy refuses before anything is paused (lock released, sleepInterval restored,
-- exit 1); without one it fails over like the standard policy.
local D = require "support.daemon"
local P = require "support.pg"
local cluster = require "playground.cluster"
local pg = require "pg"
local proc = require "proc"
local stolon = require "stolon"
local task = require "task"

local HOSTS = { "127.0.4.21", "127.0.4.22", "127.0.4.23" }
local PROXY = "127.0.4.30"
local ETCD_PORT = 22774
local POLICY = os.getenv("SPGB_LUA_DIR") .. "/policies/examples/refuse-long-transactions.lua"

describe("example policy refuse-long-transactions", function()
  local c, key

  local function failover(extra)
    local args = c:failover_args(extra)
    table.insert(args, 2, "--policy")
    table.insert(args, 3, POLICY)
    return D.run(args, { timeout = 90, env = { STBOUNCER_FAILOVER_TOKEN_FILE = c.base .. "/token" } })
  end

  local function clusterdata()
    local res = assert(c.etcd:get(key))
    return assert(stolon.decode(res.kvs[1].value, key))
  end

  local function proxy_serves()
    local conn, err = pg.connect(c.app_conninfo, { timeout = 3 })
    if not conn then return nil, err end
    local rows, qerr = conn:query_opts { sql = "SELECT host(inet_server_addr()) AS addr", timeout = 3 }
    conn:close()
    return rows and rows[1].addr, qerr
  end

  setup(function()
    local err
    c, err = cluster.boot {
      hosts = HOSTS, proxy_host = PROXY, etcd_port = ETCD_PORT, pg_port = P.free_port(HOSTS[1]),
      bouncer_port = P.free_port(HOSTS[1]), pauser_port = P.free_port(HOSTS[1]), sleep_interval = "1s",
    }
    assert(c, err)
    key = stolon.key("stolon/cluster", c.o.cluster_name)
    assert(D.eventually(30, function() return clusterdata():check_healthy(1) end))
  end)

  teardown(function()
    if c then c:stop() end
  end)

  it("shows its extra step before pause in the plan", function()
    local code, out, err = failover { "--dry-run" }
    assert.equals(0, code, err)
    assert.matches("5%. refuse_long_transactions\n%s+6%. pause", out)
  end)

  it("refuses while a transaction older than the limit is open, before pausing anything", function()
    local primary = c:primary()
    local client = assert(pg.connect(c.app_conninfo, { timeout = 5 }))
    assert(client:query("BEGIN"))
    assert(client:query("SELECT txid_current()"))
    task.sleep(1.5)
    local code, out, err = failover { "--max-transaction-age", "1s", "--failover-sleep-interval", "500ms" }
    assert.equals(1, code, err)
    assert.matches("failover FAILED: refuse_long_transactions: refusing to fail over: 1 transaction(s)", out, 1, true)
    assert.matches("event=long_transaction", err, 1, true)
    assert.is_nil(err:find("event=pgbouncer_pause", 1, true), "something was paused")
    assert.matches("event=restore_sleep_interval", err, 1, true)
    assert.matches("event=etcd_lock_release", err, 1, true)
    assert.equals("1s", clusterdata():sleep_interval())
    local res = assert(c.etcd:get(key .. "/failover/", { prefix = true }))
    assert.equals(0, #(res.kvs or {}))
    local lcode = proc.run { "etcdctl", "--endpoints=" .. c.etcd_endpoint, "lock", key .. "/failover", "true",
      timeout = 5 }
    assert.equals(0, lcode)
    -- the client went on undisturbed; the proxy serves
    assert(client:query("ROLLBACK"))
    client:close()
    assert.equals(primary.host, (proxy_serves()))
    assert.equals(primary.host, c:primary().host)
  end)

  it("fails over when no transaction is that old", function()
    local old = c:primary()
    -- a young transaction is no reason to refuse (it is not held across the pause)
    local code, out, err = failover { "--max-transaction-age", "30s" }
    assert.equals(0, code, err)
    assert.matches("refuse_long_transactions", out, 1, true)
    assert.matches("failover succeeded", out, 1, true)
    local new = c:primary()
    assert.are_not.equals(old.host, new.host)
    assert(D.eventually(15, function() return proxy_serves() == new.host end))
  end)
end)
