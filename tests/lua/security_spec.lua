-- Security (issue 8), on real processes: the pauser token from a file and from the
-- environment and never in our logs; constant-time comparison answers right; the
-- pauser refuses a non-loopback address without a token unless told to; TLS to etcd
-- (client certificates) and on the pauser API; no shell ever runs our commands.
--
-- Addresses and ports: 127.0.3.x only; etcd (TLS) 22692-22693; PgBouncer 26332;
-- pausers (HTTPS) 26351 on 127.0.3.1-3.
local P = require "support.pg"
local D = require "support.daemon"
local E = require "support.etcd"
local CD = require "playground.clusterdata"
local etcd = require "etcd"
local http = require "http"
local proc = require "proc"
local secure = require "secure"

local HOSTS = { "127.0.3.1", "127.0.3.2", "127.0.3.3" }
local BOUNCER_PORT, PAUSER_PORT = 26332, 26351
local CLUSTER = "faults-sec"
local TOKEN = "sec-" .. tostring(os.time()) .. "-Zq9"

local function sh(argv)
  local code, out, err = proc.run(argv)
  assert(code == 0, table.concat(argv, " ") .. ": " .. tostring(err or out))
  return out
end

local function write(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
end

-- A CA, one certificate for 127.0.3.1-3 (etcd and the pausers) and a client certificate.
local function make_pki(dir)
  local function key_and_req(name, subj)
    sh { "openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
      "-keyout", dir .. "/" .. name .. ".key", "-out", dir .. "/" .. name .. ".csr", "-subj", subj }
  end
  local function sign(name, ext)
    write(dir .. "/" .. name .. ".ext", ext)
    sh { "openssl", "x509", "-req", "-in", dir .. "/" .. name .. ".csr", "-CA", dir .. "/ca.crt",
      "-CAkey", dir .. "/ca.key", "-CAcreateserial", "-out", dir .. "/" .. name .. ".crt", "-days", "2",
      "-extfile", dir .. "/" .. name .. ".ext" }
  end
  sh { "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
    "-keyout", dir .. "/ca.key", "-out", dir .. "/ca.crt", "-days", "2", "-subj", "/CN=spgb-faults-ca" }
  key_and_req("server", "/CN=127.0.3.1")
  sign("server", "subjectAltName=IP:127.0.3.1,IP:127.0.3.2,IP:127.0.3.3\n"
    .. "extendedKeyUsage=serverAuth,clientAuth\n")
  key_and_req("client", "/CN=spgb-client")
  sign("client", "extendedKeyUsage=clientAuth\n")
  -- the daemons may run as postgres: let them read the keys
  sh { "chmod", "0755", dir }
  for _, f in ipairs { "server.key", "client.key" } do sh { "chmod", "0644", dir .. "/" .. f } end
end

describe("security", function()
  local dir, srv, bouncer, pki
  local pausers = {}
  local logs = {} -- everything our commands wrote, checked for the token at the end

  local function store_args()
    return { "--cluster-name", CLUSTER, "--store-endpoints", srv.endpoints[1], "--store-ca-file", pki.ca,
      "--store-cert-file", pki.client_cert, "--store-key", pki.client_key, "--metrics-port", "0" }
  end

  local function args(list, extra)
    local out = {}
    for _, a in ipairs(list) do out[#out + 1] = a end
    for _, a in ipairs(extra or {}) do out[#out + 1] = a end
    return out
  end

  -- run our command, keep its output for the token check
  local function run(argv, o)
    local code, out, err = D.run(argv, o)
    logs[#logs + 1] = (out or "") .. (err or "")
    return code, out, err
  end

  local function health(i, auth)
    return http.request { url = ("https://%s:%d/health"):format(HOSTS[i], PAUSER_PORT),
      headers = { Authorization = auth }, ca_file = pki.ca, timeout = 3 }
  end

  setup(function()
    dir = P.tmpdir("spgb-sec")
    make_pki(dir)
    pki = { ca = dir .. "/ca.crt", cert = dir .. "/server.crt", key = dir .. "/server.key",
      client_cert = dir .. "/client.crt", client_key = dir .. "/client.key", client_cert_auth = true }
    srv = E.start { members = 1, hosts = { HOSTS[1] }, port = 22690, tls = pki }
    local c = assert(etcd.connect { endpoints = srv.endpoints, ca_file = pki.ca, cert_file = pki.client_cert,
      key_file = pki.client_key, timeout = 5 })
    local keepers = {}
    for k, h in ipairs(HOSTS) do keepers[k] = { uid = "keeper" .. (k - 1), host = h, port = 26399 } end
    assert(c:put("stolon/cluster/" .. CLUSTER .. "/clusterdata",
      CD.encode(CD.new { keepers = keepers, master = "keeper0", sync = { "keeper1" } })))
    -- PgBouncer needs no reachable server for the admin console the pausers use
    bouncer = P.start_pgbouncer { host = HOSTS[1], port = BOUNCER_PORT,
      databases = { postgres = { host = HOSTS[1], port = 26399, dbname = "postgres" } } }
    D.write_file(dir .. "/token", TOKEN .. "\n", "0600")
    -- the token three ways: --token-file, $STBOUNCER_FAILOVER_TOKEN, $STBOUNCER_FAILOVER_TOKEN_FILE
    local how = {
      { extra = { "--token-file", dir .. "/token" } },
      { env = { STBOUNCER_FAILOVER_TOKEN = TOKEN } },
      { env = { STBOUNCER_FAILOVER_TOKEN_FILE = dir .. "/token" } },
    }
    for i, h in ipairs(how) do
      pausers[i] = D.start(args({ "pauser", "--debug", "--bind-address", HOSTS[i] .. ":" .. PAUSER_PORT,
        "--pgbouncer-host", HOSTS[1], "--pgbouncer-port", tostring(BOUNCER_PORT), "--metrics-port", "0",
        "--tls-cert-file", pki.cert, "--tls-key-file", pki.key }, h.extra), { env = h.env })
    end
    for i = 1, 3 do
      assert(D.eventually(10, function()
        local r = health(i, TOKEN)
        return r and r.status == 200
      end), "pauser " .. i .. " did not come up: " .. tostring(pausers[i]:logs()))
    end
  end)

  teardown(function()
    for _, p in ipairs(pausers) do p:stop() end
    if bouncer then bouncer:destroy() end
    if srv then srv:stop() end
    if dir then proc.run { "rm", "-rf", dir } end
  end)

  describe("the token", function()
    it("is taken from --token-file, $STBOUNCER_FAILOVER_TOKEN and $STBOUNCER_FAILOVER_TOKEN_FILE", function()
      for i = 1, 3 do
        assert.equals(200, health(i, TOKEN).status)
        assert.equals(200, health(i, "Bearer " .. TOKEN).status)
        assert.equals(401, health(i, nil).status)
        assert.equals(401, health(i, "wrong-presented-credential").status)
        assert.equals(401, health(i, TOKEN:sub(1, -2)).status)
      end
    end)

    it("is sent by status and failover from a file or the environment", function()
      local code, out = run(args({ "status", "--pauser-port", tostring(PAUSER_PORT), "--pauser-scheme", "https",
        "--pauser-ca-file", pki.ca, "--token-file", dir .. "/token" }, store_args()))
      assert.equals(0, code, out)
      local n = 0
      for _ in out:gmatch("HEALTHY") do n = n + 1 end
      assert.equals(3, n, out)
      code = run(args({ "failover", "--health-check-only", "--debug", "--pauser-port", tostring(PAUSER_PORT),
        "--pauser-scheme", "https", "--pauser-ca-file", pki.ca }, store_args()),
        { env = { STBOUNCER_FAILOVER_TOKEN = TOKEN } })
      assert.equals(0, code)
      -- and without it, the pausers refuse
      code, out = run(args({ "status", "--pauser-port", tostring(PAUSER_PORT), "--pauser-scheme", "https",
        "--pauser-ca-file", pki.ca }, store_args()))
      assert.equals(1, code)
      assert.matches("HTTP 401", out)
    end)

    it("is compared by secure.equal, which answers right for equal, unequal and different-length input", function()
      assert.is_true(secure.equal("", ""))
      assert.is_true(secure.equal(TOKEN, TOKEN))
      assert.is_true(secure.equal("a\0b", "a\0b"))
      assert.is_false(secure.equal(TOKEN, TOKEN:sub(1, -2) .. "x"))
      assert.is_false(secure.equal("x" .. TOKEN:sub(2), TOKEN))
      assert.is_false(secure.equal(TOKEN, TOKEN .. "x"))
      assert.is_false(secure.equal(TOKEN .. "x", TOKEN))
      assert.is_false(secure.equal("", "a"))
      assert.is_false(secure.equal("a\0b", "a\0c"))
      assert.has_error(function() secure.equal(nil, "a") end)
      assert.has_error(function() secure.equal("a", {}) end)
    end)
  end)

  describe("the pauser's address", function()
    -- 192.0.2.1 (TEST-NET-1) is not ours: passing the token check shows as a failed
    -- listen, so no test ever listens beyond loopback.
    local function pauser(bind, extra, env)
      return run(args({ "pauser", "--bind-address", bind, "--pgbouncer-host", HOSTS[1], "--pgbouncer-port",
        tostring(BOUNCER_PORT), "--metrics-port", "0" }, extra), { env = env, timeout = 20 })
    end

    it("is refused beyond loopback without a token", function()
      for _, bind in ipairs { "192.0.2.1:26359", "0.0.0.0:26359", ":26359", "[::]:26359" } do
        local code, _, err = pauser(bind)
        assert.equals(1, code, bind)
        assert.matches("event=refusing_to_start", err, 1, true)
        assert.matches("without a token", err)
      end
    end)

    it("is allowed beyond loopback with a token or --insecure-no-token", function()
      local code, _, err = pauser("192.0.2.1:26359", { "--insecure-no-token" })
      assert.equals(1, code)
      assert.not_matches("refusing_to_start", err)
      assert.matches("event=listen_failed", err, 1, true)
      code, _, err = pauser("192.0.2.1:26359", nil, { STBOUNCER_FAILOVER_TOKEN = TOKEN })
      assert.equals(1, code)
      assert.matches("event=listen_failed", err, 1, true)
    end)
  end)

  describe("TLS", function()
    it("reaches etcd with a CA and a client certificate, and fails without the client certificate", function()
      local code, out = run(args({ "status", "--pauser-port", tostring(PAUSER_PORT), "--pauser-scheme", "https",
        "--pauser-ca-file", pki.ca, "--token-file", dir .. "/token" }, store_args()))
      assert.equals(0, code, out)
      assert.matches("master keeper0", out)
      local err
      code, out, err = run { "status", "--cluster-name", CLUSTER, "--store-endpoints", srv.endpoints[1],
        "--store-ca-file", pki.ca, "--metrics-port", "0", "--token-file", dir .. "/token" }
      assert.equals(1, code)
      assert.matches("clusterdata", out .. err)
    end)

    it("serves the pauser API over HTTPS that clients verify against the CA", function()
      -- without our CA (the system's bundle) the server certificate is unknown
      local r, err = http.request { url = ("https://%s:%d/health"):format(HOSTS[1], PAUSER_PORT),
        headers = { Authorization = TOKEN }, timeout = 3 }
      assert.is_nil(r, "an https request succeeded without the right CA")
      assert.is_truthy(err)
      -- plain http to the https listener gets no answer a client accepts
      r = http.request { url = ("http://%s:%d/health"):format(HOSTS[1], PAUSER_PORT),
        headers = { Authorization = TOKEN }, timeout = 3 }
      assert.is_true(r == nil or r.status ~= 200)
      local code, out = run(args({ "status", "--pauser-port", tostring(PAUSER_PORT), "--pauser-scheme", "https",
        "--token-file", dir .. "/token" }, store_args()))
      assert.equals(1, code)
      assert.matches("UNHEALTHY", out)
    end)
  end)

  describe("running commands", function()
    it("never involves a shell: with-lock passes ; and $(...) through as plain arguments", function()
      local marker = dir .. "/shell-ran"
      local code, out = run(args({ "with-lock" }, args(store_args(), { "--", "/bin/echo",
        "a; touch " .. marker, "$(touch " .. marker .. ")", "`touch " .. marker .. "`" })))
      assert.equals(0, code)
      assert.equals(("a; touch %s $(touch %s) `touch %s`\n"):format(marker, marker, marker), out)
      code = run(args({ "with-lock" }, args(store_args(), { "--", "true; touch " .. marker })))
      assert.equals(3, code)
      assert.is_nil(io.open(marker), "a shell ran")
    end)

    it("has no shell escape in the code: no os.execute, io.popen, system() or popen()", function()
      local code, out = proc.run { "grep", "-rnE", [[os\.execute|io\.popen]], "lua", "policies" }
      assert.equals(1, code, out)
      code, out = proc.run { "grep", "-rnE", [=[\<(system|popen|execl|execlp|execle)[[:space:]]*\(]=], "--include=*.c", "src" }
      assert.equals(1, code, out)
    end)
  end)

  it("never writes the token to our logs", function()
    for _, p in ipairs(pausers) do
      local _, _, out, err = p:stop()
      logs[#logs + 1] = (out or "") .. (err or "")
    end
    local all = table.concat(logs, "\n")
    assert.is_true(#all > 1000, "expected logs to check")
    assert.is_nil(all:find(TOKEN, 1, true), "the token appears in a log")
    assert.is_nil(all:find("wrong-presented-credential", 1, true), "a presented credential appears in a log")
  end)
end)
