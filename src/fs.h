/*
 * fs: file helpers for rendered configuration files.
 *
 * Provides: an atomic write (temp file in the same directory, fsync, rename, fsync of
 * the directory) that reports whether the content changed, a whole-file read, and
 * the Lua module `fs` (write_atomic, read, exists, mkdir_p, remove, tmpdir).
 * Uses: POSIX only (and Lua 5.4 for the module).
 *
 * Errors are written as "path: <strerror>" (read) or "path: <strerror> (<step>)"
 * (write_atomic) into a caller buffer; nothing here raises or aborts.
 */
#ifndef SPGB_FS_H
#define SPGB_FS_H

#include <lua.h>
#include <stdbool.h>
#include <stddef.h>

/*
 * Atomically replace path with data (len bytes).
 * mode >= 0: the file gets exactly that mode (0..07777); mode < 0: keep the existing
 * file's mode, or 0600 for a new file (configs hold passwords); the umask never
 * applies. An existing file (seen with stat, so also one we may not read) keeps its
 * owner and group: as root a failure to keep them is an error (step "fchown"),
 * otherwise it is best effort.
 * If path already holds exactly data, the file is not rewritten (its inode and mtime
 * stay), only its mode is corrected if mode >= 0 differs, and *changed is false.
 * Otherwise, on success *changed is true. changed may be NULL.
 * Returns 0, or -1 with err = "path: <strerror> (<step>)". On failure before the
 * rename the temp file is removed and the old file is intact. If only the final
 * directory fsync fails, the new content is in place, *changed is true and -1 is
 * returned with step "fsync directory".
 */
int spgb_fs_write_atomic(const char *path, const char *data, size_t len, int mode, bool *changed,
                         char *err, size_t errlen);

/*
 * Read the whole file at path. On success returns 0, *out is malloc'd and
 * NUL-terminated (caller frees) and *len its length without the NUL. On error
 * returns -1, *out is NULL and err is "path: <strerror>".
 */
int spgb_fs_read(const char *path, char **out, size_t *len, char *err, size_t errlen);

/* Lua module `fs`. */
int luaopen_fs(lua_State *L);

#endif
