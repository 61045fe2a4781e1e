/* Tests for src/template.c: the Go text/template subset, its errors and the Lua module. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "template.h"

static int setup(void **state)
{
    lua_State *L = luaL_newstate();
    if (!L)
        return -1;
    luaL_openlibs(L);
    *state = L;
    return 0;
}

static int teardown(void **state)
{
    lua_State *L = *state;
    assert_int_equal(lua_gettop(L), 0);
    lua_close(L);
    return 0;
}

/* Push the value of the Lua expression ctx. */
static void push_ctx(lua_State *L, const char *ctx)
{
    char chunk[4096];
    snprintf(chunk, sizeof chunk, "return %s", ctx ? ctx : "nil");
    if (luaL_dostring(L, chunk) != LUA_OK)
        fail_msg("bad ctx %s: %s", ctx, lua_tostring(L, -1));
    assert_int_equal(lua_gettop(L), 1);
}

/* Render src with ctx; returns 0 and *out, or -1 and err. Asserts the stack is kept. */
static int render(lua_State *L, const char *src, const char *ctx, char **out, char *err,
                  size_t errlen)
{
    spgb_template *t = spgb_template_compile("t.ini", src, strlen(src), err, errlen);
    if (!t)
        fail_msg("compile %s: %s", src, err);
    push_ctx(L, ctx);
    size_t n = 12345;
    int rc = spgb_template_render(t, L, -1, out, &n, err, errlen);
    assert_int_equal(lua_gettop(L), 1);
    lua_pop(L, 1);
    if (rc == 0) {
        assert_non_null(*out);
        assert_int_equal(strlen(*out), n);
    } else {
        assert_null(*out);
        assert_int_equal(n, 0);
    }
    spgb_template_free(t);
    return rc;
}

static void ok_(lua_State *L, const char *src, const char *ctx, const char *want, int line)
{
    char err[512], *out = NULL;
    if (render(L, src, ctx, &out, err, sizeof err) != 0)
        fail_msg("line %d: render %s: %s", line, src, err);
    if (strcmp(out, want) != 0)
        fail_msg("line %d: %s\n got: [%s]\nwant: [%s]", line, src, out, want);
    free(out);
}

static void render_err_(lua_State *L, const char *src, const char *ctx, const char *want, int line)
{
    char err[512], *out = NULL;
    if (render(L, src, ctx, &out, err, sizeof err) == 0)
        fail_msg("line %d: %s rendered [%s], want error %s", line, src, out, want);
    if (strcmp(err, want) != 0)
        fail_msg("line %d: %s\n got: %s\nwant: %s", line, src, err, want);
}

static void compile_err_(const char *src, const char *want, int line)
{
    char err[512] = "untouched";
    spgb_template *t = spgb_template_compile("t.ini", src, strlen(src), err, sizeof err);
    if (t) {
        spgb_template_free(t);
        fail_msg("line %d: %s compiled, want error %s", line, src, want);
    }
    if (strcmp(err, want) != 0)
        fail_msg("line %d: %s\n got: %s\nwant: %s", line, src, err, want);
}

#define OK(src, ctx, want) ok_(L, src, ctx, want, __LINE__)
#define RERR(src, ctx, want) render_err_(L, src, ctx, want, __LINE__)
#define CERR(src, want) compile_err_(src, want, __LINE__)

static void test_text_and_fields(void **state)
{
    lua_State *L = *state;
    OK("", "{}", "");
    OK("plain text\n", "{}", "plain text\n");
    OK("{{.}}", "'dot'", "dot");
    OK("{{.Host}}", "{Host='db1'}", "db1");
    OK("{{ .Host }}", "{Host='db1'}", "db1");
    OK("{{.A.B.C}}", "{A={B={C='deep'}}}", "deep");
    OK("{{$}}", "42", "42");
    OK("{{$.A.B}}", "{A={B=1}}", "1");
    OK("a{{.X}}b{{.Y}}c", "{X=1, Y=2}", "a1b2c");
    OK("{ {.X} } }}", "{}", "{ {.X} } }}");
}

