-- metrics: the Prometheus registry. The C core (src/metrics.c, `metrics.core`) holds
-- the metrics and renders the text format: metrics.gauge/counter/histogram(name,
-- help [, labels]) -> metric (m:set/inc/dec/observe/get), metrics.expose() -> text.
-- This half adds the HTTP side: metrics.handler(req) -> 200, text, headers (an
-- http.serve handler for /metrics) and metrics.content_type. None of them yields.
local M = require "metrics.core"

local CT = 'text/plain; version=0.0.4; charset=utf-8'
-- handler(req) -> 200, the exposition, its content type (any request).
function M.handler(_req)
  return 200, M.expose(), { ['content-type'] = CT }
end
M.content_type = CT
return M
