/*
 * fuzz/template.c: libFuzzer target for the template unit (src/template.h).
 *
 * Each input is template text: spgb_template_compile, then (when it compiles)
 * spgb_template_render twice against one fixed Lua context with nested tables,
 * arrays, maps with string and integer keys, strings, integers, floats,
 * booleans, an empty table and a cycle. Checked besides the sanitizers: the
 * error text is NUL-terminated and starts with the template's name, output is
 * NUL-terminated, rendering is deterministic, and the Lua stack is left as it
 * was. Uses: template, Lua 5.4 (a plain state: template needs no scheduler).
 */
#include <lauxlib.h>
#include <lualib.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "host.h"
#include "template.h"

#define MAX_RANGES 3

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static lua_State *L;
static int ctx_idx;

static void setup(void)
{
    L = luaL_newstate();
    if (!L)
        abort();
    luaL_openlibs(L);
    if (spgb_host_load(L, "fuzz/template.lua") != 1 || lua_pcall(L, 0, 1, 0) != LUA_OK) {
        fprintf(stderr, "fuzz_template: context: %s\n", lua_tostring(L, -1));
        abort();
    }
    ctx_idx = lua_gettop(L);
}

static void check_err(const char *err, size_t errlen, const char *what)
{
    if (!memchr(err, 0, errlen)) {
        fprintf(stderr, "fuzz_template: %s error not NUL-terminated\n", what);
        abort();
    }
    if (strncmp(err, "fuzz:", 5) != 0) {
        fprintf(stderr, "fuzz_template: %s error lacks the name: %s\n", what, err);
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!L)
        setup();
    /* Nested ranges multiply: n ranges over the 3-element lists run 3^n times and
     * the render is a timeout, not a finding (README: templates have no execution
     * budget). Allow a few. */
    int ranges = 0;
    for (const uint8_t *p = data; p + 5 <= data + size && ranges <= MAX_RANGES; p++)
        if (memcmp(p, "range", 5) == 0)
            ranges++;
    if (ranges > MAX_RANGES)
        return 0;
    char err[512];
    memset(err, 'x', sizeof err);
    spgb_template *t = spgb_template_compile("fuzz", (const char *)data, size, err, sizeof err);
    if (!t) {
        check_err(err, sizeof err, "compile");
        return 0;
    }
    if (strcmp(spgb_template_name(t), "fuzz") != 0)
        abort();
    int top = lua_gettop(L);
    char *out1 = NULL, *out2 = NULL;
    size_t len1 = 0, len2 = 0;
    int rc1 = spgb_template_render(t, L, ctx_idx, &out1, &len1, err, sizeof err);
    if (lua_gettop(L) != top) {
        fprintf(stderr, "fuzz_template: render changed the stack (%d -> %d)\n", top,
                lua_gettop(L));
        abort();
    }
    if (rc1 != 0) {
        if (out1)
            abort();
        check_err(err, sizeof err, "render");
    } else if (!out1 || out1[len1] != 0) {
        fprintf(stderr, "fuzz_template: output not NUL-terminated\n");
        abort();
    }
    /* Again, with the context at a negative index: same result. */
    lua_pushvalue(L, ctx_idx);
    int rc2 = spgb_template_render(t, L, -1, &out2, &len2, err, sizeof err);
    lua_pop(L, 1);
    if (rc1 != rc2 || len1 != len2 || (rc1 == 0 && memcmp(out1, out2, len1) != 0)) {
        fprintf(stderr, "fuzz_template: rendering is not deterministic (%d/%d, %zu/%zu)\n",
                rc1, rc2, len1, len2);
        abort();
    }
    free(out1);
    free(out2);
    spgb_template_free(t);
    return 0;
}
