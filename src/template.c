/*
 * template: Go text/template-compatible renderer (see template.h, docs/template.md).
 *
 * Compile turns the text into a tree allocated from one arena (so freeing, and
 * giving up half-way on an error, is a single walk over a few blocks). Render walks
 * the tree with every value living on the Lua stack: dot, variables and
 * intermediate results are stack slots, so Lua tables need no copying and strings
 * stay anchored by the tables that hold them. Render runs inside lua_pcall so that
 * a Lua allocation failure cannot escape as a longjmp; all other errors travel as
 * return codes with the message in the render context.
 */
#include "template.h"
#include "fs.h"

#include <lauxlib.h>
#include <lua.h>

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_DEPTH 100 /* nesting of if/range/with and parentheses */
#define TPL_MT "spgb.template"

/* ------------------------------------------------------------------ arena */

typedef struct ablock {
    struct ablock *next;
    size_t used, cap;
} ablock;

#define AHDR ((sizeof(ablock) + 15) & ~(size_t)15)

/* Zeroed memory owned by the arena; NULL when out of memory. */
static void *arena_alloc(ablock **head, size_t n)
{
    n = (n + 15) & ~(size_t)15;
    ablock *b = *head;
    if (!b || b->cap - b->used < n) {
        size_t cap = n > 4096 ? n : 4096;
        b = malloc(AHDR + cap);
        if (!b)
            return NULL;
        b->used = 0;
        b->cap = cap;
        if (*head && n > 4096) {
            /* keep filling the current block; the big one goes behind it */
            b->next = (*head)->next;
            (*head)->next = b;
        } else {
            b->next = *head;
            *head = b;
        }
    }
    void *p = (char *)b + AHDR + b->used;
    b->used += n;
    memset(p, 0, n);
    return p;
}

static void arena_free(ablock *b)
{
    while (b) {
        ablock *next = b->next;
        free(b);
        b = next;
    }
}

/* ------------------------------------------------------------------ tree */

typedef struct field {
    const char *s;
    size_t n;
    struct field *next;
} field;

enum arg_kind { A_DOT, A_FIELD, A_VAR, A_STR, A_INT, A_FLOAT, A_BOOL, A_NIL, A_FUNC, A_PIPE };

struct pipe;

typedef struct arg {
    enum arg_kind kind;
    struct arg *next;
    const char *s; /* A_STR value, A_VAR name (with '$') */
    size_t n;
    lua_Integer i;
    double f;
    bool b;
    int fn;            /* A_FUNC */
    struct pipe *pipe; /* A_PIPE */
    field *chain;      /* A_FIELD: the fields; A_VAR, A_PIPE: trailing fields */
} arg;

typedef struct cmd {
    arg *args;
    int nargs;
    struct cmd *next;
} cmd;

typedef struct pipe {
    int ndecl;
    bool assign;
    const char *var[2];
    size_t varlen[2];
    cmd *cmds;
} pipe;

enum node_kind { N_TEXT, N_ACTION, N_IF, N_RANGE, N_WITH };

typedef struct node {
    enum node_kind kind;
    int line, col;
    struct node *next;
    const char *text; /* N_TEXT */
    size_t len;
    pipe *pipe;
    struct node *list, *elselist;
} node;

struct spgb_template {
    ablock *arena;
    const char *name;
    node *root;
};

/* ------------------------------------------------------------------ functions */

enum fn_id {
    F_NOT,
    F_AND,
    F_OR,
    F_EQ,
    F_NE,
    F_LT,
    F_LE,
    F_GT,
    F_GE,
    F_LEN,
    F_INDEX,
    F_PRINTF,
    F_PRINT,
    F_PRINTLN
};

static const char *const fn_names[] = {"not", "and", "or",  "eq",    "ne",     "lt",    "le",
                                       "gt",  "ge",  "len", "index", "printf", "print", "println"};

static int fn_lookup(const char *s, size_t n)
{
    for (size_t i = 0; i < sizeof fn_names / sizeof fn_names[0]; i++)
        if (strlen(fn_names[i]) == n && memcmp(fn_names[i], s, n) == 0)
            return (int)i;
    return -1;
}

/* ------------------------------------------------------------------ parser */

enum tk {
    K_EOF,
    K_FIELD,
    K_DOT,
    K_VAR,
    K_IDENT,
    K_STR,
    K_RAW,
    K_NUM,
    K_DECL,
    K_ASSIGN,
    K_COMMA,
    K_PIPE,
    K_LP,
    K_RP
};

typedef struct tok {
    enum tk k;
    const char *s;
    size_t n;
    bool sp; /* whitespace before it */
} tok;

typedef struct pvar {
    const char *s;
    size_t n;
} pvar;

typedef struct parser {
    const char *src;
    size_t len, pos;
    int line, col; /* of src[pos] */
    bool trim_next;
    const char *name;
    ablock **arena;
    char *err;
    size_t errlen;
    bool failed;
    int aline, acol; /* start of the current action */
    tok *toks;
    size_t ntok, captok, ti;
    pvar *vars;
    size_t nvars, capvars;
    int depth;
} parser;

enum item { I_EOF, I_TEXT, I_ACTION, I_ERR };
enum term { TERM_EOF, TERM_END, TERM_ELSE };

