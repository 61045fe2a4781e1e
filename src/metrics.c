/*
 * metrics: Prometheus registry in C. See metrics.h.
 *
 * Layout: the registry is an array of metrics kept sorted by name; each metric
 * keeps its series in an array sorted by label values (compared label by label),
 * so lookups are binary searches and the exposition is deterministic without a
 * sort at scrape time.
 */
#include "metrics.h"

#include <lauxlib.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define METRIC_MT "spgb.metric"

static const double default_buckets[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};

typedef struct {
    char **values; /* one per label */
    double value;  /* gauge, counter; histogram: sum */
    uint64_t count;
    uint64_t *buckets; /* histogram: non-cumulative count per bound (+Inf last) */
} series;

struct spgb_metric {
    spgb_metric_type type;
    char *name;
    char *help;
    char **labels;
    size_t nlabels;
    double *bounds; /* histogram upper bounds, +Inf last */
    size_t nbounds;
    series *s;
    size_t ns, cap;
};

static struct {
    spgb_metric **m;
    size_t n, cap;
    unsigned generation; /* bumped by clear, so stale Lua handles are detected */
} R;

static char *xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    if (p)
        memcpy(p, s, n);
    return p;
}

static void seterr(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || !errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

int spgb_metrics_valid_name(const char *s)
{
    if (!s || !*s)
        return 0;
    for (const char *p = s; *p; p++) {
        char c = *p;
        int alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
        if (!alpha && !(p != s && c >= '0' && c <= '9'))
            return 0;
    }
    return 1;
}

int spgb_metrics_valid_label(const char *s)
{
    if (!s || !*s || (s[0] == '_' && s[1] == '_'))
        return 0; /* names starting with __ are reserved by Prometheus */
    for (const char *p = s; *p; p++) {
        char c = *p;
        int alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
        if (!alpha && !(p != s && c >= '0' && c <= '9'))
            return 0;
    }
    return 1;
}

static void free_series(spgb_metric *m, series *s)
{
    for (size_t i = 0; i < m->nlabels; i++)
        free(s->values[i]);
    free(s->values);
    free(s->buckets);
}

static void free_metric(spgb_metric *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->ns; i++)
        free_series(m, &m->s[i]);
    free(m->s);
    for (size_t i = 0; i < m->nlabels; i++)
        free(m->labels[i]);
    free(m->labels);
    free(m->bounds);
    free(m->name);
    free(m->help);
    free(m);
}

/* Index of name in the registry, or -(insertion point) - 1. */
static long find_index(const char *name)
{
    size_t lo = 0, hi = R.n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(R.m[mid]->name, name);
        if (c == 0)
            return (long)mid;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return -(long)lo - 1;
}

spgb_metric *spgb_metrics_find(const char *name)
{
    long i = find_index(name);
    return i >= 0 ? R.m[i] : NULL;
}

spgb_metric_type spgb_metrics_type(const spgb_metric *m)
{
    return m->type;
}

size_t spgb_metrics_label_count(const spgb_metric *m)
{
    return m->nlabels;
}

const char *spgb_metrics_label_name(const spgb_metric *m, size_t i)
{
    return i < m->nlabels ? m->labels[i] : NULL;
}

static const char *type_name(spgb_metric_type t)
{
    return t == SPGB_METRIC_GAUGE ? "gauge" : t == SPGB_METRIC_COUNTER ? "counter" : "histogram";
}

