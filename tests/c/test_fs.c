/* Tests for src/fs.c: atomic write (new, replace, unchanged, mode, failure) and read. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <dirent.h>
#include <lauxlib.h>
#include <lualib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fs.h"

typedef struct fx {
    char dir[256];
    char path[300];
} fx;

static int setup(void **state)
{
    fx *f = calloc(1, sizeof *f);
    if (!f)
        return -1;
    snprintf(f->dir, sizeof f->dir, "/tmp/test_fs.XXXXXX");
    if (!mkdtemp(f->dir)) {
        free(f);
        return -1;
    }
    snprintf(f->path, sizeof f->path, "%s/pgbouncer.ini", f->dir);
    *state = f;
    return 0;
}

/* Entries in dir other than . and .. */
static int count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
            n++;
    closedir(d);
    return n;
}

static int teardown(void **state)
{
    fx *f = *state;
    DIR *d = opendir(f->dir);
    struct dirent *e;
    char p[600];
    while (d && (e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        snprintf(p, sizeof p, "%s/%s", f->dir, e->d_name);
        remove(p);
    }
    if (d)
        closedir(d);
    rmdir(f->dir);
    free(f);
    return 0;
}

static void assert_content(const char *path, const char *want)
{
    char err[256], *out;
    size_t n;
    assert_int_equal(spgb_fs_read(path, &out, &n, err, sizeof err), 0);
    assert_int_equal(n, strlen(want));
    assert_string_equal(out, want);
    free(out);
}

static void test_new_file(void **state)
{
    fx *f = *state;
    char err[512];
    bool changed = false;
    assert_int_equal(spgb_fs_write_atomic(f->path, "a=1\n", 4, -1, &changed, err, sizeof err), 0);
    assert_true(changed);
    assert_content(f->path, "a=1\n");
    struct stat st;
    assert_int_equal(stat(f->path, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0600); /* it may hold passwords */
    assert_int_equal(count_entries(f->dir), 1);

    /* whatever the umask */
    char p2[400];
    snprintf(p2, sizeof p2, "%s/other.ini", f->dir);
    mode_t old = umask(0);
    int rc = spgb_fs_write_atomic(p2, "b=2\n", 4, -1, NULL, err, sizeof err);
    umask(old);
    assert_int_equal(rc, 0);
    assert_int_equal(stat(p2, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0600);
}

/* An existing file keeps its mode and owner, even one we cannot read: existence is
 * seen with stat, not by opening it. As root the owner is another user's and the
 * unreadable part runs in a child that became that user (root reads anything). */
static void test_keeps_mode_and_owner(void **state)
{
    fx *f = *state;
    char err[512];
    bool root = geteuid() == 0;
    uid_t uid = root ? 65534 : geteuid();
    gid_t gid = root ? 65534 : getegid();
    assert_int_equal(spgb_fs_write_atomic(f->path, "a\n", 2, 0640, NULL, err, sizeof err), 0);
    if (root) {
        assert_int_equal(chown(f->path, uid, gid), 0);
        assert_int_equal(chown(f->dir, uid, gid), 0);
    }
    assert_int_equal(spgb_fs_write_atomic(f->path, "b\n", 2, -1, NULL, err, sizeof err), 0);
    struct stat st;
    assert_int_equal(stat(f->path, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0640);
    assert_int_equal(st.st_uid, uid);
    assert_int_equal(st.st_gid, gid);
    assert_content(f->path, "b\n");

    assert_int_equal(chmod(f->path, 0200), 0); /* write-only: open(O_RDONLY) fails */
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        if (root && (setgid(gid) != 0 || setuid(uid) != 0))
            _exit(10);
        if (spgb_fs_write_atomic(f->path, "c\n", 2, -1, NULL, err, sizeof err) != 0)
            _exit(11);
        _exit(stat(f->path, &st) != 0 ? 12 : (st.st_mode & 07777) != 0200 ? 13 : 0);
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    assert_int_equal(stat(f->path, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0200);
    assert_int_equal(st.st_uid, uid);
    assert_int_equal(chmod(f->path, 0600), 0);
    assert_content(f->path, "c\n");
}

static void test_replace_and_unchanged(void **state)
{
    fx *f = *state;
    char err[512];
    bool changed;
    assert_int_equal(spgb_fs_write_atomic(f->path, "old\n", 4, 0600, &changed, err, sizeof err), 0);
    struct stat st1, st2, st3;
    assert_int_equal(stat(f->path, &st1), 0);
    assert_int_equal(st1.st_mode & 07777, 0600);

    /* same content: nothing is written */
    assert_int_equal(spgb_fs_write_atomic(f->path, "old\n", 4, -1, &changed, err, sizeof err), 0);
    assert_false(changed);
    assert_int_equal(stat(f->path, &st2), 0);
    assert_int_equal(st2.st_ino, st1.st_ino);
    assert_int_equal(st2.st_mtim.tv_sec, st1.st_mtim.tv_sec);
    assert_int_equal(st2.st_mtim.tv_nsec, st1.st_mtim.tv_nsec);

    /* same content, other mode: mode fixed in place, still unchanged */
    assert_int_equal(spgb_fs_write_atomic(f->path, "old\n", 4, 0640, &changed, err, sizeof err), 0);
    assert_false(changed);
    assert_int_equal(stat(f->path, &st2), 0);
    assert_int_equal(st2.st_ino, st1.st_ino);
    assert_int_equal(st2.st_mode & 07777, 0640);

    /* new content: new inode, mode kept */
    assert_int_equal(spgb_fs_write_atomic(f->path, "new!\n", 5, -1, &changed, err, sizeof err), 0);
    assert_true(changed);
    assert_content(f->path, "new!\n");
    assert_int_equal(stat(f->path, &st3), 0);
    assert_true(st3.st_ino != st1.st_ino);
    assert_int_equal(st3.st_mode & 07777, 0640);

    /* same length, different bytes */
    assert_int_equal(spgb_fs_write_atomic(f->path, "new?\n", 5, -1, &changed, err, sizeof err), 0);
    assert_true(changed);
    assert_content(f->path, "new?\n");

    /* empty content, and changed may be NULL */
    assert_int_equal(spgb_fs_write_atomic(f->path, "", 0, 0644, NULL, err, sizeof err), 0);
    assert_content(f->path, "");
    assert_int_equal(count_entries(f->dir), 1);
}

static void test_large(void **state)
{
    fx *f = *state;
    char err[512];
    size_t n = 300000;
    char *big = malloc(n + 1);
    assert_non_null(big);
    for (size_t i = 0; i < n; i++)
        big[i] = (char)('a' + i % 26);
    big[n] = '\0';
    bool changed;
    assert_int_equal(spgb_fs_write_atomic(f->path, big, n, -1, &changed, err, sizeof err), 0);
    assert_true(changed);
    assert_int_equal(spgb_fs_write_atomic(f->path, big, n, -1, &changed, err, sizeof err), 0);
    assert_false(changed);
    big[n - 1] = '!';
    assert_int_equal(spgb_fs_write_atomic(f->path, big, n, -1, &changed, err, sizeof err), 0);
    assert_true(changed);
    assert_content(f->path, big);
    free(big);
}

static void test_missing_directory(void **state)
{
    fx *f = *state;
    char err[512], p[400];
    bool changed = true;
    snprintf(p, sizeof p, "%s/nodir/x.ini", f->dir);
    assert_int_equal(spgb_fs_write_atomic(p, "x", 1, -1, &changed, err, sizeof err), -1);
    assert_false(changed);
    char want[600];
    snprintf(want, sizeof want, "%s: No such file or directory (mkstemp)", p);
    assert_string_equal(err, want);
    assert_int_equal(count_entries(f->dir), 0);
}

static void test_failure_keeps_old_file(void **state)
{
    fx *f = *state;
    char err[512], p[400];
    bool changed;
    assert_int_equal(spgb_fs_write_atomic(f->path, "good\n", 5, -1, &changed, err, sizeof err), 0);
    /* a directory where the file should be: rename fails after the temp file exists */
    snprintf(p, sizeof p, "%s/adir", f->dir);
    assert_int_equal(mkdir(p, 0755), 0);
    char sub[500];
    snprintf(sub, sizeof sub, "%s/keep", p);
    assert_int_equal(spgb_fs_write_atomic(sub, "k", 1, -1, NULL, err, sizeof err), 0);
    changed = true;
    assert_int_equal(spgb_fs_write_atomic(p, "bad\n", 4, -1, &changed, err, sizeof err), -1);
    assert_false(changed);
    assert_non_null(strstr(err, "(rename)"));
    assert_int_equal(count_entries(f->dir), 2); /* pgbouncer.ini and adir, no temp file */
    assert_int_equal(count_entries(p), 1);
    remove(sub);

    /* parent is a regular file */
    snprintf(p, sizeof p, "%s/x.ini", f->path);
    assert_int_equal(spgb_fs_write_atomic(p, "bad\n", 4, -1, &changed, err, sizeof err), -1);
    char want[600];
    snprintf(want, sizeof want, "%s: Not a directory (mkstemp)", p);
    assert_string_equal(err, want);
    assert_content(f->path, "good\n");
    assert_int_equal(count_entries(f->dir), 2);
}

static void test_read_errors(void **state)
{
    fx *f = *state;
    char err[512], want[600], *out = (char *)"x";
    size_t n = 7;
    assert_int_equal(spgb_fs_read(f->path, &out, &n, err, sizeof err), -1);
    assert_null(out);
    snprintf(want, sizeof want, "%s: No such file or directory", f->path);
    assert_string_equal(err, want);
    assert_int_equal(spgb_fs_read(f->dir, &out, &n, err, sizeof err), -1);
    snprintf(want, sizeof want, "%s: Is a directory", f->dir);
    assert_string_equal(err, want);
}

static void test_relative_path(void **state)
{
    fx *f = *state;
    char err[512], cwd[1024];
    assert_non_null(getcwd(cwd, sizeof cwd));
    assert_int_equal(chdir(f->dir), 0);
    bool changed;
    int rc = spgb_fs_write_atomic("rel.ini", "r", 1, -1, &changed, err, sizeof err);
    assert_int_equal(chdir(cwd), 0);
    assert_int_equal(rc, 0);
    assert_true(changed);
    char p[400];
    snprintf(p, sizeof p, "%s/rel.ini", f->dir);
    assert_content(p, "r");
}

static void test_lua_module(void **state)
{
    fx *f = *state;
    lua_State *L = luaL_newstate();
    assert_non_null(L);
    luaL_openlibs(L);
    luaL_requiref(L, "fs", luaopen_fs, 0);
    lua_pop(L, 1);
    lua_pushstring(L, f->dir);
    lua_setglobal(L, "DIR");
    const char *script = "local fs = require 'fs'\n"
                         "local p = DIR .. '/a.ini'\n"
                         "assert(fs.exists(p) == false)\n"
                         "assert(fs.write_atomic(p, 'x=1\\n') == true)\n"
                         "assert(fs.write_atomic(p, 'x=1\\n') == false)\n"
                         "assert(fs.write_atomic(p, 'x=2\\n', '0600') == true)\n"
                         "assert(fs.read(p) == 'x=2\\n')\n"
                         "assert(fs.exists(p))\n"
                         "local ok, err = fs.write_atomic(DIR .. '/no/b.ini', 'x')\n"
                         "assert(ok == nil and err == DIR .. '/no/b.ini: No such file or directory "
                         "(mkstemp)', err)\n"
                         "local t, rerr = fs.read(DIR .. '/none')\n"
                         "assert(t == nil and rerr == DIR .. '/none: No such file or directory')\n"
                         "assert(not pcall(fs.write_atomic, p, 'x', 99999))\n"
                         "assert(not pcall(fs.write_atomic, p, 'x', '9z'))\n"
                         "assert(not pcall(fs.write_atomic, p))\n"
                         "assert(fs.mkdir_p(DIR .. '/d1/d2/d3'))\n"
                         "assert(fs.mkdir_p(DIR .. '/d1/d2/d3/'))\n"
                         "local m, merr = fs.mkdir_p(p .. '/sub')\n"
                         "assert(m == nil and merr:find('Not a directory'), merr)\n"
                         "assert(fs.remove(DIR .. '/d1/d2/d3'))\n"
                         "assert(fs.remove(DIR .. '/d1/d2'))\n"
                         "assert(fs.remove(DIR .. '/d1'))\n"
                         "local r, rmerr = fs.remove(DIR .. '/d1')\n"
                         "assert(r == nil and rmerr:find('No such file'), rmerr)\n"
                         "assert(fs.remove(p))\n"
                         "local td = assert(fs.tmpdir('spgbtest'))\n"
                         "assert(td:find('/spgbtest%.'), td)\n"
                         "assert(fs.exists(td))\n"
                         "assert(fs.remove(td))\n"
                         "assert(not pcall(fs.tmpdir, 'a/b'))\n";
    if (luaL_dostring(L, script) != LUA_OK)
        fail_msg("%s", lua_tostring(L, -1));
    lua_close(L);
    assert_int_equal(count_entries(f->dir), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_new_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_keeps_mode_and_owner, setup, teardown),
        cmocka_unit_test_setup_teardown(test_replace_and_unchanged, setup, teardown),
        cmocka_unit_test_setup_teardown(test_large, setup, teardown),
        cmocka_unit_test_setup_teardown(test_missing_directory, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failure_keeps_old_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_read_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_relative_path, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lua_module, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
