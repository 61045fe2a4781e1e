std = "lua54"
max_line_length = 130
files["tests/lua"] = { std = "+busted" }
files["tests/lua/support"] = { std = "+busted" }
