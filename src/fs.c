/*
 * fs: atomic file write, whole-file read and the Lua module `fs` (see fs.h).
 *
 * The atomic write follows the usual recipe so that a reader (PgBouncer on RELOAD)
 * sees either the old or the new file, never a torn one, and so that a crash after
 * we report success cannot bring the old content back: temp file in the same
 * directory (rename is only atomic within a filesystem), fsync the data, rename,
 * fsync the directory (the rename itself).
 */
#include "fs.h"

#include <lauxlib.h>
#include <lua.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

static int fail(char *err, size_t errlen, const char *path, int e, const char *step)
{
    if (err && errlen) {
        if (step)
            snprintf(err, errlen, "%s: %s (%s)", path, strerror(e), step);
        else
            snprintf(err, errlen, "%s: %s", path, strerror(e));
    }
    return -1;
}

static ssize_t read_full(int fd, char *p, size_t n)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, p + got, n - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -1;
        if (r == 0)
            break;
        got += (size_t)r;
    }
    return (ssize_t)got;
}

static int write_full(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* 1: fd's content is exactly data; 0: it differs (or cannot be read). */
static int same_content(int fd, const struct stat *st, const char *data, size_t len)
{
    if (!S_ISREG(st->st_mode) || (size_t)st->st_size != len)
        return 0;
    char chunk[65536];
    size_t off = 0;
    for (;;) {
        ssize_t r = read_full(fd, chunk, sizeof chunk);
        if (r < 0)
            return 0;
        if (r == 0)
            return off == len;
        if ((size_t)r > len - off || memcmp(chunk, data + off, (size_t)r) != 0)
            return 0;
        off += (size_t)r;
    }
}

int spgb_fs_write_atomic(const char *path, const char *data, size_t len, int mode, bool *changed,
                         char *err, size_t errlen)
{
    if (changed)
        *changed = false;
    if (err && errlen)
        err[0] = '\0';
    if (mode > 07777)
        return fail(err, errlen, path, EINVAL, "mode");
    if (!data && len)
        return fail(err, errlen, path, EINVAL, "data");

    /* Existence, mode and owner come from stat: a file we may not read still exists
     * and keeps both. Its content can only be compared when we may read it. */
    struct stat st;
    bool exists = stat(path, &st) == 0 && S_ISREG(st.st_mode);
    int fd = exists ? open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK) : -1;
    if (fd >= 0) {
        struct stat fst;
        if (fstat(fd, &fst) == 0 && same_content(fd, &fst, data, len)) {
            int rc = 0;
            if (mode >= 0 && (fst.st_mode & 07777) != (mode_t)mode && fchmod(fd, (mode_t)mode))
                rc = fail(err, errlen, path, errno, "fchmod");
            close(fd);
            return rc;
        }
        close(fd);
    }
    mode_t m = mode >= 0 ? (mode_t)mode : exists ? (st.st_mode & 07777) : 0600;

    const char *slash = strrchr(path, '/');
    const char *base = slash ? slash + 1 : path;
    size_t dirlen = slash ? (size_t)(slash - path) : 0;
    if (*base == '\0')
        return fail(err, errlen, path, EISDIR, "path");
    size_t tlen = strlen(path) + 16;
    char *tmp = malloc(tlen);
    char *dir = malloc(dirlen + 2);
    if (!tmp || !dir) {
        free(tmp);
        free(dir);
        return fail(err, errlen, path, ENOMEM, "malloc");
    }
    if (slash) {
        memcpy(dir, path, dirlen);
        dir[dirlen] = '\0';
        if (dirlen == 0)
            strcpy(dir, "/");
        snprintf(tmp, tlen, "%.*s/.%s.tmp.XXXXXX", (int)dirlen, path, base);
    } else {
        strcpy(dir, ".");
        snprintf(tmp, tlen, ".%s.tmp.XXXXXX", base);
    }

    const char *step = "mkstemp";
    int e = 0;
    fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0) {
        e = errno;
        goto out;
    }
    /* Before fchmod, which chown would strip of set-id bits. Root must keep the owner
     * (PgBouncer, running as its own user, reads the file); anyone else may only give
     * a file to itself or to one of its groups, so there it is best effort. */
    step = "fchown";
    if (exists && fchown(fd, st.st_uid, st.st_gid) != 0 && geteuid() == 0)
        goto fail_tmp;
    step = "fchmod";
    if (fchmod(fd, m) != 0)
        goto fail_tmp;
    step = "write";
    if (write_full(fd, data, len) != 0)
        goto fail_tmp;
    step = "fsync";
    if (fsync(fd) != 0)
        goto fail_tmp;
    step = "close";
    int cfd = fd;
    fd = -1;
    if (close(cfd) != 0)
        goto fail_tmp;
    step = "rename";
    if (rename(tmp, path) != 0)
        goto fail_tmp;
    if (changed)
        *changed = true;

    step = "fsync directory";
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) {
        e = errno;
        goto out;
    }
    /* some filesystems cannot fsync a directory; the rename is then as durable as it gets */
    if (fsync(dfd) != 0 && errno != EINVAL && errno != ENOTSUP)
        e = errno;
    close(dfd);
    goto out;