spgb_metric *spgb_metrics_register(spgb_metric_type type, const char *name, const char *help,
                                   const char *const *labels, size_t nlabels, const double *buckets,
                                   size_t nbuckets, char *err, size_t errlen)
{
    if (!spgb_metrics_valid_name(name)) {
        seterr(err, errlen, "invalid metric name '%s'", name ? name : "(null)");
        return NULL;
    }
    for (size_t i = 0; i < nlabels; i++) {
        if (!spgb_metrics_valid_label(labels[i])) {
            seterr(err, errlen, "invalid label name '%s'", labels[i] ? labels[i] : "(null)");
            return NULL;
        }
        if (type == SPGB_METRIC_HISTOGRAM && strcmp(labels[i], "le") == 0) {
            seterr(err, errlen, "label name 'le' is reserved for histograms");
            return NULL;
        }
        for (size_t j = 0; j < i; j++)
            if (strcmp(labels[i], labels[j]) == 0) {
                seterr(err, errlen, "duplicate label name '%s'", labels[i]);
                return NULL;
            }
    }
    long at = find_index(name);
    if (at >= 0) {
        spgb_metric *m = R.m[at];
        if (m->type != type) {
            seterr(err, errlen, "metric '%s' is already registered as a %s", name,
                   type_name(m->type));
            return NULL;
        }
        int same = m->nlabels == nlabels;
        for (size_t i = 0; same && i < nlabels; i++)
            same = strcmp(m->labels[i], labels[i]) == 0;
        if (!same) {
            seterr(err, errlen, "metric '%s' is already registered with other labels", name);
            return NULL;
        }
        return m;
    }
    if (type == SPGB_METRIC_HISTOGRAM) {
        if (!buckets || nbuckets == 0) {
            buckets = default_buckets;
            nbuckets = sizeof default_buckets / sizeof default_buckets[0];
        }
        for (size_t i = 0; i < nbuckets; i++) {
            if (isnan(buckets[i]) || (i > 0 && !(buckets[i] > buckets[i - 1]))) {
                seterr(err, errlen, "histogram '%s': buckets must be increasing numbers", name);
                return NULL;
            }
        }
    }
    spgb_metric *m = calloc(1, sizeof *m);
    if (!m)
        goto oom;
    m->type = type;
    m->name = xstrdup(name);
    m->help = xstrdup(help ? help : "");
    m->labels = calloc(nlabels ? nlabels : 1, sizeof *m->labels);
    if (!m->name || !m->help || !m->labels)
        goto oom;
    m->nlabels = nlabels;
    for (size_t i = 0; i < nlabels; i++)
        if (!(m->labels[i] = xstrdup(labels[i])))
            goto oom;
    if (type == SPGB_METRIC_HISTOGRAM) {
        int has_inf = isinf(buckets[nbuckets - 1]) && buckets[nbuckets - 1] > 0;
        m->nbounds = nbuckets + (has_inf ? 0 : 1);
        m->bounds = malloc(m->nbounds * sizeof *m->bounds);
        if (!m->bounds)
            goto oom;
        memcpy(m->bounds, buckets, nbuckets * sizeof *buckets);
        m->bounds[m->nbounds - 1] = INFINITY;
    }
    if (R.n == R.cap) {
        size_t cap = R.cap ? R.cap * 2 : 16;
        spgb_metric **nm = realloc(R.m, cap * sizeof *nm);
        if (!nm)
            goto oom;
        R.m = nm;
        R.cap = cap;
    }
    size_t pos = (size_t)(-at - 1);
    memmove(&R.m[pos + 1], &R.m[pos], (R.n - pos) * sizeof *R.m);
    R.m[pos] = m;
    R.n++;
    return m;
oom:
    free_metric(m);
    seterr(err, errlen, "out of memory");
    return NULL;
}

static int cmp_values(const spgb_metric *m, char *const *a, const char *const *b)
{
    for (size_t i = 0; i < m->nlabels; i++) {
        int c = strcmp(a[i], b[i]);
        if (c)
            return c;
    }
    return 0;
}

static long find_series(const spgb_metric *m, const char *const *values)
{
    size_t lo = 0, hi = m->ns;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = cmp_values(m, m->s[mid].values, values);
        if (c == 0)
            return (long)mid;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return -(long)lo - 1;
}

/* The series for values, created (zero) when missing; NULL on out of memory. */
static series *get_series(spgb_metric *m, const char *const *values)
{
    long at = find_series(m, values);
    if (at >= 0)
        return &m->s[at];
    if (m->ns == m->cap) {
        size_t cap = m->cap ? m->cap * 2 : 4;
        series *ns = realloc(m->s, cap * sizeof *ns);
        if (!ns)
            return NULL;
        m->s = ns;
        m->cap = cap;
    }
    series s;
    memset(&s, 0, sizeof s);
    s.values = calloc(m->nlabels ? m->nlabels : 1, sizeof *s.values);
    if (!s.values)
        return NULL;
    for (size_t i = 0; i < m->nlabels; i++) {
        if (!(s.values[i] = xstrdup(values[i]))) {
            free_series(m, &s);
            return NULL;
        }
    }
    if (m->type == SPGB_METRIC_HISTOGRAM) {
        s.buckets = calloc(m->nbounds, sizeof *s.buckets);
        if (!s.buckets) {
            free_series(m, &s);
            return NULL;
        }
    }
    size_t pos = (size_t)(-at - 1);
    memmove(&m->s[pos + 1], &m->s[pos], (m->ns - pos) * sizeof *m->s);
    m->s[pos] = s;
    m->ns++;
    return &m->s[pos];
}

