/*
 * metrics: a process-wide Prometheus registry (gauges, counters, histograms with
 * labels) and its text exposition (format 0.0.4).
 *
 * Provides: the C API below, usable by any unit (the registry lives in C, so a C
 * unit and a Lua policy that name the same metric share it), and the Lua module
 * `metrics` (gauge, counter, histogram, expose, handler).
 * Uses: Lua 5.4 for the module only.
 *
 * Threading: none; everything runs on the loop's thread. Metrics are never freed
 * while the process runs (a registered name is forever), except by
 * spgb_metrics_clear, which is for tests.
 */
#ifndef SPGB_METRICS_H
#define SPGB_METRICS_H

#include <lua.h>
#include <stddef.h>

typedef enum { SPGB_METRIC_GAUGE, SPGB_METRIC_COUNTER, SPGB_METRIC_HISTOGRAM } spgb_metric_type;

typedef struct spgb_metric spgb_metric;

/* Register (or find) a metric. labels: nlabels label names. buckets: the upper
 * bounds of a histogram, strictly increasing (+Inf is added); NULL/0 for the
 * default buckets; ignored for other types. Registering an existing name returns
 * the same metric when type and label names match. Returns NULL and writes a
 * message into err (errlen bytes) on an invalid name, label, bucket list, a
 * conflicting re-registration, or out of memory. Strings are copied. */
spgb_metric *spgb_metrics_register(spgb_metric_type type, const char *name, const char *help,
                                   const char *const *labels, size_t nlabels, const double *buckets,
                                   size_t nbuckets, char *err, size_t errlen);

/* The metric registered under name, or NULL. */
spgb_metric *spgb_metrics_find(const char *name);
spgb_metric_type spgb_metrics_type(const spgb_metric *m);
size_t spgb_metrics_label_count(const spgb_metric *m);
const char *spgb_metrics_label_name(const spgb_metric *m, size_t i);

/* Update the series named by values (one per label name, in registration order;
 * strings are copied when the series is created). Returns 0, or -1 on out of
 * memory or misuse (set on a counter, negative counter increment, observe on a
 * non-histogram, inc on a histogram). */
int spgb_metrics_set(spgb_metric *m, const char *const *values, double v);
int spgb_metrics_add(spgb_metric *m, const char *const *values, double delta);
int spgb_metrics_observe(spgb_metric *m, const char *const *values, double v);
/* Current value (gauge, counter) or observation count and sum (histogram: *v is
 * the sum, *count the count). Returns 0, or -1 when the series does not exist. */
int spgb_metrics_get(const spgb_metric *m, const char *const *values, double *v, double *count);

/* Convenience for C units: set an unlabelled (or labelled) gauge by name,
 * registering it on first use. Returns 0 or -1. */
int spgb_metrics_gauge_set(const char *name, const char *help, double v);

/* The whole registry in Prometheus text format 0.0.4, sorted by metric name then
 * label values. Returns a malloc'd NUL-terminated string (caller frees) and its
 * length in *len, or NULL on out of memory. */
char *spgb_metrics_expose(size_t *len);

/* Forget every metric (tests only: Lua handles to old metrics must be gone). */
void spgb_metrics_clear(void);

/* Validators, exported for tests. */
int spgb_metrics_valid_name(const char *name);
int spgb_metrics_valid_label(const char *name);

/* The module's C core, preloaded as "metrics.core"; its Lua half is lua/metrics.lua. */
int luaopen_metrics_core(lua_State *L);

#endif
