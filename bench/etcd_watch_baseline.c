/*
 * Baseline for bench/etcd_watch.lua: the same measurements with plain libcurl
 * against etcd's JSON gateway, no Lua, no scheduler.
 *   etcd_watch_baseline ENDPOINT N_LATENCY N_GETS
 * prints "latencies_us: v1 v2 ..." and "gets_per_s: X".
 * Put-to-event: a watch stream on one connection (multi), a put on another; the
 * clock runs from starting the put until the watch stream has delivered the event.
 */
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static char wbuf[1 << 20];
static size_t wlen;
static int events; /* complete messages carrying "events" */

static size_t on_watch(char *p, size_t s, size_t n, void *u)
{
    (void)u;
    size_t len = s * n;
    if (wlen + len >= sizeof wbuf)
        wlen = 0;
    memcpy(wbuf + wlen, p, len);
    wlen += len;
    wbuf[wlen] = 0;
    char *nl;
    while ((nl = strchr(wbuf, '\n'))) {
        *nl = 0;
        if (strstr(wbuf, "\"events\""))
            events++;
        size_t rest = wlen - (size_t)(nl + 1 - wbuf);
        memmove(wbuf, nl + 1, rest);
        wlen = rest;
        wbuf[wlen] = 0;
    }
    return len;
}

static size_t sink(char *p, size_t s, size_t n, void *u)
{
    (void)p;
    (void)u;
    return s * n;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s ENDPOINT N_LATENCY N_GETS\n", argv[0]);
        return 2;
    }
    const char *ep = argv[1];
    int n = atoi(argv[2]), ngets = atoi(argv[3]);
    char url[512];
    curl_global_init(CURL_GLOBAL_DEFAULT);
    CURLM *m = curl_multi_init();
    struct curl_slist *hdr = curl_slist_append(NULL, "Content-Type: application/json");

    CURL *w = curl_easy_init();
    snprintf(url, sizeof url, "%s/v3/watch", ep);
    curl_easy_setopt(w, CURLOPT_URL, url);
    curl_easy_setopt(w, CURLOPT_POSTFIELDS, "{\"create_request\":{\"key\":\"YmVuY2gvYg==\"}}");
    curl_easy_setopt(w, CURLOPT_HTTPHEADER, hdr);
    curl_easy_setopt(w, CURLOPT_WRITEFUNCTION, on_watch);
    curl_multi_add_handle(m, w);

    CURL *p = curl_easy_init();
    snprintf(url, sizeof url, "%s/v3/kv/put", ep);
    curl_easy_setopt(p, CURLOPT_URL, url);
    curl_easy_setopt(p, CURLOPT_POSTFIELDS, "{\"key\":\"YmVuY2gvYg==\",\"value\":\"dg==\"}");
    curl_easy_setopt(p, CURLOPT_HTTPHEADER, hdr);
    curl_easy_setopt(p, CURLOPT_WRITEFUNCTION, sink);

    int running;
    double t_end = now() + 1.0; /* let the watch be created */
    while (now() < t_end) {
        curl_multi_perform(m, &running);
        curl_multi_poll(m, NULL, 0, 50, NULL);
    }
    printf("latencies_us:");
    for (int i = 0; i < n; i++) {
        int want = events + 1;
        double t0 = now();
        curl_multi_add_handle(m, p);
        int put_done = 0;
        double limit = t0 + 5;
        while ((events < want || !put_done) && now() < limit) {
            curl_multi_perform(m, &running);
            CURLMsg *msg;
            int left;
            while ((msg = curl_multi_info_read(m, &left)))
                if (msg->msg == CURLMSG_DONE && msg->easy_handle == p)
                    put_done = 1;
            if (events >= want && put_done)
                break;
            curl_multi_poll(m, NULL, 0, 100, NULL);
        }
        double t1 = now();
        curl_multi_remove_handle(m, p);
        printf(" %.1f", (t1 - t0) * 1e6);
    }
    printf("\n");

    CURL *g = curl_easy_init();
    snprintf(url, sizeof url, "%s/v3/kv/range", ep);
    curl_easy_setopt(g, CURLOPT_URL, url);
    curl_easy_setopt(g, CURLOPT_POSTFIELDS, "{\"key\":\"YmVuY2gvYg==\"}");
    curl_easy_setopt(g, CURLOPT_HTTPHEADER, hdr);
    curl_easy_setopt(g, CURLOPT_WRITEFUNCTION, sink);
    double t0 = now();
    for (int i = 0; i < ngets; i++)
        if (curl_easy_perform(g) != CURLE_OK)
            return 1;
    printf("gets_per_s: %.0f\n", ngets / (now() - t0));
    curl_easy_cleanup(g);
    curl_multi_remove_handle(m, w);
    curl_easy_cleanup(w);
    curl_easy_cleanup(p);
    curl_multi_cleanup(m);
    curl_slist_free_all(hdr);
    return 0;
}