fail_tmp:
    e = errno;
    if (fd >= 0)
        close(fd);
    unlink(tmp);
out:
    free(tmp);
    free(dir);
    if (e)
        return fail(err, errlen, path, e, step);
    return 0;
}

int spgb_fs_read(const char *path, char **out, size_t *len, char *err, size_t errlen)
{
    *out = NULL;
    if (len)
        *len = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return fail(err, errlen, path, errno, NULL);
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return fail(err, errlen, path, e, NULL);
    }
    if (S_ISDIR(st.st_mode)) {
        close(fd);
        return fail(err, errlen, path, EISDIR, NULL);
    }
    size_t cap = S_ISREG(st.st_mode) && st.st_size > 0 ? (size_t)st.st_size + 1 : 4096;
    size_t n = 0;
    char *p = malloc(cap);
    if (!p) {
        close(fd);
        return fail(err, errlen, path, ENOMEM, NULL);
    }
    for (;;) {
        if (cap - n < 2) {
            char *q = cap <= SIZE_MAX / 2 ? realloc(p, cap * 2) : NULL;
            if (!q) {
                free(p);
                close(fd);
                return fail(err, errlen, path, ENOMEM, NULL);
            }
            p = q;
            cap *= 2;
        }
        ssize_t r = read(fd, p + n, cap - n - 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int e = errno;
            free(p);
            close(fd);
            return fail(err, errlen, path, e, NULL);
        }
        if (r == 0)
            break;
        n += (size_t)r;
    }
    close(fd);
    p[n] = '\0';
    *out = p;
    if (len)
        *len = n;
    return 0;
}

/* ------------------------------------------------------------------ Lua module */

/* Optional mode argument: an integer (e.g. 420) or an octal string ("0644", "644"). */
static int opt_mode(lua_State *L, int idx, int def)
{
    if (lua_isnoneornil(L, idx))
        return def;
    lua_Integer m;
    if (lua_type(L, idx) == LUA_TSTRING) {
        const char *s = lua_tostring(L, idx);
        char *end;
        errno = 0;
        long v = strtol(s, &end, 8);
        if (*s == '\0' || *end != '\0' || errno)
            return luaL_argerror(L, idx, "mode must be an octal string like \"0644\"");
        m = v;
    } else {
        m = luaL_checkinteger(L, idx);
    }
    if (m < 0 || m > 07777)
        luaL_argerror(L, idx, "mode out of range (0..07777)");
    return (int)m;
}

static int push_fail(lua_State *L, const char *err)
{
    luaL_pushfail(L);
    lua_pushstring(L, err);
    return 2;
}

/*
 * fs.write_atomic(path, text [, mode]) -> changed | nil, err
 * Anywhere; does not yield (blocking I/O, small files). mode: integer or octal string;
 * default keeps the existing mode (0600 for a new file, whatever the umask); an
 * existing file keeps its owner. changed is false when the file already held text.
 * err: "path: <strerror> (<step>)".
 */
static int l_write_atomic(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    size_t len;
    const char *text = luaL_checklstring(L, 2, &len);
    int mode = opt_mode(L, 3, -1);
    char err[PATH_MAX + 128];
    bool changed;
    if (spgb_fs_write_atomic(path, text, len, mode, &changed, err, sizeof err) < 0)
        return push_fail(L, err);
    lua_pushboolean(L, changed);
    return 1;
}

static int push_read_k(lua_State *L)
{
    lua_pushlstring(L, lua_touserdata(L, 1), (size_t)lua_tointeger(L, 2));
    return 1;
}

/*
 * fs.read(path) -> text | nil, err
 * Anywhere; does not yield. err: "path: <strerror>".
 */