static void test_output_formatting(void **state)
{
    lua_State *L = *state;
    OK("{{.I}} {{.F}} {{.G}} {{.N}}", "{I=5432, F=2.0, G=2.5, N=-7}", "5432 2 2.5 -7");
    OK("{{.F}}", "{F=0.1}", "0.1");
    OK("{{.F}}", "{F=1/3}", "0.3333333333333333");
    OK("{{.F}}", "{F=1e300}", "1e+300");
    OK("{{.T}} {{.B}}", "{T=true, B=false}", "true false");
    OK("{{3.25}} {{1e3}} {{0x1F}} {{-3}} {{+4}} {{1_000}} {{0o17}} {{0b101}}", "{}",
       "3.25 1000 31 -3 4 1000 15 5");
    OK("{{\"a\\tb\\n\\\"q\\\"\\\\\"}}", "{}", "a\tb\n\"q\"\\");
    OK("{{\"\\x41\\u00e9\\101\"}}", "{}",
       "A\xc3\xa9"
       "A");
    OK("{{`raw\\n{{`}}", "{}", "raw\\n{{");
    OK("{{\"}}\"}}", "{}", "}}");
    OK("{{true}} {{false}}", "{}", "true false");
}

static void test_trim_markers(void **state)
{
    lua_State *L = *state;
    OK("a  {{- .X -}}  b", "{X='x'}", "axb");
    OK("a \n\t {{- .X}} b", "{X='x'}", "ax b");
    OK("a {{.X -}} \n\n b", "{X='x'}", "a xb");
    /* no space after the dash: a negative number, no trimming */
    OK("a {{-3}} b", "{}", "a -3 b");
    OK("a {{- 3}} b", "{}", "a3 b");
    OK("[\n{{- range .L}}\n  {{.}}\n{{- end}}\n]", "{L={1,2}}", "[\n  1\n  2\n]");
    OK("x\n{{- if true -}}\n  y  \n{{- end -}}\nz", "{}", "xyz");
}

static void test_comments(void **state)
{
    lua_State *L = *state;
    OK("a{{/* comment */}}b", "{}", "ab");
    OK("a{{/* multi\nline {{ }} */}}b", "{}", "ab");
    OK("a \n {{- /* trimmed */ -}} \n b", "{}", "ab");
    OK("a {{- /* left only */}} b", "{}", "a b");
}

static void test_if(void **state)
{
    lua_State *L = *state;
    OK("{{if .X}}yes{{end}}", "{X=true}", "yes");
    OK("{{if .X}}yes{{end}}", "{X=false}", "");
    OK("{{if .X}}yes{{else}}no{{end}}", "{X=0}", "no");
    OK("{{if .X}}yes{{else}}no{{end}}", "{X=0.0}", "no");
    OK("{{if .X}}yes{{else}}no{{end}}", "{X=''}", "no");
    OK("{{if .X}}yes{{else}}no{{end}}", "{X={}}", "no");
    OK("{{if .X}}yes{{else}}no{{end}}", "{X={1}}", "yes");
    OK("{{if .X}}yes{{else}}no{{end}}", "{X='0'}", "yes");
    OK("{{if .X}}yes{{else}}no{{end}}", "{X=-1}", "yes");
    OK("{{if .A}}a{{else if .B}}b{{else if .C}}c{{else}}d{{end}}", "{A=false,B=false,C=1}", "c");
    OK("{{if .A}}a{{else if .B}}b{{else}}d{{end}}", "{A=false,B=false}", "d");
    OK("{{if $x := .A}}{{$x}}{{else}}none{{$x}}{{end}}", "{A=0}", "none0");
    OK("{{if index . \"Opt\"}}set{{else}}unset{{end}}", "{}", "unset");
}

