-- man.lua OUT [BIN]: write the stolon-pgbouncer(1) man page to OUT with help2man,
-- from one source: the program's own --help and --version, each command's
-- `COMMAND --help` (its flags, defaults and environment variables), and the prose
-- of man/stolon-pgbouncer.h2m. Run by `make man` inside our host.
local proc = require "proc"

local out, bin = arg[1], arg[2] or "./stolon-pgbouncer"
assert(out, "usage: stolon-pgbouncer run scripts/man.lua OUT [BIN]")

local commands = { "supervise", "pauser", "failover", "status", "with-lock" }

-- roff(text) -> text safe as roff body text: backslashes, hyphens, and a leading
-- control character taken literally.
local function roff(s)
  s = s:gsub("\\", "\\e"):gsub("%-", "\\-")
  if s:match("^[.']") then s = "\\&" .. s end
  return s
end

-- command_section(name, help) -> roff for one command: its usage line, its
-- description, each flag as a tagged paragraph.
local function command_section(name, help)
  local lines = { ('.SS "%s"'):format(name) }
  for line in help:gmatch("([^\n]*)\n") do
    local usage = line:match("^usage: (.*)$")
    local flag, text = line:match("^  (%-%-%S+)%s+(.*)$")
    if usage then
      lines[#lines + 1] = ".PP"
      lines[#lines + 1] = ".B " .. roff(usage)
    elseif flag then
      local fname, value = flag:match("^([^=]+)=(.*)$")
      lines[#lines + 1] = ".TP"
      if fname then
        lines[#lines + 1] = ("\\fB%s\\fR=\\fI%s\\fR"):format(roff(fname), roff(value))
      else
        lines[#lines + 1] = ("\\fB%s\\fR"):format(roff(flag))
      end
      lines[#lines + 1] = roff(text)
    elseif line == "Flags:" then
      lines[#lines + 1] = ".PP"
      lines[#lines + 1] = "Flags:"
    elseif line ~= "" then
      lines[#lines + 1] = ".PP"
      lines[#lines + 1] = roff(line)
    end
  end
  return table.concat(lines, "\n")
end

local function run(argv)
  argv.timeout = 30
  local code, stdout, stderr = proc.run(argv)
  if code ~= 0 then
    error(("%s: exit %s: %s"):format(table.concat(argv, " "), tostring(code), stderr or ""), 0)
  end
  return stdout
end

local parts = { "[COMMANDS]" }
for _, c in ipairs(commands) do
  parts[#parts + 1] = command_section(c, run { bin, c, "--help" })
end
parts[#parts + 1] = [[
.SS "run"
.PP
.B stolon\-pgbouncer run \fISCRIPT.lua\fR [\fIARGS\fR...]
.PP
Run a Lua script as the root task with every primitive available, its arguments in
\fBarg\fR and as \fB...\fR, like \fBlua\fR(1). Exits with the integer the script
returns, 1 with a traceback when it raises.
.SS "repl"
.PP
.B stolon\-pgbouncer repl
.PP
An interactive Lua prompt with every module loaded; each statement runs as a task.]]

local include = out .. ".commands.h2m"
local f = assert(io.open(include, "w"))
assert(f:write(table.concat(parts, "\n"), "\n"))
assert(f:close())
local version = run({ bin, "--version" }):match("^stolon%-pgbouncer (%S+)")
run { "help2man", "--no-info", "--section=1", "--source=stolon-pgbouncer " .. version,
  "--version-string=" .. version,
  "--include=" .. include, "--include=man/stolon-pgbouncer.h2m", "--output=" .. out, bin }
os.remove(include)
return 0
