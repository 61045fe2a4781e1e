-- etcd primitive and httpc over TLS, with a CA and certificates made by openssl here.
local etcd = require "etcd"
local httpc = require "httpc"
local proc = require "proc"
local E = require "support.etcd"

local function sh(argv)
  local code, out, err = proc.run(argv)
  assert(code == 0, table.concat(argv, " ") .. ": " .. tostring(err or out))
end

local function write(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
end

-- A CA, a server certificate for IP 127.0.0.1 and a client certificate.
local function make_pki(dir)
  local ec = { "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes" }
  local function req(name, subj)
    local argv = { "openssl", "req" }
    for _, a in ipairs(ec) do argv[#argv + 1] = a end
    for _, a in ipairs { "-keyout", dir .. "/" .. name .. ".key", "-out", dir .. "/" .. name .. ".csr",
      "-subj", subj } do argv[#argv + 1] = a end
    sh(argv)
  end
  local function sign(name, ext)
    write(dir .. "/" .. name .. ".ext", ext)
    sh { "openssl", "x509", "-req", "-in", dir .. "/" .. name .. ".csr", "-CA", dir .. "/ca.crt",
      "-CAkey", dir .. "/ca.key", "-CAcreateserial", "-out", dir .. "/" .. name .. ".crt",
      "-days", "2", "-extfile", dir .. "/" .. name .. ".ext" }
  end
  local ca = { "openssl", "req", "-x509" }
  for _, a in ipairs(ec) do ca[#ca + 1] = a end
  for _, a in ipairs { "-keyout", dir .. "/ca.key", "-out", dir .. "/ca.crt", "-days", "2",
    "-subj", "/CN=spgb-test-ca" } do ca[#ca + 1] = a end
  sh(ca)
  req("server", "/CN=127.0.0.1")
  sign("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n")
  req("client", "/CN=spgb-client")
  sign("client", "extendedKeyUsage=clientAuth\n")
  -- a second, unrelated CA for the negative case
  local other = { "openssl", "req", "-x509" }
  for _, a in ipairs(ec) do other[#other + 1] = a end
  for _, a in ipairs { "-keyout", dir .. "/other.key", "-out", dir .. "/other.crt", "-days", "2",
    "-subj", "/CN=other-ca" } do other[#other + 1] = a end
  sh(other)
end

describe("etcd over TLS with client certificates", function()
  local dir, srv, pki

  setup(function()
    dir = E.tempdir()
    make_pki(dir)
    pki = { ca = dir .. "/ca.crt", cert = dir .. "/server.crt", key = dir .. "/server.key",
      client_cert = dir .. "/client.crt", client_key = dir .. "/client.key", client_cert_auth = true }
    srv = E.start { members = 1, tls = pki }
  end)

  teardown(function()
    if srv then srv:stop() end
    if dir then proc.run { "rm", "-rf", dir } end
  end)

  it("puts, gets and watches with a CA and a client certificate", function()
    local c = etcd.connect { endpoints = srv.endpoints, ca_file = pki.ca,
      cert_file = pki.client_cert, key_file = pki.client_key }
    local p = assert(c:put("tls/k", "v"))
    assert.equals("v", assert(c:get("tls/k")).kvs[1].value)
    local w <close> = c:watch("tls/k", { start_revision = p.revision })
    assert.equals("v", assert(w:next(5))[1].value)
    local h = assert(c:lock("tls/lock", { timeout = 5, ttl = 5 }))
    assert.is_true(h:unlock())
  end)

  it("accepts host:port endpoints (https implied by the TLS options)", function()
    local hostport = srv.endpoints[1]:gsub("^https://", "")
    local c = etcd.connect { endpoints = { hostport }, ca_file = pki.ca,
      cert_file = pki.client_cert, key_file = pki.client_key }
    assert(c:get("tls/k"))
  end)

  it("works with skip_tls_verify and no CA", function()
    local c = etcd.connect { endpoints = srv.endpoints, skip_tls_verify = true,
      cert_file = pki.client_cert, key_file = pki.client_key }
    assert(c:get("tls/k"))
  end)

  it("fails without a client certificate (the server requires one)", function()
    local c = etcd.connect { endpoints = srv.endpoints, ca_file = pki.ca, timeout = 3 }
    local r, err, code = c:get("tls/k")
    assert.is_nil(r)
    assert.is_string(err)
    assert.is_truthy(code == "tls" or code == "io", tostring(code) .. ": " .. err)
  end)

  it("refuses a server certificate from an unknown CA", function()
    local c = etcd.connect { endpoints = srv.endpoints, ca_file = dir .. "/other.crt",
      cert_file = pki.client_cert, key_file = pki.client_key, timeout = 3 }
    local r, err, code = c:get("tls/k")
    assert.is_nil(r)
    assert.equals("tls", code, err)
  end)

  it("serves httpc.request with the same TLS options", function()
    local r = assert(httpc.request { url = srv.endpoints[1] .. "/health", ca_file = pki.ca,
      cert_file = pki.client_cert, key_file = pki.client_key })
    assert.equals(200, r.status)
  end)
end)