static void test_with(void **state)
{
    lua_State *L = *state;
    OK("{{with .A}}{{.B}}{{end}}", "{A={B='b'}}", "b");
    OK("{{with .A}}{{.B}}{{else}}none{{end}}", "{A=false}", "none");
    OK("{{with .A}}{{.}}{{else}}{{.Z}}{{end}}", "{A='', Z='z'}", "z");
    OK("{{with .A}}{{$.Top}}/{{.B}}{{end}}", "{A={B='b'}, Top='T'}", "T/b");
    OK("{{with $v := .A}}{{$v.B}}{{.B}}{{end}}", "{A={B='b'}}", "bb");
    OK("{{with .A}}a{{else with .B}}{{.}}{{else}}c{{end}}", "{A=false, B='bee'}", "bee");
}

static void test_range(void **state)
{
    lua_State *L = *state;
    OK("{{range .L}}[{{.}}]{{end}}", "{L={'a','b','c'}}", "[a][b][c]");
    OK("{{range .L}}[{{.}}]{{else}}empty{{end}}", "{L={}}", "empty");
    OK("{{range $i, $v := .L}}{{$i}}={{$v}} {{end}}", "{L={'a','b'}}", "0=a 1=b ");
    OK("{{range $v := .L}}{{$v}}{{.}}{{end}}", "{L={1,2}}", "1122");
    OK("{{range $k, $v := .M}}{{$k}}={{$v}};{{end}}", "{M={b=2, a=1, c=3}}", "a=1;b=2;c=3;");
    OK("{{range .M}}{{.}}{{end}}", "{M={z='1', y='2', x='3'}}", "321");
    OK("{{range $k, $v := .M}}{{$k}}{{end}}", "{M={[10]=1, [9]=2, [100]=3, [2]=4}}",
       "2910100" /* numeric keys (not 1..n) sort numerically */);
    OK("{{range $k, $v := .M}}{{$k}},{{end}}", "{M={[1]='a', [3]='c'}}", "1,3,");
    OK("{{range .L}}{{.Name}}:{{.Port}} {{end}}", "{L={{Name='a', Port=1}, {Name='b', Port=2}}}",
       "a:1 b:2 ");
    OK("{{range .L}}{{$.Sep}}{{.}}{{end}}", "{L={1,2}, Sep='-'}", "-1-2");
    OK("{{range (index . \"Missing\")}}x{{else}}none{{end}}", "{}", "none");
}

/* A qsort that moves the elements themselves while it compares them (glibc sorts large
 * elements through an array of pointers, so an element that points into its own slot
 * looks right there by accident). Replaces libc's for this test program. */
void qsort(void *base, size_t n, size_t size, int (*cmp)(const void *, const void *))
{
    char *a = base, tmp[256];
    assert_true(size <= sizeof tmp);
    for (size_t i = 1; i < n; i++)
        for (size_t j = i; j > 0 && cmp(a + (j - 1) * size, a + j * size) > 0; j--) {
            memcpy(tmp, a + j * size, size);
            memcpy(a + j * size, a + (j - 1) * size, size);
            memcpy(a + (j - 1) * size, tmp, size);
        }
}

/* Keys of mixed types sort as strings; number keys' text must follow them as they move. */
static void test_range_mixed_keys(void **state)
{
    lua_State *L = *state;
    OK("{{range $k, $v := .}}{{$k}},{{end}}", "{[9]=1, b=2, [10]=3, a=4, [100]=5, [2.5]=6, [3]=7}",
       "10,100,2.5,3,9,a,b,");
}

static void test_nesting(void **state)
{
    lua_State *L = *state;
    OK("{{range $db := .Dbs}}{{range $db.Hosts}}{{if eq . $.Skip}}-{{else}}{{$db.Name}}@{{.}} "
       "{{end}}{{end}}{{end}}",
       "{Dbs={{Name='a', Hosts={'h1','h2'}}, {Name='b', Hosts={'h3'}}}, Skip='h2'}", "a@h1 -b@h3 ");
    OK("{{with .A}}{{range .L}}{{with .X}}{{.}}{{else}}?{{end}}{{end}}{{end}}",
       "{A={L={{X=1},{X=false},{X=3}}}}", "1?3");
}