static int l_read(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    char err[PATH_MAX + 128];
    char *text;
    size_t len;
    if (spgb_fs_read(path, &text, &len, err, sizeof err) < 0)
        return push_fail(L, err);
    /* push under pcall so an allocation error cannot leak text */
    lua_pushcfunction(L, push_read_k);
    lua_pushlightuserdata(L, text);
    lua_pushinteger(L, (lua_Integer)len);
    int st = lua_pcall(L, 2, 1, 0);
    free(text);
    if (st != LUA_OK)
        return lua_error(L);
    return 1;
}

/* fs.exists(path) -> boolean. Anywhere; does not yield. Follows symlinks. */
static int l_exists(lua_State *L)
{
    struct stat st;
    lua_pushboolean(L, stat(luaL_checkstring(L, 1), &st) == 0);
    return 1;
}

/*
 * fs.mkdir_p(path [, mode]) -> true | nil, err
 * Anywhere; does not yield. Creates missing parents; mode (default 0755, umask
 * applies) is used for every directory created. An existing directory is success.
 */
static int l_mkdir_p(lua_State *L)
{
    size_t n;
    const char *path = luaL_checklstring(L, 1, &n);
    int mode = opt_mode(L, 2, 0755);
    char err[PATH_MAX + 128];
    if (n == 0)
        return fail(err, sizeof err, path, ENOENT, NULL), push_fail(L, err);
    char *p = malloc(n + 1);
    if (!p)
        return fail(err, sizeof err, path, ENOMEM, NULL), push_fail(L, err);
    memcpy(p, path, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (p[i] != '/' && p[i] != '\0')
            continue;
        char c = p[i];
        p[i] = '\0';
        struct stat st;
        if (mkdir(p, (mode_t)mode) != 0 && errno != EEXIST) {
            fail(err, sizeof err, p, errno, NULL);
            free(p);
            return push_fail(L, err);
        }
        if (stat(p, &st) != 0 || !S_ISDIR(st.st_mode)) {
            fail(err, sizeof err, p, ENOTDIR, NULL);
            free(p);
            return push_fail(L, err);
        }
        p[i] = c;
    }
    free(p);
    lua_pushboolean(L, 1);
    return 1;
}

/*
 * fs.remove(path) -> true | nil, err
 * Anywhere; does not yield. Removes a file or an empty directory.
 */
static int l_remove(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    char err[PATH_MAX + 128];
    if (remove(path) != 0)
        return fail(err, sizeof err, path, errno, NULL), push_fail(L, err);
    lua_pushboolean(L, 1);
    return 1;
}

/*
 * fs.tmpdir([prefix]) -> path | nil, err
 * Anywhere; does not yield. Creates a fresh directory "$TMPDIR/<prefix>.XXXXXX"
 * (/tmp without TMPDIR) with mode 0700; prefix defaults to "spgb" and may not
 * contain '/'. The caller removes it.
 */
static int l_tmpdir(lua_State *L)
{
    const char *prefix = luaL_optstring(L, 1, "spgb");
    if (strchr(prefix, '/'))
        return luaL_argerror(L, 1, "prefix may not contain '/'");
    const char *tmp = getenv("TMPDIR");
    if (!tmp || !*tmp)
        tmp = "/tmp";
    char path[PATH_MAX];
    char err[PATH_MAX + 128];
    int n = snprintf(path, sizeof path, "%s/%s.XXXXXX", tmp, prefix);
    if (n < 0 || (size_t)n >= sizeof path)
        return fail(err, sizeof err, tmp, ENAMETOOLONG, NULL), push_fail(L, err);
    if (!mkdtemp(path))
        return fail(err, sizeof err, path, errno, NULL), push_fail(L, err);
    lua_pushstring(L, path);
    return 1;
}

/* fs.isatty(fd) -> boolean: whether file descriptor fd (0, 1, 2) is a terminal.
 * Any context; does not yield. Policies use it to show live progress. */
static int l_isatty(lua_State *L)
{
    lua_Integer fd = luaL_checkinteger(L, 1);
    luaL_argcheck(L, fd >= 0 && fd <= 1024, 1, "not a file descriptor");
    lua_pushboolean(L, isatty((int)fd) == 1);
    return 1;
}

int luaopen_fs(lua_State *L)
{
    static const luaL_Reg funcs[] = {
        {"write_atomic", l_write_atomic},
        {"read", l_read},
        {"exists", l_exists},
        {"mkdir_p", l_mkdir_p},
        {"remove", l_remove},
        {"tmpdir", l_tmpdir},
        {"isatty", l_isatty},
        {NULL, NULL},
    };
    luaL_newlib(L, funcs);
    return 1;
}