int spgb_metrics_set(spgb_metric *m, const char *const *values, double v)
{
    if (m->type != SPGB_METRIC_GAUGE)
        return -1;
    series *s = get_series(m, values);
    if (!s)
        return -1;
    s->value = v;
    return 0;
}

int spgb_metrics_add(spgb_metric *m, const char *const *values, double delta)
{
    if (m->type == SPGB_METRIC_HISTOGRAM || (m->type == SPGB_METRIC_COUNTER && !(delta >= 0)))
        return -1;
    series *s = get_series(m, values);
    if (!s)
        return -1;
    s->value += delta;
    return 0;
}

int spgb_metrics_observe(spgb_metric *m, const char *const *values, double v)
{
    if (m->type != SPGB_METRIC_HISTOGRAM)
        return -1;
    series *s = get_series(m, values);
    if (!s)
        return -1;
    size_t i = 0;
    while (i + 1 < m->nbounds && !(v <= m->bounds[i]))
        i++;
    s->buckets[i]++;
    s->count++;
    s->value += v;
    return 0;
}

int spgb_metrics_get(const spgb_metric *m, const char *const *values, double *v, double *count)
{
    long at = find_series(m, values);
    if (at < 0)
        return -1;
    if (v)
        *v = m->s[at].value;
    if (count)
        *count = (double)m->s[at].count;
    return 0;
}

int spgb_metrics_gauge_set(const char *name, const char *help, double v)
{
    spgb_metric *m =
        spgb_metrics_register(SPGB_METRIC_GAUGE, name, help, NULL, 0, NULL, 0, NULL, 0);
    return m ? spgb_metrics_set(m, NULL, v) : -1;
}

void spgb_metrics_clear(void)
{
    for (size_t i = 0; i < R.n; i++)
        free_metric(R.m[i]);
    free(R.m);
    R.m = NULL;
    R.n = R.cap = 0;
    R.generation++;
}

/* ---- exposition ---------------------------------------------------------- */

typedef struct {
    char *p;
    size_t len, cap;
    int oom;
} sbuf;