static void test_variables(void **state)
{
    lua_State *L = *state;
    OK("{{$x := .A}}{{$x}}{{$x = 5}}{{$x}}{{.A}}", "{A=1}", "151");
    OK("{{$x := 1}}{{if true}}{{$x = 2}}{{$y := 3}}{{end}}{{$x}}", "{}", "2");
    OK("{{range $i, $e := .L}}{{$e = 9}}{{.}}{{end}}", "{L={1,2}}", "12");
    OK("{{$x := .A}}{{with .B}}{{$x}}{{end}}", "{A='a', B='b'}", "a");
}

static void test_functions(void **state)
{
    lua_State *L = *state;
    OK("{{and 1 2 3}} {{and 1 0 3}} {{or 0 \"\" 5}} {{or 0 false}}", "{}", "3 0 5 false");
    OK("{{if or .E .F}}t{{else}}f{{end}} {{len (and .L .L)}}", "{E={}, F={}, L={1}}", "f 1");
    /* and/or stop at the deciding argument: the rest is not evaluated */
    OK("{{and .A .A.B}}|{{or .B .B.C}}", "{A=false, B=true}", "false|true");
    OK("{{eq .A 1}} {{eq .A 1 2 3}} {{eq .S \"x\"}} {{eq .B true}}", "{A=3, S='x', B=true}",
       "false true true true");
    OK("{{eq 2 2.0}} {{ne 1 2}} {{lt 1 2}} {{le 2 2}} {{gt \"b\" \"a\"}} {{ge 1.5 2}}", "{}",
       "true true true true true false");
    OK("{{len .L}} {{len .M}} {{len .S}} {{len .E}}", "{L={1,2,3}, M={a=1,b=2}, S='four', E={}}",
       "3 2 4 0");
    OK("{{index .L 0}} {{index .L 2}} {{index .M \"k\"}} {{index .N \"a\" \"b\"}}",
       "{L={'x','y','z'}, M={k='v'}, N={a={b='ab'}}}", "x z v ab");
    OK("{{printf \"%s:%d\" .H .P}}", "{H='db', P=5432}", "db:5432");
    OK("{{printf \"%v %v %v %v\" 1 2.5 true \"s\"}}", "{}", "1 2.5 true s");
    OK("{{printf \"%q\" \"a\\\"b\\n\"}}", "{}", "\"a\\\"b\\n\"");
    OK("{{printf \"%5d|%-5s|%05d|%x|%.2f|%%|%t\" 42 \"ab\" 7 255 3.14159 true}}", "{}",
       "   42|ab   |00007|ff|3.14|%|true");
    OK("{{printf \"%d\" 2.0}}", "{}", "2");
    OK("{{printf \"%d\" \"x\"}}", "{}", "%!d(string=x)");
    OK("{{printf \"%d %s\" 1}}", "{}", "1 %!s(MISSING)");
    OK("{{printf \"%d\" 1 \"x\"}}", "{}", "1%!(EXTRA string=x)");
    OK("{{printf \"%s\" 5}}", "{}", "%!s(int=5)");
    OK("{{print 1 2 \"a\" \"b\" 3}}|{{println 1 \"a\"}}", "{}", "1 2ab3|1 a\n");
    OK("{{.P | printf \"%d\"}}", "{P=7}", "7");
    OK("{{\"x\" | printf \"%s-%s\" \"a\"}}", "{}", "a-x");
    OK("{{.A | not | not}}", "{A=1}", "true");
    OK("{{(index .M \"a\").B}}", "{M={a={B='deep'}}}", "deep");
    OK("{{printf \"%s\" (printf \"%d\" (len .L))}}", "{L={1,2}}", "2");
    OK("{{if and (eq .Role \"master\") (gt .Port 0)}}ok{{end}}", "{Role='master', Port=5}", "ok");
}

/* lt/le/gt/ge on strings order bytewise as Go does, whatever magnitude memcmp returns;
 * numbers compare by value (a Lua number is one type), NaN is unordered. */
