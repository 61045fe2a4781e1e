-- The with-lock command against a real etcd (127.0.4.60): exit codes (0 ok, 3 the
-- command failed, 2 lock held past --lock-timeout, 1 store error), mutual exclusion
-- with etcd's own mutex (`etcdctl lock`) both ways, output passed through, no shell.
local D = require "support.daemon"
local E = require "support.etcd"
local P = require "support.pg"
local proc = require "proc"
local task = require "task"

local HOST, PORT = "127.0.4.60", 22788
local CLUSTER = "wl"
local LOCK = "stolon/cluster/" .. CLUSTER .. "/clusterdata/failover"

describe("with-lock", function()
  local dir, etcd_srv, endpoint, client

  local function with_lock(args, extra)
    local argv = { "with-lock", "--cluster-name", CLUSTER, "--store-endpoints", endpoint, "--metrics-port", "0" }
    for _, a in ipairs(extra or {}) do argv[#argv + 1] = a end
    for _, a in ipairs(args) do argv[#argv + 1] = a end
    return argv
  end

  local function etcdctl_lock(cmd)
    local argv = { "etcdctl", "--endpoints=" .. endpoint, "lock", LOCK, "--" }
    for _, a in ipairs(cmd) do argv[#argv + 1] = a end
    argv.stdin, argv.stdout, argv.stderr = "null", "capture", "capture"
    return assert(proc.spawn(argv))
  end

  -- Holder and waiter keys of the mutex (etcd's concurrency package: LOCK/<lease>).
  local function lock_keys()
    local res = assert(client:get(LOCK .. "/", { prefix = true }))
    return #(res.kvs or {})
  end

  setup(function()
    dir = P.tmpdir("spgb-with-lock")
    etcd_srv = E.start { members = 1, hosts = { HOST }, port = PORT - 2 }
    endpoint = etcd_srv.endpoints[1]
    client = assert(require("etcd").connect { endpoints = { endpoint }, timeout = 3 })
  end)

  teardown(function()
    if etcd_srv then etcd_srv:stop() end
    if dir then proc.run { "rm", "-rf", dir } end
  end)

  it("exits 0 when the command succeeds, passing its output through", function()
    local code, out, err = D.run(with_lock { "echo", "hello from the command" })
    assert.equals(0, code, err)
    assert.equals("hello from the command\n", out)
    assert.matches("event=lock_acquired", err, 1, true)
    assert.matches("event=lock_released", err, 1, true)
    assert.equals(0, lock_keys())
  end)

  it("exits 3 when the command fails, and releases the lock", function()
    assert.equals(3, (D.run(with_lock { "false" })))
    local code, _, err = D.run(with_lock { "sh", "-c", "echo oops >&2; exit 7" })
    assert.equals(3, code)
    assert.matches("oops", err, 1, true)
    assert.equals(3, (D.run(with_lock { "/nonexistent/command" })))
    assert.equals(0, lock_keys())
  end)

  it("runs the command without a shell: arguments are passed literally", function()
    local code, out, err = D.run(with_lock { "printf", "%s\n", "a;b", "$(id -u)", "`id`", "x > y" })
    assert.equals(0, code, err)
    assert.equals("a;b\n$(id -u)\n`id`\nx > y\n", out)
  end)

  it("exits 2 when the lock is held elsewhere past --lock-timeout", function()
    local holder = etcdctl_lock { "sleep", "3" }
    assert(D.eventually(10, function() return lock_keys() > 0 end), "etcdctl did not take the lock")
    local code, out, err = D.run(with_lock({ "echo", "ran" }, { "--lock-timeout", "500ms" }))
    assert.equals(2, code, err)
    assert.equals("", out)
    assert.matches("event=lock_failed", err, 1, true)
    assert.equals(0, holder:wait(15))
    assert(D.eventually(5, function() return lock_keys() == 0 end), "our waiter key was left behind")
  end)

  it("exits 1 on a store error", function()
    local code, out, err = D.run({ "with-lock", "--cluster-name", CLUSTER, "--store-endpoints",
      ("http://%s:%d"):format(HOST, PORT + 9), "--metrics-port", "0", "--lock-timeout", "2s",
      "--store-dial-timeout", "1s", "--store-timeout", "1s", "echo", "ran" }, { timeout = 30 })
    assert.equals(1, code, err)
    assert.equals("", out)
    local code2, _, err2 = D.run { "with-lock", "--store-endpoints", endpoint, "echo", "ran" }
    assert.equals(1, code2)
    assert.matches("cluster-name", err2, 1, true)
  end)

  -- Each holder's command writes a file only at its end; the other side's command
  -- reads it: it can only be there if the second command ran after the first ended.
  it("excludes etcdctl lock while it holds the lock", function()
    local mark = dir .. "/ours.done"
    local ours = D.start(with_lock { "sh", "-c", 'sleep 2; echo with-lock-was-here > "$0"', mark })
    assert(D.eventually(10, function() return ours:logs():find("event=lock_acquired", 1, true) end))
    local theirs = etcdctl_lock { "cat", mark }
    task.sleep(1)
    assert.is_true(theirs:running(), "etcdctl took the lock while with-lock held it")
    assert.equals(0, ours.p:wait(10))
    assert.equals(0, theirs:wait(10))
    local out = theirs:output()
    assert.matches("with-lock-was-here", out, 1, true)
  end)

  it("waits for etcdctl lock to release before running the command", function()
    local mark = dir .. "/theirs.done"
    local theirs = etcdctl_lock { "sh", "-c", 'sleep 2; echo etcdctl-was-here > "$0"', mark }
    assert(D.eventually(10, function() return lock_keys() > 0 end), "etcdctl did not take the lock")
    local code, out, err = D.run(with_lock({ "cat", mark }, { "--lock-timeout", "15s" }))
    assert.equals(0, code, err)
    assert.equals("etcdctl-was-here\n", out)
    assert.equals(0, theirs:wait(5))
  end)
end)
