-- pretty: render any Lua value as readable, nested, cycle-safe text (the REPL's
-- printer). Keys are sorted (numbers first, then strings), arrays print compactly.
local M = {}

local function is_ident(s)
  return type(s) == "string" and s:match("^[%a_][%w_]*$") ~= nil
end

local function key_order(a, b)
  local ta, tb = type(a), type(b)
  if ta ~= tb then
    if ta == "number" then return true end
    if tb == "number" then return false end
    return ta < tb
  end
  if ta == "number" or ta == "string" then return a < b end
  return tostring(a) < tostring(b)
end

-- cjson's null (a light userdata); every NULL light userdata compares equal to it.
local has_cjson, cjson = pcall(require, "cjson.safe")
local json_null = has_cjson and cjson.null or nil

local escapes = { ["\n"] = "\\n", ["\t"] = "\\t", ["\r"] = "\\r", ['"'] = '\\"', ["\\"] = "\\\\" }

-- A double-quoted Lua literal with the escapes people read (\n, \t), not %q's
-- backslash-newline and \9.
local function quote(s)
  return '"' .. s:gsub('[%c"\\]', function(c)
    return escapes[c] or ("\\%03d"):format(c:byte())
  end) .. '"'
end
M.quote = quote

local function scalar(v)
  if type(v) == "string" then return quote(v) end
  if json_null ~= nil and v == json_null then return "json.null" end
  return tostring(v)
end

local function render(v, indent, seen, out, depth, max_depth)
  if type(v) ~= "table" then
    out[#out + 1] = scalar(v)
    return
  end
  if seen[v] then
    out[#out + 1] = "<cycle " .. tostring(v) .. ">"
    return
  end
  if depth >= max_depth then
    out[#out + 1] = "{...}"
    return
  end
  seen[v] = true
  local keys, n = {}, #v
  for k in pairs(v) do
    if not (math.type(k) == "integer" and k >= 1 and k <= n) then keys[#keys + 1] = k end
  end
  table.sort(keys, key_order)
  if n == 0 and #keys == 0 then
    out[#out + 1] = "{}"
    seen[v] = nil
    return
  end
  local pad = string.rep("  ", indent + 1)
  out[#out + 1] = "{\n"
  for i = 1, n do
    out[#out + 1] = pad
    render(v[i], indent + 1, seen, out, depth + 1, max_depth)
    out[#out + 1] = ",\n"
  end
  for _, k in ipairs(keys) do
    out[#out + 1] = pad
    out[#out + 1] = is_ident(k) and k or ("[" .. scalar(k) .. "]")
    out[#out + 1] = " = "
    render(v[k], indent + 1, seen, out, depth + 1, max_depth)
    out[#out + 1] = ",\n"
  end
  out[#out + 1] = string.rep("  ", indent) .. "}"
  seen[v] = nil
end

-- format(value [, {max_depth=}]) -> string
function M.format(v, opts)
  local out = {}
  render(v, 0, {}, out, 0, (opts and opts.max_depth) or 20)
  return table.concat(out)
end

return M