static void test_compare_like_go(void **state)
{
    lua_State *L = *state;
    OK("{{lt \"a\" \"c\"}} {{gt \"z\" \"a\"}} {{le \"a\" \"c\"}} {{ge \"c\" \"a\"}}", "{}",
       "true true true true");
    OK("{{lt \"c\" \"a\"}} {{gt \"a\" \"z\"}} {{le \"c\" \"a\"}} {{ge \"a\" \"c\"}}", "{}",
       "false false false false");
    OK("{{lt \"ab\" \"abc\"}} {{gt \"abc\" \"ab\"}} {{le \"ab\" \"ab\"}} {{lt \"\" \"a\"}}", "{}",
       "true true true true");
    OK("{{lt .A .Z}} {{gt .Z .A}} {{lt .Z .A}}", "{A='a', Z='\\255'}", "true true false");
    OK("{{ne \"a\" \"c\"}} {{ne \"a\" \"a\"}} {{eq \"c\" \"a\" \"b\" \"c\"}} {{eq \"c\" \"a\" "
       "\"b\"}}",
       "{}", "true false true false");
    OK("{{lt 1 1.5}} {{gt 2.5 2}} {{eq 1 1.0}} {{le -1 0}} {{ge 0 -1}}", "{}",
       "true true true true true");
    OK("{{lt .N 1}} {{gt .N 1}} {{le .N .N}} {{ge .N .N}} {{eq .N .N}} {{ne .N .N}}", "{N=0/0}",
       "false false false false false true");
    RERR("{{lt 1 \"1\"}}", "{}",
         "t.ini:1:1: error calling lt: incompatible types for comparison (int and string)");
    RERR("{{eq \"1\" 1}}", "{}",
         "t.ini:1:1: error calling eq: incompatible types for comparison (string and int)");
    RERR("{{lt true false}}", "{}",
         "t.ini:1:1: error calling lt: invalid type for comparison (bool)");
}

static void test_pgbouncer_ini(void **state)
{
    lua_State *L = *state;
    /* shaped like the original tool's pgbouncer.ini template */
    const char *src = "[databases]\n"
                      "{{- range $name, $db := .Databases }}\n"
                      "{{ $name }} = host={{ $.Host }} port={{ $.Port }} dbname={{ $db }}\n"
                      "{{- end }}\n"
                      "* = host={{ .Host }} port={{ .Port }}\n"
                      "\n"
                      "[pgbouncer]\n"
                      "listen_addr = {{ .ListenAddr }}\n"
                      "listen_port = 6432\n"
                      "{{- /* the pauser talks to this socket */}}\n"
                      "unix_socket_dir = /var/run/postgresql\n"
                      "{{ if .AuthFile -}}\n"
                      "auth_file = {{ .AuthFile }}\n"
                      "{{ end -}}\n"
                      "pool_mode = transaction\n";
    OK(src,
       "{Host='10.0.0.5', Port=5432, ListenAddr='0.0.0.0', AuthFile='/etc/pgbouncer/users.txt',"
       " Databases={app='app_prod', billing='billing'}}",
       "[databases]\n"
       "app = host=10.0.0.5 port=5432 dbname=app_prod\n"
       "billing = host=10.0.0.5 port=5432 dbname=billing\n"
       "* = host=10.0.0.5 port=5432\n"
       "\n"
       "[pgbouncer]\n"
       "listen_addr = 0.0.0.0\n"
       "listen_port = 6432\n"
       "unix_socket_dir = /var/run/postgresql\n"
       "auth_file = /etc/pgbouncer/users.txt\n"
       "pool_mode = transaction\n");
    OK("[databases]\n* = host={{.Host}} port={{.Port}}\n", "{Host='127.0.0.1', Port=5433}",
       "[databases]\n* = host=127.0.0.1 port=5433\n");
}

