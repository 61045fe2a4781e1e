-- duration: Go's time.ParseDuration syntax ("300ms", "5s", "1m30s", "1h", "-1.5h")
-- to seconds, and seconds back to Go's String() form.
local M = {}

local units = {
  ns = 1e-9, us = 1e-6, ["µs"] = 1e-6, ["μs"] = 1e-6, ms = 1e-3, s = 1, m = 60, h = 3600,
}

local MAX_SECONDS = 9223372036.854775807

-- parse(text) -> seconds | nil, err
function M.parse(text)
  if type(text) == "number" then return text end
  if type(text) ~= "string" or text == "" then
    return nil, ("invalid duration %q"):format(tostring(text))
  end
  local s, sign = text, 1
  local first = s:sub(1, 1)
  if first == "-" or first == "+" then
    sign = first == "-" and -1 or 1
    s = s:sub(2)
  end
  if s == "0" then return 0 end
  if s == "" then return nil, ("invalid duration %q"):format(text) end
  local total, pos = 0, 1
  while pos <= #s do
    local num, unit, nxt = s:match("^(%d*%.?%d*)([^%d%.]+)()", pos)
    if not num or num == "" or num == "." then
      return nil, ("invalid duration %q"):format(text)
    end
    -- the unit runs until the next digit
    local f = units[unit]
    if not f then
      return nil, ("unknown unit %q in duration %q"):format(unit, text)
    end
    local n = tonumber(num)
    -- Go's limit, an int64 of nanoseconds (about 292 years). Checked in floats:
    -- integer arithmetic would wrap ("5124095576030432h" would be 3584 s).
    if total + n * 1.0 * f > MAX_SECONDS then
      return nil, ("invalid duration %q (overflow)"):format(text)
    end
    total = total + n * f
    pos = nxt
  end
  return sign * total
end

-- format(seconds) -> Go-style string ("1s", "1m30s", "250ms", "0s")
function M.format(secs)
  if secs == 0 then return "0s" end
  -- beyond what parse accepts (direct callers only): no h/m/s split
  if secs ~= secs or math.abs(secs) >= 2 ^ 53 then return ("%.0fs"):format(secs) end
  local neg = secs < 0
  if neg then secs = -secs end
  local out
  if secs < 1 then
    local ms = secs * 1000
    if ms >= 1 then
      out = (("%.3f"):format(ms):gsub("%.?0+$", "")) .. "ms"
    else
      out = (("%.3f"):format(ms * 1000):gsub("%.?0+$", "")) .. "µs"
    end
  else
    local h = math.floor(secs / 3600)
    local m = math.floor((secs - h * 3600) / 60)
    local s = secs - h * 3600 - m * 60
    local sec = (("%.9f"):format(s):gsub("%.?0+$", ""))
    if sec == "" then sec = "0" end
    if h > 0 then
      out = ("%dh%dm%ss"):format(h, m, sec)
    elseif m > 0 then
      out = ("%dm%ss"):format(m, sec)
    else
      out = sec .. "s"
    end
  end
  return (neg and "-" or "") .. out
end

return M