static void put(sbuf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->cap - b->len < n + 1) {
        size_t cap = b->cap ? b->cap : 1024;
        while (cap - b->len < n + 1)
            cap *= 2;
        char *np = realloc(b->p, cap);
        if (!np) {
            b->oom = 1;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
}

static void puts_(sbuf *b, const char *s)
{
    put(b, s, strlen(s));
}

/* HELP escapes \ and newline; label values also escape ". */
static void put_escaped(sbuf *b, const char *s, int quote)
{
    for (; *s; s++) {
        if (*s == '\\')
            put(b, "\\\\", 2);
        else if (*s == '\n')
            put(b, "\\n", 2);
        else if (quote && *s == '"')
            put(b, "\\\"", 2);
        else
            put(b, s, 1);
    }
}

/* Shortest text that reads back as v; Prometheus spells infinities +Inf/-Inf. */
static void put_number(sbuf *b, double v)
{
    char tmp[64];
    if (isnan(v))
        snprintf(tmp, sizeof tmp, "NaN");
    else if (isinf(v))
        snprintf(tmp, sizeof tmp, v > 0 ? "+Inf" : "-Inf");
    else {
        for (int prec = 15; prec <= 17; prec++) {
            snprintf(tmp, sizeof tmp, "%.*g", prec, v);
            if (strtod(tmp, NULL) == v)
                break;
        }
    }
    puts_(b, tmp);
}

static void put_labels(sbuf *b, const spgb_metric *m, const series *s, const char *le)
{
    if (m->nlabels == 0 && !le)
        return;
    put(b, "{", 1);
    for (size_t i = 0; i < m->nlabels; i++) {
        if (i)
            put(b, ",", 1);
        puts_(b, m->labels[i]);
        put(b, "=\"", 2);
        put_escaped(b, s->values[i], 1);
        put(b, "\"", 1);
    }
    if (le) {
        if (m->nlabels)
            put(b, ",", 1);
        puts_(b, "le=\"");
        puts_(b, le);
        put(b, "\"", 1);
    }
    put(b, "}", 1);
}

static void expose_metric(sbuf *b, const spgb_metric *m)
{
    puts_(b, "# HELP ");
    puts_(b, m->name);
    put(b, " ", 1);
    put_escaped(b, m->help, 0);
    puts_(b, "\n# TYPE ");
    puts_(b, m->name);
    put(b, " ", 1);
    puts_(b, type_name(m->type));
    put(b, "\n", 1);
    /* An unlabelled metric has exactly one series: show it (at 0) before any update. */
    series zero;
    memset(&zero, 0, sizeof zero);
    const series *list = m->s;
    size_t n = m->ns;
    if (m->nlabels == 0 && n == 0 && m->type != SPGB_METRIC_HISTOGRAM) {
        list = &zero;
        n = 1;
    }
    for (size_t i = 0; i < n; i++) {
        const series *s = &list[i];
        if (m->type != SPGB_METRIC_HISTOGRAM) {
            puts_(b, m->name);
            put_labels(b, m, s, NULL);
            put(b, " ", 1);
            put_number(b, s->value);
            put(b, "\n", 1);
            continue;
        }
        uint64_t cum = 0;
        for (size_t k = 0; k < m->nbounds; k++) {
            char le[64], num[32];
            sbuf lb = {0};
            put_number(&lb, m->bounds[k]);
            snprintf(le, sizeof le, "%s", lb.p ? lb.p : "");
            free(lb.p);
            cum += s->buckets[k];
            puts_(b, m->name);
            puts_(b, "_bucket");
            put_labels(b, m, s, le);
            snprintf(num, sizeof num, " %llu\n", (unsigned long long)cum);
            puts_(b, num);
        }
        puts_(b, m->name);
        puts_(b, "_sum");
        put_labels(b, m, s, NULL);
        put(b, " ", 1);
        put_number(b, s->value);
        put(b, "\n", 1);
        char num[32];
        puts_(b, m->name);
        puts_(b, "_count");
        put_labels(b, m, s, NULL);
        snprintf(num, sizeof num, " %llu\n", (unsigned long long)s->count);
        puts_(b, num);
    }
}

char *spgb_metrics_expose(size_t *len)
{
    sbuf b = {0};
    put(&b, "", 0); /* an empty registry is "" rather than NULL */
    for (size_t i = 0; i < R.n; i++)
        expose_metric(&b, R.m[i]);
    if (b.oom) {
        free(b.p);
        return NULL;
    }
    if (len)
        *len = b.len;
    return b.p;
}

/* ---- Lua module ---------------------------------------------------------- */

typedef struct {
    spgb_metric *m;
    unsigned generation;
} handle;

static spgb_metric *check_metric(lua_State *L, int idx)
{
    handle *h = luaL_checkudata(L, idx, METRIC_MT);
    if (h->generation != R.generation)
        luaL_error(L, "metrics: this metric was cleared from the registry");
    return h->m;
}

/* Label values from the table at idx (or none), in m's label order. Raises on a
 * missing or unknown label. The strings (numbers and booleans converted) stay
 * anchored on the stack until the calling C function returns. */
static const char **label_values(lua_State *L, spgb_metric *m, int idx, const char *fn)
{
    if (lua_gettop(L) < idx)
        lua_settop(L, idx); /* so idx stays the labels argument (nil) below */
    const char **v = lua_newuserdatauv(L, sizeof(char *) * (m->nlabels + 1), 0);
    if (m->nlabels == 0) {
        if (!lua_isnoneornil(L, idx)) {
            luaL_checktype(L, idx, LUA_TTABLE);
            lua_pushnil(L);
            if (lua_next(L, idx))
                luaL_error(L, "%s: metric '%s' has no labels", fn, m->name);
        }
        return v;
    }
    if (lua_type(L, idx) != LUA_TTABLE)
        luaL_error(L, "%s: metric '%s' needs its labels as a table", fn, m->name);
    size_t found = 0;
    lua_newtable(L); /* anchor for converted values */
    int anchor = lua_gettop(L);
    for (size_t i = 0; i < m->nlabels; i++) {
        lua_getfield(L, idx, m->labels[i]);
        int t = lua_type(L, -1);
        if (t != LUA_TSTRING && t != LUA_TNUMBER && t != LUA_TBOOLEAN)
            luaL_error(L, "%s: metric '%s' needs label '%s'", fn, m->name, m->labels[i]);
        luaL_tolstring(L, -1, NULL);
        v[i] = lua_tostring(L, -1);
        lua_rawseti(L, anchor, (lua_Integer)i + 1);
        lua_pop(L, 1);
        found++;
    }
    lua_pushnil(L);
    size_t keys = 0;
    while (lua_next(L, idx)) {
        keys++;
        lua_pop(L, 1);
    }
    if (keys != found)
        luaL_error(L, "%s: metric '%s' got an unknown label", fn, m->name);
    return v; /* the anchor table stays on the stack until the caller returns */
}

static int push_metric(lua_State *L, spgb_metric *m)
{
    handle *h = lua_newuserdatauv(L, sizeof *h, 0);
    h->m = m;
    h->generation = R.generation;
    luaL_setmetatable(L, METRIC_MT);
    return 1;
}

static int reg(lua_State *L, spgb_metric_type type, const char *fn)
{
    const char *name = luaL_checkstring(L, 1);
    const char *help = luaL_optstring(L, 2, "");
    size_t nl = 0, nb = 0;
    if (!lua_isnoneornil(L, 3)) {
        luaL_checktype(L, 3, LUA_TTABLE);
        nl = lua_rawlen(L, 3);
    }
    if (type == SPGB_METRIC_HISTOGRAM && !lua_isnoneornil(L, 4)) {
        luaL_checktype(L, 4, LUA_TTABLE);
        nb = lua_rawlen(L, 4);
    }
    const char **labels = lua_newuserdatauv(L, sizeof(char *) * (nl + 1), 0);
    double *buckets = lua_newuserdatauv(L, sizeof(double) * (nb + 1), 0);
    for (size_t i = 0; i < nl; i++) {
        lua_rawgeti(L, 3, (lua_Integer)i + 1);
        if (lua_type(L, -1) != LUA_TSTRING)
            luaL_error(L, "%s: label names must be strings", fn);
        labels[i] = lua_tostring(L, -1); /* anchored by the table at 3 */
        lua_pop(L, 1);
    }
    for (size_t i = 0; i < nb; i++) {
        lua_rawgeti(L, 4, (lua_Integer)i + 1);
        if (!lua_isnumber(L, -1))
            luaL_error(L, "%s: buckets must be numbers", fn);
        buckets[i] = lua_tonumber(L, -1);
        lua_pop(L, 1);
    }
    char err[256];
    spgb_metric *m =
        spgb_metrics_register(type, name, help, labels, nl, buckets, nb, err, sizeof err);
    if (!m)
        return luaL_error(L, "%s: %s", fn, err);
    return push_metric(L, m);
}

/* metrics.gauge(name, help, {label, ...}) -> metric. Any context; does not yield.
 * Raises on an invalid name or label, or when name is registered with another
 * type or other labels; the same name and shape returns the same metric. */
static int l_gauge(lua_State *L)
{
    return reg(L, SPGB_METRIC_GAUGE, "metrics.gauge");
}

/* metrics.counter(name, help, {label, ...}) -> metric. As metrics.gauge. */
static int l_counter(lua_State *L)
{
    return reg(L, SPGB_METRIC_COUNTER, "metrics.counter");
}

/* metrics.histogram(name, help, {label, ...}, {bound, ...}) -> metric. As
 * metrics.gauge; bounds strictly increasing (default: Prometheus' defaults);
 * +Inf is added. */
static int l_histogram(lua_State *L)
{
    return reg(L, SPGB_METRIC_HISTOGRAM, "metrics.histogram");
}

/* m:set(v [, labels]). Gauges only; raises otherwise. */
static int l_set(lua_State *L)
{
    spgb_metric *m = check_metric(L, 1);
    double v = luaL_checknumber(L, 2);
    if (m->type != SPGB_METRIC_GAUGE)
        return luaL_error(L, "metric:set: '%s' is a %s (set is for gauges)", m->name,
                          type_name(m->type));
    const char **vals = label_values(L, m, 3, "metric:set");
    if (spgb_metrics_set(m, vals, v) != 0)
        return luaL_error(L, "metric:set: out of memory");
    return 0;
}

static int add(lua_State *L, double sign, const char *fn)
{
    spgb_metric *m = check_metric(L, 1);
    int lidx = 3;
    double v = 1;
    if (lua_istable(L, 2))
        lidx = 2; /* m:inc(labels) */
    else if (!lua_isnoneornil(L, 2))
        v = luaL_checknumber(L, 2);
    if (m->type == SPGB_METRIC_HISTOGRAM)
        return luaL_error(L, "%s: '%s' is a histogram (use observe)", fn, m->name);
    if (m->type == SPGB_METRIC_COUNTER && (sign < 0 || !(v >= 0)))
        return luaL_error(L, "%s: counter '%s' can only go up", fn, m->name);
    const char **vals = label_values(L, m, lidx, fn);
    if (spgb_metrics_add(m, vals, sign * v) != 0)
        return luaL_error(L, "%s: out of memory", fn);
    return 0;
}

/* m:inc([v=1] [, labels]). Gauges and counters (v >= 0 for counters). */
static int l_inc(lua_State *L)
{
    return add(L, 1, "metric:inc");
}

/* m:dec([v=1] [, labels]). Gauges only. */
static int l_dec(lua_State *L)
{
    return add(L, -1, "metric:dec");
}

/* m:observe(v [, labels]). Histograms only. */
static int l_observe(lua_State *L)
{
    spgb_metric *m = check_metric(L, 1);
    double v = luaL_checknumber(L, 2);
    if (m->type != SPGB_METRIC_HISTOGRAM)
        return luaL_error(L, "metric:observe: '%s' is a %s (observe is for histograms)", m->name,
                          type_name(m->type));
    const char **vals = label_values(L, m, 3, "metric:observe");
    if (spgb_metrics_observe(m, vals, v) != 0)
        return luaL_error(L, "metric:observe: out of memory");
    return 0;
}

/* m:get([labels]) -> value (gauge, counter) | count, sum (histogram); 0 for a
 * series never updated. */
static int l_get(lua_State *L)
{
    spgb_metric *m = check_metric(L, 1);
    const char **vals = label_values(L, m, 2, "metric:get");
    double v = 0, count = 0;
    spgb_metrics_get(m, vals, &v, &count);
    if (m->type == SPGB_METRIC_HISTOGRAM) {
        lua_pushinteger(L, (lua_Integer)count);
        lua_pushnumber(L, v);
        return 2;
    }
    lua_pushnumber(L, v);
    return 1;
}

/* m:name() -> the metric's name; m:type() -> "gauge" | "counter" | "histogram". */
static int l_name(lua_State *L)
{
    lua_pushstring(L, check_metric(L, 1)->name);
    return 1;
}

static int l_type(lua_State *L)
{
    lua_pushstring(L, type_name(check_metric(L, 1)->type));
    return 1;
}

static int l_tostring(lua_State *L)
{
    spgb_metric *m = check_metric(L, 1);
    lua_pushfstring(L, "metric: %s (%s)", m->name, type_name(m->type));
    return 1;
}

/* metrics.expose() -> text. Any context; does not yield. The registry in
 * Prometheus text format 0.0.4. */
static int l_expose(lua_State *L)
{
    size_t len;
    char *text = spgb_metrics_expose(&len);
    if (!text)
        return luaL_error(L, "metrics.expose: out of memory");
    lua_pushlstring(L, text, len);
    free(text);
    return 1;
}

/* The C core of the metrics module; lua/metrics.lua adds the /metrics handler. */
int luaopen_metrics_core(lua_State *L)
{
    static const luaL_Reg methods[] = {
        {"set", l_set}, {"inc", l_inc},   {"dec", l_dec},   {"observe", l_observe},
        {"get", l_get}, {"name", l_name}, {"type", l_type}, {NULL, NULL},
    };
    if (luaL_newmetatable(L, METRIC_MT)) {
        luaL_newlib(L, methods);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, l_tostring);
        lua_setfield(L, -2, "__tostring");
    }
    lua_pop(L, 1);
    static const luaL_Reg fns[] = {
        {"gauge", l_gauge},   {"counter", l_counter}, {"histogram", l_histogram},
        {"expose", l_expose}, {NULL, NULL},
    };
    luaL_newlib(L, fns);
    return 1;
}
