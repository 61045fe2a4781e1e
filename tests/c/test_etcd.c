/* Unit tests of etcd's pure helpers: base64, prefix range ends, and the framing
 * of the watch stream (split messages, strings with braces, garbage). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "etcd.h"

static void test_b64_roundtrip(void **state)
{
    (void)state;
    unsigned char in[256];
    for (int i = 0; i < 256; i++)
        in[i] = (unsigned char)i;
    for (size_t n = 0; n <= sizeof in; n++) {
        char enc[400];
        unsigned char dec[300];
        size_t m = spgb_etcd_b64_encode(in, n, enc);
        assert_int_equal(m, (n + 2) / 3 * 4);
        long d = spgb_etcd_b64_decode(enc, m, dec);
        assert_int_equal(d, (long)n);
        if (n)
            assert_memory_equal(in, dec, n);
    }
    char e[8];
    assert_int_equal(spgb_etcd_b64_encode((const unsigned char *)"foo", 3, e), 4);
    assert_memory_equal(e, "Zm9v", 4);
    assert_int_equal(spgb_etcd_b64_encode((const unsigned char *)"fo", 2, e), 4);
    assert_memory_equal(e, "Zm8=", 4);
}

static void test_b64_invalid(void **state)
{
    (void)state;
    unsigned char out[64];
    assert_int_equal(spgb_etcd_b64_decode("!!!*", 4, out), -1);
    assert_int_equal(spgb_etcd_b64_decode("Zm9v\n", 5, out), -1);
    assert_int_equal(spgb_etcd_b64_decode("Z", 1, out), -1);
    assert_int_equal(spgb_etcd_b64_decode("Zm8", 3, out), 2); /* unpadded */
    assert_int_equal(spgb_etcd_b64_decode("", 0, out), 0);
}

static void test_prefix_end(void **state)
{
    (void)state;
    char out[16];
    assert_int_equal(spgb_etcd_prefix_end("abc", 3, out), 3);
    assert_memory_equal(out, "abd", 3);
    assert_int_equal(spgb_etcd_prefix_end("a\xff", 2, out), 1);
    assert_memory_equal(out, "b", 1);
    assert_int_equal(spgb_etcd_prefix_end("\xff\xff", 2, out), 1);
    assert_int_equal(out[0], 0);
    assert_int_equal(spgb_etcd_prefix_end("", 0, out), 1);
    assert_int_equal(out[0], 0);
}

static void test_frame_split(void **state)
{
    (void)state;
    const char *msg = "{\"result\":{\"a\":\"x}{\\\"\",\"b\":[1,{\"c\":2}]}}\n{\"next\":1}";
    size_t total = strlen(msg);
    size_t first_end = strchr(msg, '\n') - msg;
    /* Feed byte by byte, as the network might. */
    spgb_etcd_framer f;
    memset(&f, 0, sizeof f);
    size_t s = 0, e = 0;
    int found = 0;
    for (size_t n = 1; n <= total && !found; n++) {
        int r = spgb_etcd_frame(&f, msg, n, &s, &e);
        assert_true(r >= 0);
        if (r == 1) {
            found = 1;
            assert_int_equal(n, first_end);
        }
    }
    assert_true(found);
    assert_int_equal(s, 0);
    assert_int_equal(e, first_end);
    memset(&f, 0, sizeof f);
    const char *rest = msg + e;
    assert_int_equal(spgb_etcd_frame(&f, rest, strlen(rest), &s, &e), 1);
    assert_int_equal(e - s, strlen("{\"next\":1}"));
}

static void test_frame_garbage(void **state)
{
    (void)state;
    spgb_etcd_framer f;
    size_t s, e;
    memset(&f, 0, sizeof f);
    assert_int_equal(spgb_etcd_frame(&f, "garbage", 7, &s, &e), -1);
    memset(&f, 0, sizeof f);
    assert_int_equal(spgb_etcd_frame(&f, "  \n[1]", 6, &s, &e), -1);
    memset(&f, 0, sizeof f);
    assert_int_equal(spgb_etcd_frame(&f, "{\"a\":", 5, &s, &e), 0); /* truncated: wait */
    char deep[2000];
    memset(deep, '[', sizeof deep);
    deep[0] = '{';
    memset(&f, 0, sizeof f);
    assert_int_equal(spgb_etcd_frame(&f, deep, sizeof deep, &s, &e), -1); /* too deep */
    memset(&f, 0, sizeof f);
    assert_int_equal(spgb_etcd_frame(&f, "", 0, &s, &e), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_b64_roundtrip), cmocka_unit_test(test_b64_invalid),
        cmocka_unit_test(test_prefix_end),    cmocka_unit_test(test_frame_split),
        cmocka_unit_test(test_frame_garbage),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