static void test_compile_errors(void **state)
{
    (void)state;
    CERR("ok\n  {{.Host", "t.ini:2:3: unclosed action");
    CERR("{{.Host}", "t.ini:1:1: unclosed action");
    CERR("x{{/* never closed }}", "t.ini:1:2: unclosed comment");
    CERR("{{/* c */ }}", "t.ini:1:1: comment ends before closing delimiter");
    CERR("a\n{{end}}", "t.ini:2:1: unexpected {{end}}");
    CERR("{{else}}", "t.ini:1:1: unexpected {{else}}");
    CERR("{{if .X}}\nabc", "t.ini:2:4: unexpected EOF, expected {{end}} for {{if}} at 1:1");
    CERR("\n {{range .L}}{{if .X}}{{end}}",
         "t.ini:2:30: unexpected EOF, expected {{end}} for {{range}} at 2:2");
    CERR("{{with .X}}{{else}}", "t.ini:1:20: unexpected EOF, expected {{end}} for {{with}} at 1:1");
    CERR("{{if .X}}{{else}}{{else}}{{end}}", "t.ini:1:18: expected {{end}}; found {{else}}");
    CERR("{{range .L}}{{else if .X}}{{end}}", "t.ini:1:13: unexpected \"if\" in else");
    CERR("{{foo .X}}", "t.ini:1:1: function \"foo\" not defined");
    CERR("{{default \"x\" .X}}", "t.ini:1:1: function \"default\" not defined");
    CERR("{{.A .B}}", "t.ini:1:1: can't give argument to non-function .A");
    CERR("{{}}", "t.ini:1:1: missing value for command");
    CERR("{{.A | .B}}", "t.ini:1:1: non executable command in pipeline stage 2");
    CERR("{{.A |}}", "t.ini:1:1: missing value for command");
    CERR("{{nil}}", "t.ini:1:1: nil is not a command");
    CERR("{{$x}}", "t.ini:1:1: undefined variable \"$x\"");
    CERR("{{range $v := .L}}{{end}}{{$v}}", "t.ini:1:26: undefined variable \"$v\"");
    CERR("{{$x = 1}}", "t.ini:1:1: undefined variable \"$x\"");
    CERR("{{if $a, $b := .L}}{{end}}", "t.ini:1:1: too many declarations in if");
    CERR("{{\"abc}}", "t.ini:1:1: unterminated quoted string");
    CERR("{{\"\\q\"}}", "t.ini:1:1: invalid syntax in string \"\\q\"");
    CERR("{{12ab}}", "t.ini:1:1: bad number syntax: \"12ab\"");
    CERR("{{.A # x}}", "t.ini:1:1: bad character '#'");
    CERR("{{(.A}}", "t.ini:1:1: unclosed left paren");
    CERR("{{.A)}}", "t.ini:1:1: unexpected right paren");
    CERR("{{end .X}}", "t.ini:1:1: unexpected \".X\" in end");
    CERR("{{if}}{{end}}", "t.ini:1:1: missing value for command");
    CERR("{{template \"x\"}}", "t.ini:1:1: {{template}} is not supported");
    CERR("{{define \"x\"}}{{end}}", "t.ini:1:1: {{define}} is not supported");
    CERR("{{\"a\".B}}", "t.ini:1:1: unexpected \".B\" after term");
    CERR("{{a := 1}}", "t.ini:1:1: function \"a\" not defined");
    char deep[2048] = "";
    for (int i = 0; i < 150; i++)
        strcat(deep, "{{if 1}}");
    CERR(deep, "t.ini:1:801: template nested too deeply");
}

