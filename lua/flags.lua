-- flags: command-line flags shared by the commands, in the original tool's style:
-- --name value, --name=value, boolean --name / --no-name / --name=false, an
-- environment variable fallback per flag, defaults, Go durations, and --help.
--
-- spec = { {name="poll-interval", type="duration", default="1m", env="X", help="..."}, ... }
-- Types: string (default), bool, duration (seconds), int, number, list (comma separated).
-- Parsed options use underscores: opts.poll_interval.
local duration = require "duration"

local M = {}

local function convert(f, raw, origin)
  local t = f.type or "string"
  if t == "string" then return raw end
  if t == "bool" then
    if raw == true or raw == "true" or raw == "1" or raw == "yes" then return true end
    if raw == false or raw == "false" or raw == "0" or raw == "no" or raw == "" then return false end
    return nil, ("%s: expected true or false, got %q"):format(origin, tostring(raw))
  end
  if t == "duration" then
    local v, err = duration.parse(raw)
    if not v then return nil, ("%s: %s"):format(origin, err) end
    return v
  end
  if t == "int" or t == "number" then
    local v = tonumber(raw)
    if not v or (t == "int" and math.type(v) ~= "integer") then
      return nil, ("%s: expected %s, got %q"):format(origin, t == "int" and "an integer" or "a number", raw)
    end
    return v
  end
  if t == "list" then
    local out = {}
    for item in tostring(raw):gmatch("[^,]+") do
      out[#out + 1] = item:match("^%s*(.-)%s*$")
    end
    return out
  end
  error("flags: unknown type " .. t .. " for --" .. f.name)
end

local function key(name)
  return (name:gsub("-", "_"))
end

-- usage(spec, info) -> help text
function M.usage(spec, info)
  local lines = { ("usage: stolon-pgbouncer %s [flags]%s"):format(info.command, info.args or "") }
  if info.description then lines[#lines + 1] = "\n" .. info.description end
  lines[#lines + 1] = "\nFlags:"
  for _, f in ipairs(spec) do
    local left = "  --" .. f.name
    if (f.type or "string") ~= "bool" then left = left .. "=" .. (f.type or "string"):upper() end
    local extra = {}
    if f.default ~= nil and f.default ~= "" then extra[#extra + 1] = "default " .. tostring(f.default) end
    if f.env then extra[#extra + 1] = "env $" .. f.env end
    local help = f.help or ""
    if #extra > 0 then help = help .. " (" .. table.concat(extra, "; ") .. ")" end
    lines[#lines + 1] = ("%-44s %s"):format(left, help)
  end
  lines[#lines + 1] = ("%-44s %s"):format("  --policy=FILE", "run an edited copy of this command's Lua policy")
  lines[#lines + 1] = ("%-44s %s"):format("  --help", "show this help")
  return table.concat(lines, "\n") .. "\n"
end

-- parse(spec, argv [, info]) -> opts, rest | nil, err | "help"
-- rest holds positional arguments (and everything after "--").
-- info.interspersed=false stops at the first positional argument (with-lock CMD...).
function M.parse(spec, argv, info)
  info = info or {}
  local by_name, opts, set = {}, {}, {}
  for _, f in ipairs(spec) do by_name[f.name] = f end
  local rest, i = {}, 1
  while i <= #argv do
    local a = argv[i]
    if a == "--" then
      table.move(argv, i + 1, #argv, #rest + 1, rest)
      break
    elseif a == "--help" or a == "-h" then
      return "help"
    elseif a:sub(1, 2) == "--" then
      local name, value = a:match("^%-%-([^=]+)=(.*)$")
      name = name or a:sub(3)
      local f = by_name[name]
      local negated = false
      if not f and name:sub(1, 3) == "no-" and by_name[name:sub(4)] and by_name[name:sub(4)].type == "bool" then
        f, negated = by_name[name:sub(4)], true
      end
      if not f then return nil, ("unknown flag --%s"):format(name) end
      if f.type == "bool" then
        if value == nil then value = not negated end
      elseif value == nil then
        i = i + 1
        value = argv[i]
        if value == nil then return nil, ("flag --%s needs a value"):format(name) end
      end
      local v, err = convert(f, value, "--" .. f.name)
      if v == nil then return nil, err end
      opts[key(f.name)] = v
      set[f.name] = true
    else
      if info.interspersed == false then
        table.move(argv, i, #argv, #rest + 1, rest)
        break
      end
      rest[#rest + 1] = a
    end
    i = i + 1
  end
  for _, f in ipairs(spec) do
    if not set[f.name] then
      local raw, origin = nil, nil
      if f.env and os.getenv(f.env) and os.getenv(f.env) ~= "" then
        raw, origin = os.getenv(f.env), "$" .. f.env
      elseif f.default ~= nil then
        raw, origin = f.default, "default of --" .. f.name
      end
      if raw ~= nil then
        local v, err = convert(f, raw, origin)
        if v == nil then return nil, err end
        opts[key(f.name)] = v
      elseif f.type == "bool" then
        opts[key(f.name)] = false
      end
    end
  end
  return opts, rest
end

-- parse_or_exit(spec, argv, info) -> opts, rest. Prints help and exits 0 on --help;
-- prints the error and the usage and exits 2 on a bad flag.
function M.parse_or_exit(spec, argv, info)
  local opts, rest = M.parse(spec, argv, info)
  if opts == "help" then
    io.stdout:write(M.usage(spec, info))
    os.exit(0)
  elseif not opts then
    io.stderr:write(("stolon-pgbouncer %s: %s\n\n%s"):format(info.command, rest, M.usage(spec, info)))
    os.exit(2)
  end
  return opts, rest
end

return M
