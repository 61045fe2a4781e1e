/*
 * template: a Go text/template-compatible renderer for pgbouncer.ini templates.
 *
 * Provides: compiling template text (the subset described in docs/template.md:
 * fields, variables, if/else if/with/range, trim markers, comments, literals and the
 * functions not/and/or/eq/ne/lt/le/gt/ge/len/index/printf/print/println), rendering
 * it with a Lua value as dot, and the Lua module `template`.
 * Uses: Lua 5.4 (values are read with raw accesses only, never metamethods) and fs
 * (template.load reads the file with spgb_fs_read).
 *
 * Differs from Go on purpose: a missing map key is an error, never "<no value>";
 * printing nil or a table is an error. Errors read "NAME:LINE:COL: message".
 */
#ifndef SPGB_TEMPLATE_H
#define SPGB_TEMPLATE_H

#include <lua.h>
#include <stddef.h>

typedef struct spgb_template spgb_template;

/*
 * Compile text (len bytes, need not be NUL-terminated). name is copied and used as
 * the NAME in error messages. The template does not reference text afterwards.
 * Returns a template the caller frees with spgb_template_free, or NULL and writes
 * "name:line:col: msg" into err (errlen bytes, always NUL-terminated if errlen > 0).
 */
spgb_template *spgb_template_compile(const char *name, const char *text, size_t len, char *err,
                                     size_t errlen);

/*
 * Render t with the Lua value at ctx_idx of L as dot (and as $).
 * On success returns 0 and sets *out (malloc'd, NUL-terminated, caller frees) and
 * *outlen. On error returns -1, sets *out to NULL and writes "name:line:col: msg" into
 * err; no partial output is returned. Never raises a Lua error (runs under lua_pcall,
 * reads tables with lua_rawget/lua_rawgeti only) and leaves L's stack as it found it.
 * Does not yield. t is not modified: it may be rendered any number of times.
 */
int spgb_template_render(const spgb_template *t, lua_State *L, int ctx_idx, char **out,
                         size_t *outlen, char *err, size_t errlen);

/* Free t and everything it owns. NULL is a no-op. */
void spgb_template_free(spgb_template *t);

/* The template's name as given at compile. Owned by t. */
const char *spgb_template_name(const spgb_template *t);

/* Lua module `template`: compile, load; userdata "spgb.template" with :render. */
int luaopen_template(lua_State *L);

#endif