static void test_render_errors(void **state)
{
    lua_State *L = *state;
    RERR("{{.Hos}}", "{Host='h'}", "t.ini:1:1: executing <.Hos>: map has no entry for key \"Hos\"");
    RERR("a\n  b {{.A.B.C}}", "{A={B={}}}",
         "t.ini:2:5: executing <.A.B.C>: map has no entry for key \"C\"");
    RERR("{{.A.B}}", "{A='str'}",
         "t.ini:1:1: executing <.A.B>: can't evaluate field B in type string");
    RERR("{{.A}}", "5", "t.ini:1:1: executing <.A>: can't evaluate field A in type int");
    RERR("{{.A}}", "nil", "t.ini:1:1: executing <.A>: can't evaluate field A in type nil");
    RERR("{{range .L}}{{$v := 1}}{{$.X.Y}}{{end}}", "{L={1}, X={}}",
         "t.ini:1:24: executing <$.X.Y>: map has no entry for key \"Y\"");
    RERR("{{range $v := .L}}{{$v.Name}}{{end}}", "{L={{Name='a'},{}}}",
         "t.ini:1:19: executing <$v.Name>: map has no entry for key \"Name\"");
    RERR("{{range .X}}{{end}}", "{X=5}", "t.ini:1:1: range can't iterate over 5");
    RERR("{{range .X}}{{end}}", "{X='str'}", "t.ini:1:1: range can't iterate over str");
    RERR("{{range .X}}{{end}}", "{X=false}", "t.ini:1:1: range can't iterate over false");
    RERR("{{range .M}}{{end}}", "{M={[true]=1}}", "t.ini:1:1: range over table with a bool key");
    RERR("{{len 1 2}}", "{}", "t.ini:1:1: wrong number of args for len: want 1 got 2");
    RERR("{{not}}", "{}", "t.ini:1:1: wrong number of args for not: want 1 got 0");
    RERR("{{and}}", "{}", "t.ini:1:1: wrong number of args for and: want at least 1 got 0");
    RERR("{{eq 1}}", "{}", "t.ini:1:1: wrong number of args for eq: want at least 2 got 1");
    RERR("{{ne 1 2 3}}", "{}", "t.ini:1:1: wrong number of args for ne: want 2 got 3");
    RERR("{{printf}}", "{}", "t.ini:1:1: wrong number of args for printf: want at least 1 got 0");
    RERR("{{len 5}}", "{}", "t.ini:1:1: error calling len: len of type int");
    RERR("{{eq 1 \"1\"}}", "{}",
         "t.ini:1:1: error calling eq: incompatible types for comparison (int and string)");
    RERR("{{lt true false}}", "{}",
         "t.ini:1:1: error calling lt: invalid type for comparison (bool)");
    RERR("{{eq .A .A}}", "{A={}}", "t.ini:1:1: error calling eq: non-comparable type table");
    RERR("{{index .L 5}}", "{L={1}}", "t.ini:1:1: error calling index: index out of range: 5");
    RERR("{{index .S 1}}", "{S='x'}",
         "t.ini:1:1: error calling index: can't index item of type string");
    RERR("{{.}}", "{}", "t.ini:1:1: cannot print table");
    RERR("{{index . \"x\"}}", "{}", "t.ini:1:1: cannot print nil");
    RERR("{{.F}}", "{F=print}", "t.ini:1:1: cannot print function");
    RERR("{{printf \"%v\" .}}", "{}", "t.ini:1:1: error calling printf: cannot print table");
    RERR("{{printf 5}}", "{}", "t.ini:1:1: error calling printf: format must be a string, got int");
    /* no partial output: the first lines rendered fine */
    RERR("line1\nline2\n{{if .A}}{{.Missing}}{{end}}", "{A=1}",
         "t.ini:3:10: executing <.Missing>: map has no entry for key \"Missing\"");
}

static void test_raw_access_no_metamethods(void **state)
{
    lua_State *L = *state;
    /* __index is never consulted: a missing key stays missing */
    RERR("{{.X}}", "setmetatable({}, {__index=function() error('boom') end})",
         "t.ini:1:1: executing <.X>: map has no entry for key \"X\"");
    OK("{{len .}}", "setmetatable({1,2}, {__len=function() error('boom') end})", "2");
}

static void test_reuse_and_stack(void **state)
{
    lua_State *L = *state;
    char err[256];
    const char *src = "{{range .L}}{{.}}{{end}}";
    spgb_template *t = spgb_template_compile("t", src, strlen(src), err, sizeof err);
    assert_non_null(t);
    assert_string_equal(spgb_template_name(t), "t");
    lua_pushinteger(L, 99); /* something below the ctx must survive */
    assert_int_equal(luaL_dostring(L, "return {L={'a','b'}}"), LUA_OK);
    for (int i = 0; i < 3; i++) {
        char *out;
        size_t n;
        assert_int_equal(spgb_template_render(t, L, 2, &out, &n, err, sizeof err), 0);
        assert_string_equal(out, "ab");
        assert_int_equal(n, 2);
        free(out);
        assert_int_equal(lua_gettop(L), 2);
        assert_int_equal(lua_tointeger(L, 1), 99);
    }
    lua_settop(L, 0);
    spgb_template_free(t);
    spgb_template_free(NULL);
}

