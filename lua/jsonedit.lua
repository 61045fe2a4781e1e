-- jsonedit: change one member of a JSON document and keep every other byte as it
-- was. Stolon's clusterdata must be written back exactly as stolon wrote it (key
-- order, null vs [], absent zero values), which decoding and re-encoding would not
-- preserve; the failover only ever changes one field at a time.
local cjson = require "cjson.safe"

local M = {}

local function ws(s, i)
  return s:find("[^ \t\r\n]", i) or #s + 1
end

local function skip_string(s, i)
  local j = i + 1
  while true do
    local c = s:find('["\\]', j)
    if not c then return nil end
    if s:sub(c, c) == '"' then return c + 1 end
    j = c + 2
  end
end

local skip_value

local function skip_members(s, i, close, keyed)
  i = ws(s, i + 1)
  if s:sub(i, i) == close then return i + 1 end
  while true do
    i = ws(s, i)
    if keyed then
      if s:sub(i, i) ~= '"' then return nil end
      i = skip_string(s, i)
      if not i then return nil end
      i = ws(s, i)
      if s:sub(i, i) ~= ":" then return nil end
      i = i + 1
    end
    i = skip_value(s, i)
    if not i then return nil end
    i = ws(s, i)
    local d = s:sub(i, i)
    if d == close then return i + 1 end
    if d ~= "," then return nil end
    i = i + 1
  end
end

-- index just after the value starting at (or after whitespace from) i, or nil
function skip_value(s, i)
  i = ws(s, i)
  local c = s:sub(i, i)
  if c == '"' then return skip_string(s, i) end
  if c == "{" then return skip_members(s, i, "}", true) end
  if c == "[" then return skip_members(s, i, "]", false) end
  local j = s:find("[,%]} \t\r\n]", i) or #s + 1
  if j == i then return nil end
  return j
end

-- Find key in the object starting at i. Returns value_start, value_end (inclusive),
-- or nil, insert_at (just after the last member, or after "{"), empty.
local function find_member(s, i, key)
  local p = ws(s, i + 1)
  if s:sub(p, p) == "}" then return nil, i + 1, true end
  local last_end
  while true do
    if s:sub(p, p) ~= '"' then return nil, nil end
    local ke = skip_string(s, p)
    if not ke then return nil, nil end
    local k = cjson.decode(s:sub(p, ke - 1))
    local colon = ws(s, ke)
    if s:sub(colon, colon) ~= ":" then return nil, nil end
    local vs = ws(s, colon + 1)
    local ve = skip_value(s, vs)
    if not ve then return nil, nil end
    if k == key then return vs, ve - 1 end
    last_end = ve
    p = ws(s, ve)
    local d = s:sub(p, p)
    if d == "}" then return nil, last_end, false end
    if d ~= "," then return nil, nil end
    p = ws(s, p + 1)
  end
end

local function where(path, n)
  return table.concat(path, ".", 1, n)
end

-- get(text, path) -> raw JSON text of the value at path (a list of keys), or nil, err
function M.get(s, path)
  local i = ws(s, 1)
  for depth, key in ipairs(path) do
    if s:sub(i, i) ~= "{" then return nil, ("%s is not an object"):format(where(path, depth - 1)) end
    local vs, ve = find_member(s, i, key)
    if not vs then
      if ve == nil and vs == nil then return nil, ("malformed JSON near %s"):format(where(path, depth)) end
      return nil, ("no member %s"):format(where(path, depth))
    end
    if depth == #path then return s:sub(vs, ve) end
    i = vs
  end
  return s
end

-- set(text, path, json_value) -> new text | nil, err. Replaces the value at path, or
-- adds the member at the end of its object when absent (the parent must exist).
-- json_value is raw JSON text, e.g. '"1s"' or 'true'.
function M.set(s, path, value)
  if cjson.decode(value) == nil and value ~= "null" then
    return nil, ("invalid JSON value %q"):format(value)
  end
  local i = ws(s, 1)
  for depth, key in ipairs(path) do
    if s:sub(i, i) ~= "{" then return nil, ("%s is not an object"):format(where(path, depth - 1)) end
    local vs, ve, empty = find_member(s, i, key)
    if not vs then
      if ve == nil then return nil, ("malformed JSON near %s"):format(where(path, depth)) end
      if depth < #path then return nil, ("no member %s"):format(where(path, depth)) end
      local member = (empty and "" or ",") .. cjson.encode(key) .. ":" .. value
      return s:sub(1, ve - 1) .. member .. s:sub(ve)
    end
    if depth == #path then return s:sub(1, vs - 1) .. value .. s:sub(ve + 1) end
    i = vs
  end
  return nil, "empty path"
end

-- string(v) -> JSON text of a Lua string
function M.string(v)
  return cjson.encode(tostring(v))
end

return M
