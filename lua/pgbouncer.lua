-- pgbouncer: PgBouncer's admin console over the pg module's async libpq
-- connections (simple query protocol only, as the console requires).
local pg = require "pg"

local M = {}
local Admin = {}
Admin.__index = Admin

-- PgBouncer 1.18's answers (SQLSTATE 08P01) that mean "already in that state".
local ALREADY_PAUSED = "already suspended/paused"
local NOT_PAUSED = "pooler is not paused/suspended"
local DB_NOT_PAUSED = "is not paused"

local function dbname(what, db)
  if type(db) ~= "string" or db == "" then
    error(("pgbouncer.%s: database name must be a non-empty string"):format(what), 3)
  end
  if db:match("^[%a_][%w_]*$") then return db end
  return pg.escape_identifier(db)
end

local function rename(err, what)
  return (tostring(err):gsub("^pg%.%w+:", "pgbouncer." .. what .. ":"))
end

function Admin:_connect()
  local c, err, code = pg.connect(self.conninfo, { timeout = self.timeout,
                                                   query_timeout = self.command_timeout })
  if not c then return nil, err, code end
  self.conn = c
  return c
end

-- Run one admin command (simple protocol only). The admin connection is reused;
-- a dropped one is reopened, and a command that failed because a reused connection
-- had dropped is sent once more on a fresh one. While another task uses the
-- connection a one-shot connection serves this call.
function Admin:_cmd(what, sql, timeout)
  if self.closed then error(("pgbouncer.%s: closed"):format(what), 3) end
  timeout = timeout or self.command_timeout
  local c = self.conn
  if c and c:status() == "busy" then
    local one, err, code = pg.connect(self.conninfo, { timeout = self.timeout })
    if not one then return nil, rename(err, what), code end
    local rows, qerr, qcode = one:query_opts{ sql = sql, timeout = timeout }
    one:close()
    if not rows then return nil, rename(qerr, what), qcode end
    return rows
  end
  for _ = 1, 2 do
    local fresh = false
    if not self.conn or self.conn:status() ~= "ok" then
      if self.conn then self.conn:close() end
      self.conn = nil
      local ok, err, code = self:_connect()
      if not ok then return nil, rename(err, what), code end
      fresh = true
    end
    local rows, err, code = self.conn:query_opts{ sql = sql, timeout = timeout }
    if rows then return rows end
    -- Retry only when a reused connection turned out to be gone (PgBouncer
    -- restarted, or dropped it); a timeout or a refusal is final.
    if fresh or code == "timeout" or self.conn:status() == "ok" then
      return nil, rename(err, what), code
    end
  end
end

-- After RESUME, check nothing is left paused. PgBouncer 1.18 has no SHOW STATE:
-- for one database read SHOW DATABASES' paused column; for the pooler a second
-- RESUME must answer "pooler is not paused/suspended" (it is harmless either way).
function Admin:_resume_verified(db)
  local ok, err = self:resume(db)
  if not ok then return nil, err end
  if db == nil then
    local rows, rerr, code = self:_cmd("resume", "RESUME")
    if rows then return nil, "pooler was still paused after RESUME" end
    if code == "08P01" and rerr:find(NOT_PAUSED, 1, true) then return true end
    return nil, rerr
  end
  local rows, serr = self:_cmd("resume", "SHOW DATABASES")
  if not rows then return nil, serr end
  for _, r in ipairs(rows) do
    if r.name == db and r.paused ~= "0" then return nil, db .. " still paused after RESUME" end
  end
  return true
end

function Admin:pause(db, opts)
  if type(db) == "table" then db, opts = nil, db end
  local timeout = opts and opts.timeout or self.pause_timeout
  local sql = db and "PAUSE " .. dbname("pause", db) or "PAUSE"
  local rows, err, code = self:_cmd("pause", sql, timeout)
  if rows then return true end
  if code == "08P01" and err:find(ALREADY_PAUSED, 1, true) then return true, "already paused" end
  if code ~= "timeout" then return nil, err, code end
  -- The query timeout has closed the connection that waited on PAUSE: PgBouncer
  -- forgets that waiter, so the RESUME below cannot leave it hanging (pgbouncer#715).
  local ok, rerr = self:_resume_verified(db)
  local msg = ("pgbouncer.pause: timeout after %gs waiting for %s to pause"):format(
    timeout, db or "all databases")
  if ok then
    msg = msg .. "; resumed"
  else
    msg = msg .. "; resuming failed: " .. tostring(rerr)
  end
  return nil, msg, "timeout"
end

function Admin:resume(db)
  local sql = db and "RESUME " .. dbname("resume", db) or "RESUME"
  local rows, err, code = self:_cmd("resume", sql)
  if rows then return true end
  if code == "08P01" and (err:find(NOT_PAUSED, 1, true)
      or (db and err:find(DB_NOT_PAUSED, 1, true))) then
    return true, "not paused"
  end
  return nil, err, code
end

local function simple(what, verb, needs_db)
  return function(self, db)
    local sql = verb
    if db ~= nil or needs_db then sql = verb .. " " .. dbname(what, db) end
    local rows, err, code = self:_cmd(what, sql)
    if not rows then return nil, err, code end
    return true
  end
end

Admin.reload = simple("reload", "RELOAD", false)
Admin.disable = simple("disable", "DISABLE", true)
Admin.enable = simple("enable", "ENABLE", true)
Admin.kill = simple("kill", "KILL", true)
Admin.reconnect = simple("reconnect", "RECONNECT", false)

function Admin:show(what)
  if type(what) ~= "string" or not what:match("^%a[%w_]*$") then
    error("pgbouncer.show: expected a SHOW subject such as \"pools\"", 2)
  end
  return self:_cmd("show", "SHOW " .. what:upper())
end

function Admin:command(sql)
  if type(sql) ~= "string" then error("pgbouncer.command: sql must be a string", 2) end
  return self:_cmd("command", sql)
end

function Admin:close()
  self.closed = true
  if self.conn then self.conn:close() end
  self.conn = nil
end
Admin.__close = Admin.close

function Admin:__tostring()
  local ci = self.conninfo
  return ("pgbouncer.admin: %s:%s"):format(ci.host, ci.port)
end

function M.connect(o)
  if type(o) ~= "table" then error("pgbouncer.connect: expected an options table", 2) end
  local host = o.socket_dir or o.host
  if type(host) ~= "string" then error("pgbouncer.connect: host or socket_dir is required", 2) end
  local self = setmetatable({
    conninfo = { host = host, port = o.port or 6432, user = o.user or "pgbouncer",
                 password = o.password, dbname = o.dbname or "pgbouncer",
                 fallback_application_name = "stolon-pgbouncer" },
    timeout = o.timeout or 5,
    command_timeout = o.command_timeout or 10,
    pause_timeout = o.pause_timeout or 30,
  }, Admin)
  -- lazy: connect at the first command (daemons start before their PgBouncer)
  if o.lazy then return self end
  local ok, err, code = self:_connect()
  if not ok then return nil, rename(err, "connect"), code end
  return self
end

return M