static void test_not_nul_terminated(void **state)
{
    (void)state;
    char err[256];
    const char text[] = {'{', '{', '.', 'A', '}', '}', '{', '{'};
    spgb_template *t = spgb_template_compile("t", text, 6, err, sizeof err);
    assert_non_null(t);
    spgb_template_free(t);
    assert_null(spgb_template_compile("t", text, 8, err, sizeof err));
    assert_string_equal(err, "t:1:7: unclosed action");
    /* a tiny error buffer is still NUL-terminated */
    char small[8];
    assert_null(spgb_template_compile("name", "{{end}}", 7, small, sizeof small));
    assert_string_equal(small, "name:1:");
}

static void test_lua_module(void **state)
{
    lua_State *L = *state;
    luaL_requiref(L, "template", luaopen_template, 0);
    lua_pop(L, 1);
    const char *script =
        "local template = require 'template'\n"
        "local t = assert(template.compile('host={{.Host}} port={{.Port}}'))\n"
        "assert(t:render{Host='h', Port=1} == 'host=h port=1')\n"
        "assert(tostring(t) == 'template (template)')\n"
        "assert(t:name() == 'template')\n"
        "local out, err = t:render{Host='h'}\n"
        "assert(out == nil and err == 'template:1:21: executing <.Port>: map has no entry for key "
        "\"Port\"', err)\n"
        "local bad, cerr = template.compile('{{if .X}}', 'pgbouncer.ini.tmpl')\n"
        "assert(bad == nil and cerr == 'pgbouncer.ini.tmpl:1:10: unexpected EOF, expected {{end}} "
        "for {{if}} at 1:1', cerr)\n"
        "local ok, e = pcall(template.compile, {})\n"
        "assert(not ok and e:find('bad argument #1'), e)\n"
        "ok, e = pcall(t.render, 'x')\n"
        "assert(not ok and e:find('spgb.template expected'), e)\n"
        "local none, lerr = template.load('/nonexistent/x.tmpl')\n"
        "assert(none == nil and lerr == '/nonexistent/x.tmpl: No such file or directory', lerr)\n"
        "assert(template.compile(''):render() == '')\n"
        "local f = os.tmpname()\n"
        "local h = io.open(f, 'w'); h:write('x={{.}}\\n{{end}}'); h:close()\n"
        "local lt, le = template.load(f)\n"
        "assert(lt == nil and le == f .. ':2:1: unexpected {{end}}', le)\n"
        "h = io.open(f, 'w'); h:write('x={{.}}'); h:close()\n"
        "assert(template.load(f):render(5) == 'x=5')\n"
        "os.remove(f)\n";
    if (luaL_dostring(L, script) != LUA_OK)
        fail_msg("%s", lua_tostring(L, -1));
    lua_settop(L, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_text_and_fields, setup, teardown),
        cmocka_unit_test_setup_teardown(test_output_formatting, setup, teardown),
        cmocka_unit_test_setup_teardown(test_trim_markers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_comments, setup, teardown),
        cmocka_unit_test_setup_teardown(test_if, setup, teardown),
        cmocka_unit_test_setup_teardown(test_with, setup, teardown),
        cmocka_unit_test_setup_teardown(test_range, setup, teardown),
        cmocka_unit_test_setup_teardown(test_range_mixed_keys, setup, teardown),
        cmocka_unit_test_setup_teardown(test_nesting, setup, teardown),
        cmocka_unit_test_setup_teardown(test_variables, setup, teardown),
        cmocka_unit_test_setup_teardown(test_functions, setup, teardown),
        cmocka_unit_test_setup_teardown(test_compare_like_go, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pgbouncer_ini, setup, teardown),
        cmocka_unit_test_setup_teardown(test_compile_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_render_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_raw_access_no_metamethods, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reuse_and_stack, setup, teardown),
        cmocka_unit_test_setup_teardown(test_not_nul_terminated, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lua_module, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
