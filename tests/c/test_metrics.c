/* Unit tests of the metrics registry's C API and its exposition text. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "metrics.h"

static int teardown(void **state)
{
    (void)state;
    spgb_metrics_clear();
    return 0;
}

static char *expose(void)
{
    size_t len = 0;
    char *t = spgb_metrics_expose(&len);
    assert_non_null(t);
    assert_int_equal(strlen(t), len);
    return t;
}

static void test_names(void **state)
{
    (void)state;
    assert_true(spgb_metrics_valid_name("a"));
    assert_true(spgb_metrics_valid_name("ns:sub_total"));
    assert_true(spgb_metrics_valid_name("_x9"));
    assert_false(spgb_metrics_valid_name(""));
    assert_false(spgb_metrics_valid_name("9x"));
    assert_false(spgb_metrics_valid_name("a-b"));
    assert_false(spgb_metrics_valid_name("a b"));
    assert_true(spgb_metrics_valid_label("node"));
    assert_false(spgb_metrics_valid_label("__name__"));
    assert_false(spgb_metrics_valid_label("a:b"));
    assert_false(spgb_metrics_valid_label(""));
}

static void test_register(void **state)
{
    (void)state;
    char err[128];
    const char *labels[] = {"a", "b"};
    spgb_metric *m = spgb_metrics_register(SPGB_METRIC_COUNTER, "c_total", "h", labels, 2, NULL, 0,
                                           err, sizeof err);
    assert_non_null(m);
    assert_ptr_equal(m, spgb_metrics_register(SPGB_METRIC_COUNTER, "c_total", "h", labels, 2, NULL,
                                              0, err, sizeof err));
    assert_null(spgb_metrics_register(SPGB_METRIC_GAUGE, "c_total", "h", labels, 2, NULL, 0, err,
                                      sizeof err));
    assert_non_null(strstr(err, "already registered as a counter"));
    assert_null(spgb_metrics_register(SPGB_METRIC_COUNTER, "c_total", "h", labels, 1, NULL, 0, err,
                                      sizeof err));
    const char *dup[] = {"a", "a"};
    assert_null(
        spgb_metrics_register(SPGB_METRIC_GAUGE, "g", "h", dup, 2, NULL, 0, err, sizeof err));
    const char *le[] = {"le"};
    assert_null(
        spgb_metrics_register(SPGB_METRIC_HISTOGRAM, "h", "h", le, 1, NULL, 0, err, sizeof err));
    double bad[] = {1, 0.5};
    assert_null(
        spgb_metrics_register(SPGB_METRIC_HISTOGRAM, "h", "h", NULL, 0, bad, 2, err, sizeof err));
    assert_ptr_equal(m, spgb_metrics_find("c_total"));
    assert_null(spgb_metrics_find("nope"));
    assert_int_equal(2, spgb_metrics_label_count(m));
    assert_string_equal("b", spgb_metrics_label_name(m, 1));
}

static void test_update_and_get(void **state)
{
    (void)state;
    const char *labels[] = {"x"};
    spgb_metric *g = spgb_metrics_register(SPGB_METRIC_GAUGE, "g", "", labels, 1, NULL, 0, NULL, 0);
    spgb_metric *c =
        spgb_metrics_register(SPGB_METRIC_COUNTER, "c_total", "", NULL, 0, NULL, 0, NULL, 0);
    const char *v1[] = {"one"};
    const char *v2[] = {"two"};
    double v, n;
    assert_int_equal(-1, spgb_metrics_get(g, v1, &v, NULL));
    assert_int_equal(0, spgb_metrics_set(g, v1, 5));
    assert_int_equal(0, spgb_metrics_add(g, v1, -2));
    assert_int_equal(0, spgb_metrics_set(g, v2, 7));
    assert_int_equal(0, spgb_metrics_get(g, v1, &v, NULL));
    assert_true(v == 3);
    assert_int_equal(-1, spgb_metrics_set(c, NULL, 1));
    assert_int_equal(-1, spgb_metrics_add(c, NULL, -1));
    assert_int_equal(-1, spgb_metrics_add(c, NULL, NAN));
    assert_int_equal(-1, spgb_metrics_observe(c, NULL, 1));
    assert_int_equal(0, spgb_metrics_add(c, NULL, 2.5));
    assert_int_equal(0, spgb_metrics_get(c, NULL, &v, &n));
    assert_true(v == 2.5);
    assert_int_equal(0, spgb_metrics_gauge_set("plain", "Plain.", 42));
    assert_int_equal(0, spgb_metrics_get(spgb_metrics_find("plain"), NULL, &v, NULL));
    assert_true(v == 42);
}

static void test_expose(void **state)
{
    (void)state;
    const char *labels[] = {"k"};
    spgb_metric *g = spgb_metrics_register(SPGB_METRIC_GAUGE, "zz", "Help \\ and\nline.", labels, 1,
                                           NULL, 0, NULL, 0);
    const char *v[] = {"q\"b\\n\nx"};
    spgb_metrics_set(g, v, 0.1);
    const char *va[] = {"a"};
    spgb_metrics_set(g, va, -INFINITY);
    double b[] = {1, 2};
    spgb_metric *h =
        spgb_metrics_register(SPGB_METRIC_HISTOGRAM, "aa_seconds", "H.", NULL, 0, b, 2, NULL, 0);
    spgb_metrics_observe(h, NULL, 0.5);
    spgb_metrics_observe(h, NULL, 2);
    spgb_metrics_observe(h, NULL, 3);
    char *t = expose();
    const char *want = "# HELP aa_seconds H.\n"
                       "# TYPE aa_seconds histogram\n"
                       "aa_seconds_bucket{le=\"1\"} 1\n"
                       "aa_seconds_bucket{le=\"2\"} 2\n"
                       "aa_seconds_bucket{le=\"+Inf\"} 3\n"
                       "aa_seconds_sum 5.5\n"
                       "aa_seconds_count 3\n"
                       "# HELP zz Help \\\\ and\\nline.\n"
                       "# TYPE zz gauge\n"
                       "zz{k=\"a\"} -Inf\n"
                       "zz{k=\"q\\\"b\\\\n\\nx\"} 0.1\n";
    assert_string_equal(want, t);
    free(t);
}

static void test_default_buckets(void **state)
{
    (void)state;
    spgb_metric *h =
        spgb_metrics_register(SPGB_METRIC_HISTOGRAM, "d", "", NULL, 0, NULL, 0, NULL, 0);
    assert_non_null(h);
    spgb_metrics_observe(h, NULL, 0.007);
    char *t = expose();
    assert_non_null(strstr(t, "d_bucket{le=\"0.005\"} 0\n"));
    assert_non_null(strstr(t, "d_bucket{le=\"0.01\"} 1\n"));
    assert_non_null(strstr(t, "d_bucket{le=\"10\"} 1\n"));
    assert_non_null(strstr(t, "d_bucket{le=\"+Inf\"} 1\n"));
    free(t);
}

static void test_empty(void **state)
{
    (void)state;
    char *t = expose();
    assert_string_equal("", t);
    free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_names, teardown),
        cmocka_unit_test_teardown(test_register, teardown),
        cmocka_unit_test_teardown(test_update_and_get, teardown),
        cmocka_unit_test_teardown(test_expose, teardown),
        cmocka_unit_test_teardown(test_default_buckets, teardown),
        cmocka_unit_test_teardown(test_empty, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
