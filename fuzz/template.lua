-- fuzz/template.lua: the context fuzz/template.c renders every input against: every
-- kind of value a template can meet (numbers at the edges, bytes, holes, cycles).
local c = {
  Host = 'db1', Port = 5432, F = 2.5, Tiny = 1e-300, Big = 1e300, Neg = -7,
  T = true, B = false, Z = 0, S = 'four', Empty = '', E = {},
  L = { 'a', 'b', 'c' }, N = { 1, 2.5, -3 }, M = { b = 2, a = 1, c = 3 },
  I = { [10] = 1, [9] = 2, [2] = 4 }, Holes = { [1] = 'a', [3] = 'c' },
  A = { B = { C = 'deep' } }, Nested = { { { 1 } } },
  Dbs = {
    { Name = 'app', Hosts = { 'h1', 'h2' }, Port = 6432,
      Pool = { Size = 20, Mode = 'transaction' } },
    { Name = 'x', Hosts = {}, Port = '5432' },
  },
  Master = { Host = '127.0.0.11', Port = '5432', Healthy = true },
  Bytes = 'a\0b\255"<>&', Pct = '%s%d%%',
}
c.Self = c
return c