static void perr_at(parser *P, int line, int col, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void perr_at(parser *P, int line, int col, const char *fmt, ...)
{
    if (P->failed)
        return;
    P->failed = true;
    if (!P->err || P->errlen == 0)
        return;
    int n = snprintf(P->err, P->errlen, "%s:%d:%d: ", P->name, line, col);
    if (n < 0 || (size_t)n >= P->errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(P->err + n, P->errlen - (size_t)n, fmt, ap);
    va_end(ap);
}

#define perr(P, ...) perr_at((P), (P)->aline, (P)->acol, __VA_ARGS__)

static void *palloc(parser *P, size_t n)
{
    void *p = arena_alloc(P->arena, n);
    if (!p)
        perr(P, "out of memory");
    return p;
}

static char *pstrdup(parser *P, const char *s, size_t n)
{
    char *d = palloc(P, n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = '\0';
    }
    return d;
}

static bool is_space(int c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

static bool is_alpha(int c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

static bool is_digit(int c)
{
    return c >= '0' && c <= '9';
}

static bool is_alnum(int c)
{
    return is_alpha(c) || is_digit(c);
}

static void advance(parser *P, size_t n)
{
    for (size_t k = 0; k < n && P->pos < P->len; k++, P->pos++) {
        if (P->src[P->pos] == '\n') {
            P->line++;
            P->col = 1;
        } else {
            P->col++;
        }
    }
}

static bool at(const parser *P, size_t i, const char *s)
{
    size_t n = strlen(s);
    return i <= P->len && P->len - i >= n && memcmp(P->src + i, s, n) == 0;
}

/* Go: a right trim marker is one space character, '-', then the delimiter. */
static size_t right_delim(const parser *P, size_t i, bool *trim)
{
    if (i + 1 < P->len && is_space((unsigned char)P->src[i]) && P->src[i + 1] == '-' &&
        at(P, i + 2, "}}")) {
        *trim = true;
        return 4;
    }
    if (at(P, i, "}}")) {
        *trim = false;
        return 2;
    }
    return 0;
}

static bool left_trim_at(const parser *P, size_t i)
{
    return at(P, i, "{{-") && i + 3 < P->len && is_space((unsigned char)P->src[i + 3]);
}

/*
 * Next item of the template: text (with trim markers applied) or an action body
 * [*s, *s + *n). Comments are consumed here and produce nothing.
 */
static enum item next_item(parser *P, const char **s, size_t *n)
{
    for (;;) {
        if (P->trim_next) {
            P->trim_next = false;
            while (P->pos < P->len && is_space((unsigned char)P->src[P->pos]))
                advance(P, 1);
        }
        if (P->pos >= P->len)
            return I_EOF;
        const char *hit = memmem(P->src + P->pos, P->len - P->pos, "{{", 2);
        size_t end = hit ? (size_t)(hit - P->src) : P->len;
        if (end > P->pos) {
            size_t tend = end;
            if (hit && left_trim_at(P, end))
                while (tend > P->pos && is_space((unsigned char)P->src[tend - 1]))
                    tend--;
            *s = P->src + P->pos;
            *n = tend - P->pos;
            advance(P, end - P->pos);
            if (*n > 0)
                return I_TEXT;
            continue;
        }
        /* at "{{" */
        P->aline = P->line;
        P->acol = P->col;
        bool ltrim = left_trim_at(P, P->pos);
        advance(P, ltrim ? 4 : 2);
        if (at(P, P->pos, "/*")) {
            const char *close = memmem(P->src + P->pos + 2, P->len - P->pos - 2, "*/", 2);
            if (!close) {
                perr(P, "unclosed comment");
                return I_ERR;
            }
            advance(P, (size_t)(close - (P->src + P->pos)) + 2);
            bool trim;
            size_t dl = right_delim(P, P->pos, &trim);
            if (!dl) {
                perr(P, "comment ends before closing delimiter");
                return I_ERR;
            }
            advance(P, dl);
            P->trim_next = trim;
            continue;
        }
        if (ltrim)
            *s = P->src + P->pos - 1; /* keep the space after '-' inside the body */
        else
            *s = P->src + P->pos;
        size_t i = P->pos;
        for (;;) {
            if (i >= P->len) {
                perr(P, "unclosed action");
                return I_ERR;
            }
            char c = P->src[i];
            if (c == '"' || c == '`') {
                /* skip quoted text so "}}" inside a string does not end the action */
                size_t j = i + 1;
                while (j < P->len && P->src[j] != c && !(c == '"' && P->src[j] == '\n'))
                    j += c == '"' && P->src[j] == '\\' ? 2 : 1;
                if (j >= P->len || P->src[j] != c) {
                    perr(P, c == '"' ? "unterminated quoted string"
                                     : "unterminated raw quoted string");
                    return I_ERR;
                }
                i = j + 1;
                continue;
            }
            bool trim;
            size_t dl = right_delim(P, i, &trim);
            if (dl) {
                *n = (size_t)(P->src + i - *s);
                advance(P, i - P->pos + dl);
                P->trim_next = trim;
                return I_ACTION;
            }
            i++;
        }
    }
}

/* ---- tokens of one action */

static int push_tok(parser *P, enum tk k, const char *s, size_t n, bool sp)
{
    if (P->ntok == P->captok) {
        size_t cap = P->captok ? P->captok * 2 : 32;
        tok *t = realloc(P->toks, cap * sizeof *t);
        if (!t) {
            perr(P, "out of memory");
            return -1;
        }
        P->toks = t;
        P->captok = cap;
    }
    P->toks[P->ntok++] = (tok){k, s, n, sp};
    return 0;
}

static int lex_action(parser *P, const char *s, size_t n)
{
    P->ntok = 0;
    P->ti = 0;
    size_t i = 0;
    bool sp = false;
    while (i < n) {
        unsigned char c = (unsigned char)s[i];
        size_t st = i;
        enum tk k;
        if (is_space(c)) {
            sp = true;
            i++;
            continue;
        } else if (c == '"') {
            i++;
            while (i < n && s[i] != '"' && s[i] != '\n') {
                if (s[i] == '\\')
                    i++;
                i++;
            }
            if (i >= n || s[i] != '"') {
                perr(P, "unterminated quoted string");
                return -1;
            }
            i++;
            k = K_STR;
        } else if (c == '`') {
            i++;
            while (i < n && s[i] != '`')
                i++;
            if (i >= n) {
                perr(P, "unterminated raw quoted string");
                return -1;
            }
            i++;
            k = K_RAW;
        } else if (c == ':') {
            if (i + 1 >= n || s[i + 1] != '=') {
                perr(P, "expected :=");
                return -1;
            }
            i += 2;
            k = K_DECL;
        } else if (c == '=') {
            i++;
            k = K_ASSIGN;
        } else if (c == ',') {
            i++;
            k = K_COMMA;
        } else if (c == '|') {
            i++;
            k = K_PIPE;
        } else if (c == '(') {
            i++;
            k = K_LP;
        } else if (c == ')') {
            i++;
            k = K_RP;
        } else if (c == '$') {
            i++;
            while (i < n && is_alnum((unsigned char)s[i]))
                i++;
            k = K_VAR;
        } else if (c == '.' && i + 1 < n && is_alpha((unsigned char)s[i + 1])) {
            i++;
            while (i < n && is_alnum((unsigned char)s[i]))
                i++;
            k = K_FIELD;
            st++; /* the name without the dot */
        } else if (is_digit(c) || (c == '.' && i + 1 < n && is_digit((unsigned char)s[i + 1])) ||
                   ((c == '-' || c == '+') && i + 1 < n &&
                    (is_digit((unsigned char)s[i + 1]) || s[i + 1] == '.'))) {
            i++;
            while (i < n) {
                unsigned char d = (unsigned char)s[i];
                if (is_alnum(d) || d == '.')
                    i++;
                else if ((d == '+' || d == '-') && strchr("eEpP", s[i - 1]))
                    i++;
                else
                    break;
            }
            k = K_NUM;
        } else if (c == '.') {
            i++;
            k = K_DOT;
        } else if (is_alpha(c)) {
            while (i < n && is_alnum((unsigned char)s[i]))
                i++;
            k = K_IDENT;
        } else {
            if (c >= 0x20 && c < 0x7f)
                perr(P, "bad character '%c'", c);
            else
                perr(P, "bad character U+%04X", c);
            return -1;
        }
        if (push_tok(P, k, s + st, i - st, sp) < 0)
            return -1;
        sp = false;
    }
    return push_tok(P, K_EOF, s + n, 0, sp);
}

static const tok *peek(const parser *P, size_t ahead)
{
    size_t i = P->ti + ahead;
    return i < P->ntok ? &P->toks[i] : &P->toks[P->ntok - 1];
}

static bool tok_is(const tok *t, enum tk k, const char *word)
{
    return t->k == k && (!word || (strlen(word) == t->n && memcmp(t->s, word, t->n) == 0));
}

static void unexpected(parser *P, const tok *t, const char *where)
{
    if (t->k == K_EOF)
        perr(P, "unexpected end of action in %s", where);
    else if (t->k == K_FIELD)
        perr(P, "unexpected \".%.*s\" in %s", (int)t->n, t->s, where);
    else
        perr(P, "unexpected \"%.*s\" in %s", (int)t->n, t->s, where);
}

static int scope_push(parser *P, const char *s, size_t n)
{
    if (P->nvars == P->capvars) {
        size_t cap = P->capvars ? P->capvars * 2 : 16;
        pvar *v = realloc(P->vars, cap * sizeof *v);
        if (!v) {
            perr(P, "out of memory");
            return -1;
        }
        P->vars = v;
        P->capvars = cap;
    }
    P->vars[P->nvars++] = (pvar){s, n};
    return 0;
}

static bool scope_has(const parser *P, const char *s, size_t n)
{
    for (size_t i = P->nvars; i-- > 0;)
        if (P->vars[i].n == n && memcmp(P->vars[i].s, s, n) == 0)
            return true;
    return false;
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static size_t put_utf8(char *d, uint32_t cp)
{
    if (cp < 0x80) {
        d[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        d[0] = (char)(0xC0 | (cp >> 6));
        d[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        d[0] = (char)(0xE0 | (cp >> 12));
        d[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        d[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    d[0] = (char)(0xF0 | (cp >> 18));
    d[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    d[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    d[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Go interpreted string literal (t includes the quotes) into a->s/a->n. */
static int unquote(parser *P, const tok *t, arg *a)
{
    char *d = palloc(P, t->n * 2 + 1); /* \u escapes may grow: \uXXXX (6) -> 3 bytes */
    if (!d)
        return -1;
    size_t o = 0;
    for (size_t i = 1; i + 1 < t->n; i++) {
        char c = t->s[i];
        if (c != '\\') {
            d[o++] = c;
            continue;
        }
        c = t->s[++i];
        switch (c) {
        case 'n':
            d[o++] = '\n';
            break;
        case 't':
            d[o++] = '\t';
            break;
        case 'r':
            d[o++] = '\r';
            break;
        case 'a':
            d[o++] = '\a';
            break;
        case 'b':
            d[o++] = '\b';
            break;
        case 'f':
            d[o++] = '\f';
            break;
        case 'v':
            d[o++] = '\v';
            break;
        case '\\':
            d[o++] = '\\';
            break;
        case '"':
            d[o++] = '"';
            break;
        case 'x':
        case 'u':
        case 'U': {
            int digits = c == 'x' ? 2 : c == 'u' ? 4 : 8;
            uint32_t v = 0;
            for (int k = 0; k < digits; k++) {
                int h = i + 1 + (size_t)k + 1 < t->n ? hexval((unsigned char)t->s[i + 1 + k]) : -1;
                if (h < 0)
                    goto bad;
                v = v * 16 + (uint32_t)h;
            }
            i += (size_t)digits;
            if (c == 'x')
                d[o++] = (char)v;
            else if (v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF))
                goto bad;
            else
                o += put_utf8(d + o, v);
            break;
        }
        default:
            if (c >= '0' && c <= '7' && i + 2 + 1 < t->n) {
                int v = 0;
                for (int k = 0; k < 3; k++) {
                    char oc = t->s[i + (size_t)k];
                    if (oc < '0' || oc > '7' || i + (size_t)k + 1 >= t->n)
                        goto bad;
                    v = v * 8 + (oc - '0');
                }
                if (v > 255)
                    goto bad;
                i += 2;
                d[o++] = (char)v;
                break;
            }
            goto bad;
        }
    }
    d[o] = '\0';
    a->s = d;
    a->n = o;
    return 0;
bad:
    perr(P, "invalid syntax in string %.*s", (int)t->n, t->s);
    return -1;
}

static int parse_number(parser *P, const tok *t, arg *a)
{
    char buf[128];
    size_t o = 0;
    for (size_t i = 0; i < t->n; i++) {
        if (t->s[i] == '_')
            continue; /* Go digit separators */
        if (o + 1 >= sizeof buf)
            goto bad;
        buf[o++] = t->s[i];
    }
    buf[o] = '\0';
    char *end;
    const char *digits = buf + (buf[0] == '+' || buf[0] == '-');
    bool octal_o = digits[0] == '0' && (digits[1] == 'o' || digits[1] == 'O');
    bool binary = digits[0] == '0' && (digits[1] == 'b' || digits[1] == 'B');
    errno = 0;
    long long v;
    if (octal_o || binary) {
        unsigned long long u = strtoull(digits + 2, &end, octal_o ? 8 : 2);
        if (*end || end == digits + 2 || errno || u > (unsigned long long)LLONG_MAX)
            goto bad;
        v = buf[0] == '-' ? -(long long)u : (long long)u;
        a->kind = A_INT;
        a->i = (lua_Integer)v;
        return 0;
    }
    v = strtoll(buf, &end, 0);
    if (*end == '\0' && errno == 0) {
        a->kind = A_INT;
        a->i = (lua_Integer)v;
        return 0;
    }
    errno = 0;
    double f = strtod(buf, &end);
    if (*end == '\0' && end != buf && errno == 0 && !strpbrk(buf, "nNiI")) {
        a->kind = A_FLOAT;
        a->f = f;
        return 0;
    }
bad:
    perr(P, "bad number syntax: \"%.*s\"", (int)t->n, t->s);
    return -1;
}

static pipe *parse_pipe(parser *P, int maxdecl, const char *ctx);

static int parse_chain(parser *P, arg *a)
{
    field **tail = &a->chain;
    while (*tail)
        tail = &(*tail)->next;
    while (peek(P, 0)->k == K_FIELD && !peek(P, 0)->sp) {
        const tok *t = peek(P, 0);
        if (a->kind != A_FIELD && a->kind != A_VAR && a->kind != A_PIPE) {
            perr(P, "unexpected \".%.*s\" after term", (int)t->n, t->s);
            return -1;
        }
        field *f = palloc(P, sizeof *f);
        if (!f || !(f->s = pstrdup(P, t->s, t->n)))
            return -1;
        f->n = t->n;
        *tail = f;
        tail = &f->next;
        P->ti++;
    }
    return 0;
}

static arg *parse_operand(parser *P)
{
    const tok *t = peek(P, 0);
    arg *a = palloc(P, sizeof *a);
    if (!a)
        return NULL;
    switch (t->k) {
    case K_FIELD:
        a->kind = A_FIELD;
        if (!(a->chain = palloc(P, sizeof *a->chain)) || !(a->chain->s = pstrdup(P, t->s, t->n)))
            return NULL;
        a->chain->n = t->n;
        P->ti++;
        break;
    case K_DOT:
        a->kind = A_DOT;
        P->ti++;
        break;
    case K_VAR:
        if (!scope_has(P, t->s, t->n)) {
            perr(P, "undefined variable \"%.*s\"", (int)t->n, t->s);
            return NULL;
        }
        a->kind = A_VAR;
        if (!(a->s = pstrdup(P, t->s, t->n)))
            return NULL;
        a->n = t->n;
        P->ti++;
        break;
    case K_STR:
        a->kind = A_STR;
        if (unquote(P, t, a) < 0)
            return NULL;
        P->ti++;
        break;
    case K_RAW:
        a->kind = A_STR;
        if (!(a->s = pstrdup(P, t->s + 1, t->n - 2)))
            return NULL;
        a->n = t->n - 2;
        P->ti++;
        break;
    case K_NUM:
        if (parse_number(P, t, a) < 0)
            return NULL;
        P->ti++;
        break;
    case K_IDENT:
        if (tok_is(t, K_IDENT, "true") || tok_is(t, K_IDENT, "false")) {
            a->kind = A_BOOL;
            a->b = t->s[0] == 't';
        } else if (tok_is(t, K_IDENT, "nil")) {
            a->kind = A_NIL;
        } else {
            static const char *const keywords[] = {"if",    "else",    "end",      "range",
                                                   "with",  "define",  "template", "block",
                                                   "break", "continue"};
            for (size_t k = 0; k < sizeof keywords / sizeof keywords[0]; k++)
                if (tok_is(t, K_IDENT, keywords[k])) {
                    unexpected(P, t, "operand");
                    return NULL;
                }
            a->kind = A_FUNC;
            a->fn = fn_lookup(t->s, t->n);
            if (a->fn < 0) {
                perr(P, "function \"%.*s\" not defined", (int)t->n, t->s);
                return NULL;
            }
        }
        P->ti++;
        break;
    case K_LP:
        if (++P->depth > MAX_DEPTH) {
            perr(P, "expression nested too deeply");
            return NULL;
        }
        P->ti++;
        a->kind = A_PIPE;
        if (!(a->pipe = parse_pipe(P, 0, "parenthesized pipeline")))
            return NULL;
        if (peek(P, 0)->k != K_RP) {
            perr(P, "unclosed left paren");
            return NULL;
        }
        P->ti++;
        P->depth--;
        break;
    default:
        unexpected(P, t, "operand");
        return NULL;
    }
    if (parse_chain(P, a) < 0)
        return NULL;
    return a;
}

static cmd *parse_cmd(parser *P)
{
    cmd *c = palloc(P, sizeof *c);
    if (!c)
        return NULL;
    arg **tail = &c->args;
    for (;;) {
        enum tk k = peek(P, 0)->k;
        if (k == K_EOF || k == K_PIPE || k == K_RP)
            break;
        arg *a = parse_operand(P);
        if (!a)
            return NULL;
        *tail = a;
        tail = &a->next;
        c->nargs++;
    }
    if (c->nargs == 0) {
        perr(P, "missing value for command");
        return NULL;
    }
    return c;
}

/*
 * [decl] command ('|' command)*, stopping at the end of the action or at ')'.
 * maxdecl: how many variables the pipeline may declare (range 2, if/with/plain 1,
 * parenthesized 0). Declared variables enter the scope after the pipeline.
 */
static pipe *parse_pipe(parser *P, int maxdecl, const char *ctx)
{
    pipe *p = palloc(P, sizeof *p);
    if (!p)
        return NULL;
    const tok *t0 = peek(P, 0), *t1 = peek(P, 1);
    if (t0->k == K_VAR && (t1->k == K_DECL || t1->k == K_ASSIGN)) {
        if (maxdecl < 1) {
            perr(P, "unexpected \"%.*s\" in %s", (int)t1->n, t1->s, ctx);
            return NULL;
        }
        p->ndecl = 1;
        p->assign = t1->k == K_ASSIGN;
        if (p->assign && (maxdecl != 1 || !scope_has(P, t0->s, t0->n))) {
            if (maxdecl != 1)
                perr(P, "unexpected \"=\" in %s", ctx);
            else
                perr(P, "undefined variable \"%.*s\"", (int)t0->n, t0->s);
            return NULL;
        }
        if (t0->n == 1) {
            perr(P, "cannot declare or assign \"$\"");
            return NULL;
        }
        p->var[0] = t0->s;
        p->varlen[0] = t0->n;
        P->ti += 2;
    } else if (t0->k == K_VAR && t1->k == K_COMMA && peek(P, 2)->k == K_VAR &&
               (peek(P, 3)->k == K_DECL || peek(P, 3)->k == K_ASSIGN)) {
        if (maxdecl < 2 || peek(P, 3)->k == K_ASSIGN) {
            perr(P, "too many declarations in %s", ctx);
            return NULL;
        }
        if (t0->n == 1 || peek(P, 2)->n == 1) {
            perr(P, "cannot declare or assign \"$\"");
            return NULL;
        }
        p->ndecl = 2;
        p->var[0] = t0->s;
        p->varlen[0] = t0->n;
        p->var[1] = peek(P, 2)->s;
        p->varlen[1] = peek(P, 2)->n;
        P->ti += 4;
    }
    for (int i = 0; i < p->ndecl; i++)
        if (!(p->var[i] = pstrdup(P, p->var[i], p->varlen[i])))
            return NULL;
    cmd **tail = &p->cmds;
    for (int stage = 1;; stage++) {
        const tok *first = peek(P, 0);
        cmd *c = parse_cmd(P);
        if (!c)
            return NULL;
        if (c->nargs > 1 && c->args->kind != A_FUNC) {
            perr(P, "can't give argument to non-function %.*s",
                 first->k == K_FIELD ? (int)first->n + 1 : (int)first->n,
                 first->k == K_FIELD ? first->s - 1 : first->s);
            return NULL;
        }
        if (stage > 1 && c->args->kind != A_FUNC) {
            perr(P, "non executable command in pipeline stage %d", stage);
            return NULL;
        }
        if (stage == 1 && c->nargs == 1 && c->args->kind == A_NIL) {
            perr(P, "nil is not a command");
            return NULL;
        }
        *tail = c;
        tail = &c->next;
        if (peek(P, 0)->k != K_PIPE)
            break;
        P->ti++;
    }
    if (!p->assign)
        for (int i = 0; i < p->ndecl; i++)
            if (scope_push(P, p->var[i], p->varlen[i]) < 0)
                return NULL;
    return p;
}

static int expect_end_of_action(parser *P, const char *where)
{
    if (peek(P, 0)->k != K_EOF) {
        unexpected(P, peek(P, 0), where);
        return -1;
    }
    return 0;
}

static node *parse_list(parser *P, enum term *term);

static const char *kind_name(enum node_kind k)
{
    return k == N_IF ? "if" : k == N_RANGE ? "range" : "with";
}

/* After "if"/"range"/"with" (P->ti is past the keyword); consumes through {{end}}. */
static node *parse_control(parser *P, enum node_kind kind, int line, int col)
{
    if (++P->depth > MAX_DEPTH) {
        perr(P, "template nested too deeply");
        return NULL;
    }
    node *nd = palloc(P, sizeof *nd);
    if (!nd)
        return NULL;
    nd->kind = kind;
    nd->line = line;
    nd->col = col;
    size_t mark = P->nvars;
    char ctx[16];
    snprintf(ctx, sizeof ctx, "%s", kind_name(kind));
    if (!(nd->pipe = parse_pipe(P, kind == N_RANGE ? 2 : 1, ctx)))
        return NULL;
    if (expect_end_of_action(P, ctx) < 0)
        return NULL;
    enum term term;
    nd->list = parse_list(P, &term);
    if (P->failed)
        return NULL;
    if (kind == N_RANGE)
        P->nvars = mark; /* range variables are bound per element only */
    if (term == TERM_ELSE) {
        const tok *t = peek(P, 0);
        if ((kind == N_IF && tok_is(t, K_IDENT, "if")) ||
            (kind == N_WITH && tok_is(t, K_IDENT, "with"))) {
            /* {{else if x}} is {{else}}{{if x}}...{{end}} sharing the outer {{end}} */
            P->ti++;
            nd->elselist = parse_control(P, kind, P->aline, P->acol);
            if (!nd->elselist)
                return NULL;
        } else {
            if (expect_end_of_action(P, "else") < 0)
                return NULL;
            nd->elselist = parse_list(P, &term);
            if (P->failed)
                return NULL;
            if (term == TERM_ELSE) {
                perr(P, "expected {{end}}; found {{else}}");
                return NULL;
            }
        }
    }
    if (term == TERM_EOF) {
        perr_at(P, P->line, P->col, "unexpected EOF, expected {{end}} for {{%s}} at %d:%d",
                kind_name(kind), line, col);
        return NULL;
    }
    P->nvars = mark;
    P->depth--;
    return nd;
}

/* Items up to EOF, {{end}} or {{else}} (which one: *term). NULL is a valid empty list. */
static node *parse_list(parser *P, enum term *term)
{
    node *head = NULL, **tail = &head;
    *term = TERM_EOF;
    for (;;) {
        const char *s = NULL;
        size_t n = 0;
        enum item it = next_item(P, &s, &n);
        if (it == I_EOF)
            return head;
        if (it == I_ERR)
            return NULL;
        node *nd;
        if (it == I_TEXT) {
            nd = palloc(P, sizeof *nd);
            if (!nd || !(nd->text = pstrdup(P, s, n)))
                return NULL;
            nd->kind = N_TEXT;
            nd->len = n;
        } else {
            if (lex_action(P, s, n) < 0)
                return NULL;
            const tok *t = peek(P, 0);
            int line = P->aline, col = P->acol;
            if (tok_is(t, K_IDENT, "end")) {
                P->ti++;
                if (expect_end_of_action(P, "end") < 0)
                    return NULL;
                *term = TERM_END;
                return head;
            }
            if (tok_is(t, K_IDENT, "else")) {
                P->ti++;
                *term = TERM_ELSE;
                return head;
            }
            if (tok_is(t, K_IDENT, "if") || tok_is(t, K_IDENT, "range") ||
                tok_is(t, K_IDENT, "with")) {
                P->ti++;
                enum node_kind k = t->s[0] == 'i' ? N_IF : t->s[0] == 'r' ? N_RANGE : N_WITH;
                nd = parse_control(P, k, line, col);
                if (!nd)
                    return NULL;
            } else if (tok_is(t, K_IDENT, "define") || tok_is(t, K_IDENT, "template") ||
                       tok_is(t, K_IDENT, "block") || tok_is(t, K_IDENT, "break") ||
                       tok_is(t, K_IDENT, "continue")) {
                perr(P, "{{%.*s}} is not supported", (int)t->n, t->s);
                return NULL;
            } else {
                nd = palloc(P, sizeof *nd);
                if (!nd)
                    return NULL;
                nd->kind = N_ACTION;
                if (!(nd->pipe = parse_pipe(P, 1, "command")))
                    return NULL;
                if (peek(P, 0)->k == K_RP) {
                    perr(P, "unexpected right paren");
                    return NULL;
                }
                if (expect_end_of_action(P, "command") < 0)
                    return NULL;
            }
            nd->line = line;
            nd->col = col;
        }
        *tail = nd;
        tail = &nd->next;
    }
}

spgb_template *spgb_template_compile(const char *name, const char *text, size_t len, char *err,
                                     size_t errlen)
{
    if (err && errlen)
        err[0] = '\0';
    if (!name)
        name = "template";
    ablock *arena = NULL;
    spgb_template *t = arena_alloc(&arena, sizeof *t);
    char *nm = t ? arena_alloc(&arena, strlen(name) + 1) : NULL;
    if (!nm) {
        arena_free(arena);
        if (err && errlen)
            snprintf(err, errlen, "%s: out of memory", name);
        return NULL;
    }
    strcpy(nm, name);
    t->name = nm;
    parser P = {.src = text ? text : "",
                .len = text ? len : 0,
                .line = 1,
                .col = 1,
                .name = nm,
                .arena = &arena,
                .err = err,
                .errlen = errlen};
    P.aline = P.acol = 1;
    if (scope_push(&P, "$", 1) == 0) {
        enum term term;
        node *root = parse_list(&P, &term);
        if (!P.failed && term == TERM_END)
            perr(&P, "unexpected {{end}}");
        else if (!P.failed && term == TERM_ELSE)
            perr(&P, "unexpected {{else}}");
        t->root = root;
    }
    free(P.toks);
    free(P.vars);
    if (P.failed) {
        arena_free(arena);
        return NULL;
    }
    t->arena = arena;
    return t;
}

void spgb_template_free(spgb_template *t)
{
    if (t)
        arena_free(t->arena);
}

const char *spgb_template_name(const spgb_template *t)
{
    return t->name;
}

/* ------------------------------------------------------------------ render */

typedef struct buf {
    char *p;
    size_t n, cap;
} buf;

typedef struct rvar {
    const char *s;
    size_t n;
    int slot;
} rvar;

typedef struct rctx {
    const spgb_template *t;
    lua_State *L;
    int dot;
    int line, col;
    buf out;
    rvar *vars;
    size_t nvars, capvars;
    char *err;
    size_t errlen;
    bool failed;
} rctx;

static int rerr(rctx *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int rerr(rctx *r, const char *fmt, ...)
{
    if (r->failed)
        return -1;
    r->failed = true;
    if (!r->err || r->errlen == 0)
        return -1;
    int n = snprintf(r->err, r->errlen, "%s:%d:%d: ", r->t->name, r->line, r->col);
    if (n < 0 || (size_t)n >= r->errlen)
        return -1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->err + n, r->errlen - (size_t)n, fmt, ap);
    va_end(ap);
    return -1;
}

static int buf_add(rctx *r, buf *b, const char *s, size_t n)
{
    if (b->cap - b->n < n + 1) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap - b->n < n + 1) {
            if (cap > SIZE_MAX / 2)
                return rerr(r, "out of memory");
            cap *= 2;
        }
        char *p = realloc(b->p, cap);
        if (!p)
            return rerr(r, "out of memory");
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
    return 0;
}

static int buf_addf(rctx *r, buf *b, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int buf_addf(rctx *r, buf *b, const char *fmt, ...)
{
    char small[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0)
        return rerr(r, "format error");
    if ((size_t)n < sizeof small)
        return buf_add(r, b, small, (size_t)n);
    char *big = malloc((size_t)n + 1);
    if (!big)
        return rerr(r, "out of memory");
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    int rc = buf_add(r, b, big, (size_t)n);
    free(big);
    return rc;
}

static int need_stack(rctx *r, int n)
{
    if (!lua_checkstack(r->L, n))
        return rerr(r, "Lua stack overflow");
    return 0;
}

/* Type names as a Go template author would expect them. */
static const char *type_name(lua_State *L, int idx)
{
    switch (lua_type(L, idx)) {
    case LUA_TNIL:
        return "nil";
    case LUA_TBOOLEAN:
        return "bool";
    case LUA_TNUMBER:
        return lua_isinteger(L, idx) ? "int" : "float64";
    case LUA_TSTRING:
        return "string";
    case LUA_TTABLE:
        return "table";
    default:
        return lua_typename(L, lua_type(L, idx));
    }
}

/* Shortest "%.Ng" that reads back as the same double. */
static void fmt_float(char *b, size_t n, double f)
{
    if (isnan(f)) {
        snprintf(b, n, "NaN");
        return;
    }
    if (isinf(f)) {
        snprintf(b, n, f > 0 ? "+Inf" : "-Inf");
        return;
    }
    if (f == floor(f) && fabs(f) < 9.2e18) {
        snprintf(b, n, "%" PRId64, (int64_t)f);
        return;
    }
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(b, n, "%.*g", prec, f);
        if (strtod(b, NULL) == f)
            return;
    }
}

/* Printed form of a scalar into b (at least 64 bytes). false for nil/table/other. */
static bool scalar_text(lua_State *L, int idx, char *b, size_t n, const char **s, size_t *len)
{
    switch (lua_type(L, idx)) {
    case LUA_TSTRING:
        *s = lua_tolstring(L, idx, len);
        return true;
    case LUA_TBOOLEAN:
        *s = lua_toboolean(L, idx) ? "true" : "false";
        *len = strlen(*s);
        return true;
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx))
            snprintf(b, n, "%lld", (long long)lua_tointeger(L, idx));
        else
            fmt_float(b, n, (double)lua_tonumber(L, idx));
        *s = b;
        *len = strlen(b);
        return true;
    default:
        return false;
    }
}

/* Append the printed form of the value at idx; nil, tables etc. cannot be printed. */
static int print_value(rctx *r, buf *b, int idx)
{
    char nb[64];
    const char *s;
    size_t n;
    if (!scalar_text(r->L, idx, nb, sizeof nb, &s, &n))
        return rerr(r, "cannot print %s", type_name(r->L, idx));
    return buf_add(r, b, s, n);
}

static bool truth(lua_State *L, int idx)
{
    idx = lua_absindex(L, idx);
    switch (lua_type(L, idx)) {
    case LUA_TNIL:
        return false;
    case LUA_TBOOLEAN:
        return lua_toboolean(L, idx);
    case LUA_TNUMBER:
        return lua_isinteger(L, idx) ? lua_tointeger(L, idx) != 0 : lua_tonumber(L, idx) != 0;
    case LUA_TSTRING:
        return lua_rawlen(L, idx) > 0;
    case LUA_TTABLE:
        lua_pushnil(L);
        if (lua_next(L, idx)) {
            lua_pop(L, 2);
            return true;
        }
        return false;
    default:
        return true;
    }
}

/* Number of entries (raw). */
static lua_Integer table_count(lua_State *L, int idx)
{
    idx = lua_absindex(L, idx);
    lua_Integer c = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        c++;
        lua_pop(L, 1);
    }
    return c;
}

/* A table is an array (a Go slice) when its keys are exactly 1..#t. */
static bool is_array(lua_State *L, int idx, lua_Integer *len)
{
    lua_Integer n = (lua_Integer)lua_rawlen(L, idx);
    *len = n;
    return table_count(L, idx) == n;
}

static int bind_var(rctx *r, const char *s, size_t n, int idx)
{
    if (r->nvars == r->capvars) {
        size_t cap = r->capvars ? r->capvars * 2 : 16;
        rvar *v = realloc(r->vars, cap * sizeof *v);
        if (!v)
            return rerr(r, "out of memory");
        r->vars = v;
        r->capvars = cap;
    }
    if (need_stack(r, 2) < 0)
        return -1;
    lua_pushvalue(r->L, idx); /* own slot: assigning to the variable never changes dot */
    r->vars[r->nvars++] = (rvar){s, n, lua_gettop(r->L)};
    return 0;
}

static rvar *find_var(rctx *r, const char *s, size_t n)
{
    for (size_t i = r->nvars; i-- > 0;)
        if (r->vars[i].n == n && memcmp(r->vars[i].s, s, n) == 0)
            return &r->vars[i];
    return NULL;
}

/* "<$v.A.B>" up to and including field upto, for error messages. */
static void describe_chain(char *d, size_t dn, const char *prefix, const field *chain,
                           const field *upto)
{
    size_t o = (size_t)snprintf(d, dn, "<%s", prefix);
    for (const field *f = chain; f && o < dn; f = f->next) {
        o += (size_t)snprintf(d + o, dn - o, ".%.*s", (int)f->n, f->s);
        if (f == upto)
            break;
    }
    if (o < dn)
        snprintf(d + o, dn - o, ">");
}

/* Push base.f1.f2... A missing key is an error. */
static int eval_chain(rctx *r, int base, const char *prefix, const field *chain)
{
    lua_State *L = r->L;
    if (need_stack(r, 3) < 0)
        return -1;
    lua_pushvalue(L, base);
    for (const field *f = chain; f; f = f->next) {
        if (lua_type(L, -1) != LUA_TTABLE) {
            char d[256];
            describe_chain(d, sizeof d, prefix, chain, f);
            return rerr(r, "executing %s: can't evaluate field %.*s in type %s", d, (int)f->n, f->s,
                        type_name(L, -1));
        }
        lua_pushlstring(L, f->s, f->n);
        lua_rawget(L, -2);
        lua_remove(L, -2);
        if (lua_isnil(L, -1)) {
            char d[256];
            describe_chain(d, sizeof d, prefix, chain, f);
            return rerr(r, "executing %s: map has no entry for key \"%.*s\"", d, (int)f->n, f->s);
        }
    }
    return 0;
}

static int eval_pipe(rctx *r, const pipe *p);
static int call_func(rctx *r, int fn, const arg *args, int nargs, bool final);

/* Push the value of one operand. */
static int eval_arg(rctx *r, const arg *a)
{
    lua_State *L = r->L;
    if (need_stack(r, 4) < 0)
        return -1;
    switch (a->kind) {
    case A_DOT:
        lua_pushvalue(L, r->dot);
        return 0;
    case A_FIELD:
        return eval_chain(r, r->dot, "", a->chain);
    case A_VAR: {
        rvar *v = find_var(r, a->s, a->n);
        if (!v)
            return rerr(r, "undefined variable \"%.*s\"", (int)a->n, a->s);
        return eval_chain(r, v->slot, a->s, a->chain);
    }
    case A_STR:
        lua_pushlstring(L, a->s, a->n);
        return 0;
    case A_INT:
        lua_pushinteger(L, a->i);
        return 0;
    case A_FLOAT:
        lua_pushnumber(L, (lua_Number)a->f);
        return 0;
    case A_BOOL:
        lua_pushboolean(L, a->b);
        return 0;
    case A_NIL:
        lua_pushnil(L);
        return 0;
    case A_FUNC:
        return call_func(r, a->fn, NULL, 0, false);
    case A_PIPE:
        if (eval_pipe(r, a->pipe) < 0)
            return -1;
        if (a->chain) {
            if (eval_chain(r, lua_gettop(L), "(...)", a->chain) < 0)
                return -1;
            lua_remove(L, -2);
        }
        return 0;
    }
    return rerr(r, "internal error: bad operand");
}

static int want_args(rctx *r, int fn, int got, int want, bool at_least)
{
    if (at_least ? got >= want : got == want)
        return 0;
    return rerr(r, "wrong number of args for %s: want %s%d got %d", fn_names[fn],
                at_least ? "at least " : "", want, got);
}

static bool number_as_int(lua_State *L, int idx, lua_Integer *v)
{
    if (lua_type(L, idx) != LUA_TNUMBER)
        return false;
    if (lua_isinteger(L, idx)) {
        *v = lua_tointeger(L, idx);
        return true;
    }
    lua_Number f = lua_tonumber(L, idx);
    if (f == floor(f) && fabs(f) < 9.2e18) {
        *v = (lua_Integer)f;
        return true;
    }
    return false;
}

/* Compare a and b (Go eq/lt semantics; integers and floats compare by value). *res is
 * exactly -1, 0 or 1, or 2 when unordered (NaN); ordered requests lt/le/gt/ge. */
static int compare(rctx *r, const char *fname, int a, int b, bool ordered, int *res)
{
    lua_State *L = r->L;
    int ta = lua_type(L, a), tb = lua_type(L, b);
    if (ta != tb) {
        return rerr(r, "error calling %s: incompatible types for comparison (%s and %s)", fname,
                    type_name(L, a), type_name(L, b));
    }
    switch (ta) {
    case LUA_TNUMBER:
        if (lua_isinteger(L, a) && lua_isinteger(L, b)) {
            lua_Integer x = lua_tointeger(L, a), y = lua_tointeger(L, b);
            *res = x < y ? -1 : x > y;
        } else {
            lua_Number x = lua_tonumber(L, a), y = lua_tonumber(L, b);
            *res = x < y ? -1 : x > y ? 1 : x == y ? 0 : 2;
        }
        return 0;
    case LUA_TSTRING: {
        size_t na, nb;
        const char *sa = lua_tolstring(L, a, &na), *sb = lua_tolstring(L, b, &nb);
        int c = memcmp(sa, sb, na < nb ? na : nb);
        /* memcmp promises only a sign; callers test for exactly -1 and 1 */
        *res = c < 0 ? -1 : c > 0 ? 1 : na < nb ? -1 : na > nb;
        return 0;
    }
    case LUA_TBOOLEAN:
    case LUA_TNIL:
        if (ordered)
            return rerr(r, "error calling %s: invalid type for comparison (%s)", fname,
                        type_name(L, a));
        *res = lua_toboolean(L, a) != lua_toboolean(L, b);
        return 0;
    default:
        return rerr(r, "error calling %s: non-comparable type %s", fname, type_name(L, a));
    }
}

/* Go %q: double-quoted with Go escapes. */
static int quote_go(rctx *r, buf *b, const char *s, size_t n)
{
    if (buf_add(r, b, "\"", 1) < 0)
        return -1;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        const char *e = NULL;
        char hex[8];
        switch (c) {
        case '"':
            e = "\\\"";
            break;
        case '\\':
            e = "\\\\";
            break;
        case '\n':
            e = "\\n";
            break;
        case '\t':
            e = "\\t";
            break;
        case '\r':
            e = "\\r";
            break;
        default:
            if (c < 0x20 || c == 0x7f) {
                snprintf(hex, sizeof hex, "\\x%02x", c);
                e = hex;
            }
        }
        if (e ? buf_add(r, b, e, strlen(e)) : buf_add(r, b, (const char *)&c, 1))
            return -1;
    }
    return buf_add(r, b, "\"", 1);
}

/* Go's "%!verb(type=value)" for an argument that does not fit the verb. */
static int bad_verb(rctx *r, buf *b, char verb, int idx)
{
    char nb[64];
    const char *s;
    size_t n;
    if (idx == 0)
        return buf_addf(r, b, "%%!%c(MISSING)", verb);
    if (!scalar_text(r->L, idx, nb, sizeof nb, &s, &n))
        return buf_addf(r, b, "%%!%c(%s)", verb, type_name(r->L, idx));
    return buf_addf(r, b, "%%!%c(%s=%.*s)", verb, type_name(r->L, idx), (int)n, s);
}

/* printf: the format at slot base, arguments at base+1..base+argc-1. */
static int do_printf(rctx *r, buf *b, int base, int argc)
{
    lua_State *L = r->L;
    if (lua_type(L, base) != LUA_TSTRING)
        return rerr(r, "error calling printf: format must be a string, got %s", type_name(L, base));
    size_t fl;
    const char *f = lua_tolstring(L, base, &fl);
    int ai = 1;
    for (size_t i = 0; i < fl; i++) {
        if (f[i] != '%') {
            size_t j = i;
            while (j < fl && f[j] != '%')
                j++;
            if (buf_add(r, b, f + i, j - i) < 0)
                return -1;
            i = j - 1;
            continue;
        }
        if (i + 1 < fl && f[i + 1] == '%') {
            if (buf_add(r, b, "%", 1) < 0)
                return -1;
            i++;
            continue;
        }
        /* %[flags][width][.prec]verb */
        char spec[32];
        size_t so = 0;
        spec[so++] = '%';
        i++;
        while (i < fl && strchr("-+# 0", f[i]) && so < 8)
            spec[so++] = f[i++];
        int wd = 0;
        while (i < fl && is_digit((unsigned char)f[i]) && wd < 4) {
            spec[so++] = f[i++];
            wd++;
        }
        if (i < fl && f[i] == '.') {
            spec[so++] = f[i++];
            int pd = 0;
            while (i < fl && is_digit((unsigned char)f[i]) && pd < 4) {
                spec[so++] = f[i++];
                pd++;
            }
        }
        if (i >= fl) {
            if (buf_add(r, b, "%!(NOVERB)", 10) < 0)
                return -1;
            break;
        }
        char verb = f[i];
        int idx = ai < argc ? base + ai : 0;
        ai++;
        if (!idx) {
            if (bad_verb(r, b, verb, 0) < 0)
                return -1;
            continue;
        }
        lua_Integer iv;
        int rc;
        switch (verb) {
        case 'v':
        case 's': {
            char nb[64];
            const char *s;
            size_t n;
            if ((verb == 's' && lua_type(L, idx) != LUA_TSTRING) ||
                !scalar_text(L, idx, nb, sizeof nb, &s, &n)) {
                if (verb == 'v')
                    return rerr(r, "error calling printf: cannot print %s", type_name(L, idx));
                rc = bad_verb(r, b, verb, idx);
                break;
            }
            memcpy(spec + so, ".*s", 4);
            if (strchr(spec, '.') < spec + so) {
                /* explicit precision: cut the string like Go (bytes here) */
                spec[so] = 's';
                spec[so + 1] = '\0';
                char *tmp = malloc(n + 1);
                if (!tmp)
                    return rerr(r, "out of memory");
                memcpy(tmp, s, n);
                tmp[n] = '\0';
                rc = buf_addf(r, b, spec, tmp);
                free(tmp);
            } else {
                rc = buf_addf(r, b, spec, (int)n, s);
            }
            break;
        }
        case 'd':
        case 'x':
        case 'X':
        case 'o':
        case 'c':
            if (!number_as_int(L, idx, &iv)) {
                rc = bad_verb(r, b, verb, idx);
                break;
            }
            if (verb == 'c') {
                char u[4];
                rc = iv >= 0 && iv <= 0x10FFFF ? buf_add(r, b, u, put_utf8(u, (uint32_t)iv))
                                               : bad_verb(r, b, verb, idx);
                break;
            }
            spec[so++] = 'l';
            spec[so++] = 'l';
            spec[so++] = verb;
            spec[so] = '\0';
            if (verb != 'd' && iv < 0) {
                /* Go prints negative hex/octal as a sign and the magnitude */
                char tmp[72];
                unsigned long long mag = (unsigned long long)(-(iv + 1)) + 1ULL;
                snprintf(tmp, sizeof tmp,
                         verb == 'o'   ? "-%llo"
                         : verb == 'x' ? "-%llx"
                                       : "-%llX",
                         mag);
                rc = buf_add(r, b, tmp, strlen(tmp));
                break;
            }
            rc = buf_addf(r, b, spec, (long long)iv);
            break;
        case 'f':
        case 'F':
        case 'e':
        case 'E':
        case 'g':
        case 'G':
            if (lua_type(L, idx) != LUA_TNUMBER) {
                rc = bad_verb(r, b, verb, idx);
                break;
            }
            spec[so++] = verb;
            spec[so] = '\0';
            rc = buf_addf(r, b, spec, (double)lua_tonumber(L, idx));
            break;
        case 't':
            if (lua_type(L, idx) != LUA_TBOOLEAN) {
                rc = bad_verb(r, b, verb, idx);
                break;
            }
            rc = print_value(r, b, idx);
            break;
        case 'q':
            if (lua_type(L, idx) != LUA_TSTRING) {
                rc = bad_verb(r, b, verb, idx);
                break;
            } else {
                size_t n;
                const char *s = lua_tolstring(L, idx, &n);
                rc = quote_go(r, b, s, n);
            }
            break;
        default:
            rc = bad_verb(r, b, verb, idx);
        }
        if (rc < 0)
            return -1;
    }
    if (ai < argc) {
        if (buf_add(r, b, "%!(EXTRA ", 9) < 0)
            return -1;
        for (; ai < argc; ai++) {
            char nb[64];
            const char *s = "?";
            size_t n = 1;
            scalar_text(L, base + ai, nb, sizeof nb, &s, &n);
            if (buf_addf(r, b, "%s%s=%.*s", ai + 1 < argc ? "" : "", type_name(L, base + ai),
                         (int)n, s) < 0 ||
                buf_add(r, b, ai + 1 < argc ? ", " : ")", ai + 1 < argc ? 2 : 1) < 0)
                return -1;
        }
    }
    return 0;
}

/* print/println: Go's Sprint (space between operands when neither is a string) / Sprintln. */
static int do_print(rctx *r, buf *b, int base, int argc, bool ln)
{
    for (int k = 0; k < argc; k++) {
        if (k > 0 && (ln || (lua_type(r->L, base + k - 1) != LUA_TSTRING &&
                             lua_type(r->L, base + k) != LUA_TSTRING)))
            if (buf_add(r, b, " ", 1) < 0)
                return -1;
        if (print_value(r, b, base + k) < 0)
            return -1;
    }
    return ln ? buf_add(r, b, "\n", 1) : 0;
}

static int do_index(rctx *r, int base, int argc)
{
    lua_State *L = r->L;
    lua_pushvalue(L, base);
    for (int k = 1; k < argc; k++) {
        int key = base + k;
        if (lua_type(L, -1) != LUA_TTABLE)
            return rerr(r, "error calling index: can't index item of type %s", type_name(L, -1));
        lua_Integer iv, n;
        if (number_as_int(L, key, &iv) && is_array(L, lua_gettop(L), &n)) {
            /* a Go slice: 0-based */
            if (iv < 0 || iv >= n)
                return rerr(r, "error calling index: index out of range: %lld", (long long)iv);
            lua_rawgeti(L, -1, iv + 1);
        } else if (lua_type(L, key) == LUA_TSTRING || lua_type(L, key) == LUA_TNUMBER ||
                   lua_type(L, key) == LUA_TBOOLEAN) {
            if (lua_type(L, key) == LUA_TNUMBER && isnan(lua_tonumber(L, key)))
                return rerr(r, "error calling index: NaN key");
            lua_pushvalue(L, key);
            lua_rawget(L, -2); /* a missing map key gives nil, as Go gives the zero value */
        } else {
            return rerr(r, "error calling index: cannot index with %s", type_name(L, key));
        }
        lua_remove(L, -2);
    }
    return 0;
}

/*
 * Call fn with the operands args (nargs of them) and, if final, the value at the top
 * of the stack as the last argument (which the result then replaces). Pushes the result.
 */
static int call_func(rctx *r, int fn, const arg *args, int nargs, bool final)
{
    lua_State *L = r->L;
    int start = lua_gettop(L) + (final ? 0 : 1); /* where the result goes */
    int argc = nargs + (final ? 1 : 0);
    if (need_stack(r, 6) < 0)
        return -1;
    if (fn == F_AND || fn == F_OR) {
        if (want_args(r, fn, argc, 1, true) < 0)
            return -1;
        const arg *a = args;
        for (int k = 0; k < argc; k++) {
            if (k < nargs) {
                if (eval_arg(r, a) < 0)
                    return -1;
                a = a->next;
            } else {
                lua_pushvalue(L, start); /* the piped value */
            }
            bool t = truth(L, -1);
            if ((fn == F_AND && !t) || (fn == F_OR && t) || k == argc - 1)
                break;
            lua_pop(L, 1);
        }
        lua_copy(L, -1, start);
        lua_settop(L, start);
        return 0;
    }
    int base = lua_gettop(L) + 1;
    for (const arg *a = args; a; a = a->next)
        if (eval_arg(r, a) < 0)
            return -1;
    if (final) {
        if (need_stack(r, 2) < 0)
            return -1;
        lua_pushvalue(L, start);
    }
    int rc = 0, cmp = 0;
    buf b = {0};
    switch (fn) {
    case F_NOT:
        if (want_args(r, fn, argc, 1, false) < 0)
            return -1;
        lua_pushboolean(L, !truth(L, base));
        break;
    case F_EQ:
        if (want_args(r, fn, argc, 2, true) < 0)
            return -1;
        {
            bool any = false;
            for (int k = 1; k < argc && !any; k++) {
                if (compare(r, "eq", base, base + k, false, &cmp) < 0)
                    return -1;
                any = cmp == 0;
            }
            lua_pushboolean(L, any);
        }
        break;
    case F_NE:
    case F_LT:
    case F_LE:
    case F_GT:
    case F_GE:
        if (want_args(r, fn, argc, 2, false) < 0 ||
            compare(r, fn_names[fn], base, base + 1, fn != F_NE, &cmp) < 0)
            return -1;
        lua_pushboolean(L, fn == F_NE   ? cmp != 0
                           : fn == F_LT ? cmp == -1
                           : fn == F_LE ? (cmp == -1 || cmp == 0)
                           : fn == F_GT ? cmp == 1
                                        : (cmp == 1 || cmp == 0));
        break;
    case F_LEN:
        if (want_args(r, fn, argc, 1, false) < 0)
            return -1;
        if (lua_type(L, base) == LUA_TSTRING)
            lua_pushinteger(L, (lua_Integer)lua_rawlen(L, base));
        else if (lua_type(L, base) == LUA_TTABLE)
            lua_pushinteger(L, table_count(L, base));
        else
            return rerr(r, "error calling len: len of type %s", type_name(L, base));
        break;
    case F_INDEX:
        if (want_args(r, fn, argc, 1, true) < 0 || do_index(r, base, argc) < 0)
            return -1;
        break;
    case F_PRINTF:
    case F_PRINT:
    case F_PRINTLN:
        if (fn == F_PRINTF && want_args(r, fn, argc, 1, true) < 0)
            return -1;
        rc = fn == F_PRINTF ? do_printf(r, &b, base, argc)
                            : do_print(r, &b, base, argc, fn == F_PRINTLN);
        if (rc == 0)
            lua_pushlstring(L, b.p ? b.p : "", b.n);
        free(b.p);
        if (rc < 0)
            return -1;
        break;
    default:
        return rerr(r, "internal error: bad function");
    }
    lua_copy(L, -1, start);
    lua_settop(L, start);
    return 0;
}

static int eval_cmd(rctx *r, const cmd *c, bool final)
{
    if (c->args->kind == A_FUNC)
        return call_func(r, c->args->fn, c->args->next, c->nargs - 1, final);
    return eval_arg(r, c->args);
}

/* Push the pipeline's value (declarations are the caller's business). */
static int eval_pipe(rctx *r, const pipe *p)
{
    bool final = false;
    for (const cmd *c = p->cmds; c; c = c->next) {
        if (eval_cmd(r, c, final) < 0)
            return -1;
        final = true;
    }
    return 0;
}

static int exec_list(rctx *r, const node *n);

/* Sort keys of a map-like table: numbers numerically if all keys are numbers, else as strings. */
typedef struct mkey {
    const char *s; /* a string key's bytes (anchored by the table); NULL for a number */
    size_t n;      /* length of the key's text: s, or nb for a number */
    lua_Number num;
    lua_Integer iv;
    int type; /* LUA_TSTRING / LUA_TNUMBER */
    bool isint;
    char nb[40];
} mkey;

static int cmp_num(const void *a, const void *b)
{
    const mkey *x = a, *y = b;
    if (x->isint && y->isint)
        return x->iv < y->iv ? -1 : x->iv > y->iv;
    return x->num < y->num ? -1 : x->num > y->num;
}

/* The key's text. A number's lives in its own slot, which qsort moves: look it up
 * from wherever the key is now, never through a stored pointer. */
static const char *key_text(const mkey *k)
{
    return k->type == LUA_TSTRING ? k->s : k->nb;
}

static int cmp_str(const void *a, const void *b)
{
    const mkey *x = a, *y = b;
    int c = memcmp(key_text(x), key_text(y), x->n < y->n ? x->n : y->n);
    return c ? c : x->n < y->n ? -1 : x->n > y->n;
}

static int range_body(rctx *r, const node *nd, int key, int elem)
{
    size_t nv = r->nvars;
    int dot = r->dot;
    r->dot = elem;
    const pipe *p = nd->pipe;
    int rc = 0;
    if (p->ndecl == 2)
        rc = bind_var(r, p->var[0], p->varlen[0], key) < 0 ||
                     bind_var(r, p->var[1], p->varlen[1], elem) < 0
                 ? -1
                 : 0;
    else if (p->ndecl == 1)
        rc = bind_var(r, p->var[0], p->varlen[0], elem);
    if (rc == 0)
        rc = exec_list(r, nd->list);
    r->dot = dot;
    r->nvars = nv;
    return rc;
}

static int exec_range(rctx *r, const node *nd, int v)
{
    lua_State *L = r->L;
    int t = lua_type(L, v);
    if (t == LUA_TNIL)
        return exec_list(r, nd->elselist);
    if (t != LUA_TTABLE) {
        char nb[64];
        const char *s;
        size_t n;
        if (scalar_text(L, v, nb, sizeof nb, &s, &n))
            return rerr(r, "range can't iterate over %.*s", (int)(n > 100 ? 100 : n), s);
        return rerr(r, "range can't iterate over %s", type_name(L, v));
    }
    lua_Integer len;
    if (is_array(L, v, &len)) {
        if (len == 0)
            return exec_list(r, nd->elselist);
        for (lua_Integer i = 1; i <= len; i++) {
            if (need_stack(r, 4) < 0)
                return -1;
            int top = lua_gettop(L);
            lua_pushinteger(L, i - 1); /* Go slice index */
            lua_rawgeti(L, v, i);
            int rc = range_body(r, nd, top + 1, top + 2);
            lua_settop(L, top);
            if (rc < 0)
                return -1;
        }
        return 0;
    }
    lua_Integer count = table_count(L, v);
    if (need_stack(r, 6) < 0)
        return -1;
    if ((size_t)count > SIZE_MAX / sizeof(mkey))
        return rerr(r, "out of memory");
    /* userdata so that a Lua error (out of memory) cannot leak it */
    mkey *keys = lua_newuserdatauv(L, (size_t)count * sizeof *keys, 0);
    size_t nk = 0;
    bool allnum = true;
    lua_pushnil(L);
    while (lua_next(L, v)) {
        lua_pop(L, 1);
        mkey *k = &keys[nk++];
        memset(k, 0, sizeof *k);
        k->type = lua_type(L, -1);
        if (k->type == LUA_TSTRING) {
            k->s = lua_tolstring(L, -1, &k->n);
            allnum = false;
        } else if (k->type == LUA_TNUMBER) {
            k->isint = lua_isinteger(L, -1);
            k->iv = k->isint ? lua_tointeger(L, -1) : 0;
            k->num = lua_tonumber(L, -1);
            if (k->isint)
                snprintf(k->nb, sizeof k->nb, "%lld", (long long)k->iv);
            else
                fmt_float(k->nb, sizeof k->nb, (double)k->num);
            k->n = strlen(k->nb);
        } else {
            return rerr(r, "range over table with a %s key", type_name(L, -1));
        }
    }
    qsort(keys, nk, sizeof *keys, allnum ? cmp_num : cmp_str);
    for (size_t i = 0; i < nk; i++) {
        if (need_stack(r, 4) < 0)
            return -1;
        int top = lua_gettop(L);
        if (keys[i].type == LUA_TSTRING)
            lua_pushlstring(L, keys[i].s, keys[i].n);
        else if (keys[i].isint)
            lua_pushinteger(L, keys[i].iv);
        else
            lua_pushnumber(L, keys[i].num);
        lua_pushvalue(L, -1);
        lua_rawget(L, v);
        int rc = range_body(r, nd, top + 1, top + 2);
        lua_settop(L, top);
        if (rc < 0)
            return -1;
    }
    return 0;
}

static int exec_node(rctx *r, const node *nd)
{
    lua_State *L = r->L;
    if (nd->kind == N_TEXT)
        return buf_add(r, &r->out, nd->text, nd->len);
    r->line = nd->line;
    r->col = nd->col;
    int top = lua_gettop(L);
    size_t nv = r->nvars;
    const pipe *p = nd->pipe;
    if (eval_pipe(r, p) < 0)
        return -1;
    int v = lua_gettop(L);
    int rc = 0;
    if (nd->kind != N_RANGE && p->ndecl == 1) {
        if (p->assign) {
            rvar *var = find_var(r, p->var[0], p->varlen[0]);
            if (!var)
                return rerr(r, "undefined variable \"%s\"", p->var[0]);
            lua_copy(L, v, var->slot);
        } else if (bind_var(r, p->var[0], p->varlen[0], v) < 0) {
            return -1;
        }
        if (nd->kind == N_ACTION) {
            /* a declaration prints nothing and stays in scope until the enclosing end */
            if (p->assign)
                lua_settop(L, top);
            return 0;
        }
    }
    switch (nd->kind) {
    case N_ACTION:
        rc = print_value(r, &r->out, v);
        break;
    case N_IF:
        rc = exec_list(r, truth(L, v) ? nd->list : nd->elselist);
        break;
    case N_WITH:
        if (truth(L, v)) {
            int dot = r->dot;
            r->dot = v;
            rc = exec_list(r, nd->list);
            r->dot = dot;
        } else {
            rc = exec_list(r, nd->elselist);
        }
        break;
    case N_RANGE:
        rc = exec_range(r, nd, v);
        break;
    default:
        break;
    }
    lua_settop(L, top);
    r->nvars = nv;
    return rc;
}

static int exec_list(rctx *r, const node *n)
{
    int top = lua_gettop(r->L);
    size_t nv = r->nvars;
    int rc = 0;
    for (; n && rc == 0; n = n->next)
        rc = exec_node(r, n);
    lua_settop(r->L, top);
    r->nvars = nv;
    return rc;
}

/* lua_pcall'd: 1 = rctx, 2 = dot. */
static int render_protected(lua_State *L)
{
    rctx *r = lua_touserdata(L, 1);
    r->L = L;
    r->dot = 2;
    if (bind_var(r, "$", 1, 2) < 0)
        return 0;
    exec_list(r, r->t->root);
    return 0;
}

int spgb_template_render(const spgb_template *t, lua_State *L, int ctx_idx, char **out,
                         size_t *outlen, char *err, size_t errlen)
{
    *out = NULL;
    if (outlen)
        *outlen = 0;
    if (err && errlen)
        err[0] = '\0';
    rctx r = {.t = t, .line = 1, .col = 1, .err = err, .errlen = errlen};
    ctx_idx = lua_absindex(L, ctx_idx);
    if (!lua_checkstack(L, 4)) {
        if (err && errlen)
            snprintf(err, errlen, "%s:1:1: Lua stack overflow", t->name);
        return -1;
    }
    int top = lua_gettop(L);
    lua_pushcfunction(L, render_protected);
    lua_pushlightuserdata(L, &r);
    lua_pushvalue(L, ctx_idx);
    int st = lua_pcall(L, 2, 0, 0);
    if (st != LUA_OK && !r.failed) {
        r.L = L;
        const char *m = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "error";
        rerr(&r, "%s", st == LUA_ERRMEM ? "out of memory" : m);
    }
    lua_settop(L, top);
    free(r.vars);
    if (!r.failed && !r.out.p) {
        r.out.p = malloc(1);
        if (r.out.p)
            r.out.p[0] = '\0';
        else
            rerr(&r, "out of memory");
    }
    if (r.failed) {
        free(r.out.p);
        return -1;
    }
    *out = r.out.p;
    if (outlen)
        *outlen = r.out.n;
    return 0;
}

/* ------------------------------------------------------------------ Lua module */

typedef struct tbox {
    spgb_template *t;
} tbox;

static tbox *check_tpl(lua_State *L, int idx)
{
    tbox *b = luaL_checkudata(L, idx, TPL_MT);
    if (!b->t)
        luaL_error(L, "template is freed");
    return b;
}

static int push_lstring_k(lua_State *L)
{
    const char *s = lua_touserdata(L, 1);
    size_t n = (size_t)lua_tointeger(L, 2);
    lua_pushlstring(L, s, n);
    return 1;
}

/* Push a malloc'd string and free it, also when pushing fails. */
static void push_and_free(lua_State *L, char *s, size_t n)
{
    lua_pushcfunction(L, push_lstring_k);
    lua_pushlightuserdata(L, s);
    lua_pushinteger(L, (lua_Integer)n);
    int st = lua_pcall(L, 2, 1, 0);
    free(s);
    if (st != LUA_OK)
        lua_error(L);
}

/*
 * template.compile(text [, name]) -> t | nil, err
 * Anywhere; does not yield. name (default "template") appears in error messages.
 * err is "name:line:col: message". Raises on wrong argument types.
 */
static int l_compile(lua_State *L)
{
    size_t len;
    const char *text = luaL_checklstring(L, 1, &len);
    const char *name = luaL_optstring(L, 2, "template");
    tbox *b = lua_newuserdatauv(L, sizeof *b, 0);
    b->t = NULL;
    luaL_setmetatable(L, TPL_MT);
    char err[512];
    b->t = spgb_template_compile(name, text, len, err, sizeof err);
    if (!b->t) {
        luaL_pushfail(L);
        lua_pushstring(L, err);
        return 2;
    }
    return 1;
}

/*
 * template.load(path) -> t | nil, err
 * Anywhere; does not yield (reads the file synchronously). Compiles the file with
 * path as the template name. err: "path: No such file or directory" or a compile error.
 */
static int l_load(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    tbox *b = lua_newuserdatauv(L, sizeof *b, 0);
    b->t = NULL;
    luaL_setmetatable(L, TPL_MT);
    char err[512];
    char *text;
    size_t len;
    if (spgb_fs_read(path, &text, &len, err, sizeof err) < 0) {
        luaL_pushfail(L);
        lua_pushstring(L, err);
        return 2;
    }
    b->t = spgb_template_compile(path, text, len, err, sizeof err);
    free(text);
    if (!b->t) {
        luaL_pushfail(L);
        lua_pushstring(L, err);
        return 2;
    }
    return 1;
}

/*
 * t:render([ctx]) -> string | nil, err
 * Anywhere; does not yield. ctx (any value, usually a table) is dot and $.
 * err: "name:line:col: message" for a missing key, a type error, a bad function call.
 */
static int l_render(lua_State *L)
{
    tbox *b = check_tpl(L, 1);
    lua_settop(L, 2);
    char err[512];
    char *out;
    size_t n;
    if (spgb_template_render(b->t, L, 2, &out, &n, err, sizeof err) < 0) {
        luaL_pushfail(L);
        lua_pushstring(L, err);
        return 2;
    }
    push_and_free(L, out, n);
    return 1;
}

/* t.name: the template's name. */
static int l_name(lua_State *L)
{
    lua_pushstring(L, check_tpl(L, 1)->t->name);
    return 1;
}

static int l_gc(lua_State *L)
{
    tbox *b = luaL_checkudata(L, 1, TPL_MT);
    spgb_template_free(b->t);
    b->t = NULL;
    return 0;
}

static int l_tostring(lua_State *L)
{
    tbox *b = luaL_checkudata(L, 1, TPL_MT);
    if (b->t)
        lua_pushfstring(L, "template (%s)", b->t->name);
    else
        lua_pushliteral(L, "template (freed)");
    return 1;
}

int luaopen_template(lua_State *L)
{
    static const luaL_Reg methods[] = {{"render", l_render}, {"name", l_name}, {NULL, NULL}};
    static const luaL_Reg meta[] = {
        {"__gc", l_gc}, {"__close", l_gc}, {"__tostring", l_tostring}, {NULL, NULL}};
    static const luaL_Reg funcs[] = {{"compile", l_compile}, {"load", l_load}, {NULL, NULL}};
    if (luaL_newmetatable(L, TPL_MT)) {
        luaL_setfuncs(L, meta, 0);
        luaL_newlib(L, methods);
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);
    luaL_newlib(L, funcs);
    return 1;
}
