#include "secure.h"

#include <lauxlib.h>
#include <stdint.h>
#include <sys/random.h>

bool spgb_secure_equal(const char *a, size_t alen, const char *b, size_t blen)
{
    /* Walk the longer length so the loop count does not depend on the shorter. */
    size_t n = alen > blen ? alen : blen;
    volatile uint8_t diff = (uint8_t)(alen != blen);
    for (size_t i = 0; i < n; i++) {
        uint8_t x = i < alen ? (uint8_t)a[i] : 0;
        uint8_t y = i < blen ? (uint8_t)b[i] : 0;
        diff |= (uint8_t)(x ^ y);
    }
    return diff == 0;
}

/* secure.equal(a, b) -> boolean. Any context; does not yield. Constant-time in the
 * content of the strings (for tokens). Raises on non-string arguments. */
static int l_equal(lua_State *L)
{
    size_t al, bl;
    const char *a = luaL_checklstring(L, 1, &al);
    const char *b = luaL_checklstring(L, 2, &bl);
    lua_pushboolean(L, spgb_secure_equal(a, al, b, bl));
    return 1;
}

/* secure.random_hex(bytes) -> string of 2*bytes hex digits from getrandom(2), or
 * nil, err. Any context; does not yield. 1 <= bytes <= 64. */
static int l_random_hex(lua_State *L)
{
    lua_Integer n = luaL_checkinteger(L, 1);
    luaL_argcheck(L, n >= 1 && n <= 64, 1, "between 1 and 64");
    uint8_t buf[64];
    size_t want = (size_t)n < sizeof buf ? (size_t)n : sizeof buf; /* checked above */
    ssize_t got = getrandom(buf, want, 0);
    if (got != n) {
        lua_pushnil(L);
        lua_pushliteral(L, "secure.random_hex: getrandom failed");
        return 2;
    }
    char hex[129];
    static const char digits[] = "0123456789abcdef";
    for (lua_Integer i = 0; i < n; i++) {
        hex[2 * i] = digits[buf[i] >> 4];
        hex[2 * i + 1] = digits[buf[i] & 15];
    }
    lua_pushlstring(L, hex, (size_t)(2 * n));
    return 1;
}

int luaopen_secure(lua_State *L)
{
    static const luaL_Reg fns[] = {{"equal", l_equal}, {"random_hex", l_random_hex}, {NULL, NULL}};
    luaL_newlib(L, fns);
    return 1;
}
