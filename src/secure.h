/*
 * secure: small security helpers for policies: constant-time comparison of
 * secrets (the pauser token) and random identifiers. Provides the Lua module
 * `secure`. Uses: Lua 5.4, getrandom(2).
 */
#ifndef SPGB_SECURE_H
#define SPGB_SECURE_H

#include <lua.h>
#include <stdbool.h>
#include <stddef.h>

/* Compare a and b in time that depends only on their lengths, never on where they
 * differ. */
bool spgb_secure_equal(const char *a, size_t alen, const char *b, size_t blen);

int luaopen_secure(lua_State *L);

#endif
