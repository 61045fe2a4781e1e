-- log: logfmt lines on stderr. The C core (src/log.c, `log.core`) writes them:
-- log.debug/info/warn/error(fields | msg [, fields]), log.set_level(name), log.level().
-- This half adds log.with(fields) -> a logger whose every line carries fields
-- (e.g. {component = "supervise"}). Any context; none of them yields.
local M = require "log.core"

-- with(base) -> {debug=, info=, warn=, error=}: each merges base under its own fields.
function M.with(base)
  local L = {}
  for _, lv in ipairs { 'debug', 'info', 'warn', 'error' } do
    L[lv] = function(a, b)
      local f = {}
      for k, v in pairs(base) do f[k] = v end
      if type(a) == 'table' then for k, v in pairs(a) do f[k] = v end
      else f.msg = a; for k, v in pairs(b or {}) do f[k] = v end end
      return M[lv](f)
    end
  end
  return L
end
return M
