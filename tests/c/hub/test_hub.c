/* test_hub.c: the hub client's pure parts, and the cache paths of
 * mm_hub_snapshot() that need no server (offline hits and misses, local
 * folders, bad names, a refused connection), also from several threads at
 * once so the TSan build sees the concurrent paths.  The network paths
 * proper are covered by tests/python/test_hub.py against the fake hub.
 *
 * Each test works in its own temporary folder and removes it; the whole
 * binary finishes in well under a second.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <ftw.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mm_err.h"
#include "mm_hub.h"
#include "mm_hub_internal.h"

#include "../mm_check.h"

#define CHECK_STR(a, b)                                                                         \
    do {                                                                                        \
        const char *a_ = (a), *b_ = (b);                                                        \
        if (strcmp(a_, b_) != 0) {                                                              \
            fprintf(stderr, "%s:%d: \"%s\" != \"%s\"\n", __FILE__, __LINE__, a_, b_);           \
            failures++;                                                                         \
        }                                                                                       \
    } while (0)

/* ---- helpers ------------------------------------------------------------ */

static int rm_cb(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static void rm_rf(const char *path) {
    nftw(path, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

static void write_file(const char *path, const char *content) {
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "cannot write %s: %s\n", path, strerror(errno));
        failures++;
        return;
    }
    fputs(content, f);
    fclose(f);
}

static void make_tmp(char *buf, size_t cap) {
    snprintf(buf, cap, "/tmp/mm_hub_test.XXXXXX");
    if (!mkdtemp(buf)) {
        perror("mkdtemp");
        exit(2);
    }
}

/* A cache entry as huggingface_hub writes it: blobs, a relative link per
 * file, refs/main. */
static void make_cached_model(const char *cache, const char *commit, int with_weights) {
    char p[1024], t[1024];
    snprintf(p, sizeof p, "%s/models--acme--tiny", cache);
    mkdir(p, 0777);
    snprintf(p, sizeof p, "%s/models--acme--tiny/blobs", cache);
    mkdir(p, 0777);
    snprintf(p, sizeof p, "%s/models--acme--tiny/refs", cache);
    mkdir(p, 0777);
    snprintf(p, sizeof p, "%s/models--acme--tiny/snapshots", cache);
    mkdir(p, 0777);
    snprintf(p, sizeof p, "%s/models--acme--tiny/snapshots/%s", cache, commit);
    mkdir(p, 0777);
    snprintf(p, sizeof p, "%s/models--acme--tiny/refs/main", cache);
    write_file(p, commit);
    const char *files[][2] = {{"config.json", "1111111111111111111111111111111111111111"},
                              {"model.safetensors", "2222222222222222222222222222222222222222222222222222222222222222"}};
    for (int i = 0; i < (with_weights ? 2 : 1); i++) {
        snprintf(p, sizeof p, "%s/models--acme--tiny/blobs/%s", cache, files[i][1]);
        write_file(p, "{}");
        snprintf(p, sizeof p, "%s/models--acme--tiny/snapshots/%s/%s", cache, commit, files[i][0]);
        snprintf(t, sizeof t, "../../blobs/%s", files[i][1]);
        if (symlink(t, p) != 0)
            failures++;
    }
}

static void offline_params(mm_hub_params *p, const char *cache) {
    mm_hub_default_params(p);
    snprintf(p->cache_dir, sizeof p->cache_dir, "%s", cache);
    snprintf(p->endpoint, sizeof p->endpoint, "http://127.0.0.1:1");
    p->offline = 1;
    p->max_retries = 0;
}

/* ---- tests -------------------------------------------------------------- */

static void test_repo_ids(void) {
    const char *good[] = {"sentence-transformers/all-MiniLM-L6-v2", "bert-base-uncased", "a/b", "Org_1/x.y-z",
                          "google-t5/t5-small", NULL};
    const char *bad[] = {"", "/", "a/", "/a", "a/b/c", "../x", "a/..", "a/../b", "a/b c", "a--b/c", "a/b.git",
                         "-a/b", "a/b-", ".a/b", "a/.b", "a/b\n", "a\\b", "a/b?x", "%2e%2e/x", NULL};
    char err[256];
    for (int i = 0; good[i]; i++)
        CHECK(mm_hub_validate_repo_id(good[i], err, sizeof err) == 0);
    for (int i = 0; bad[i]; i++) {
        err[0] = 0;
        int rc = mm_hub_validate_repo_id(bad[i], err, sizeof err);
        if (rc != MM_EINVAL)
            fprintf(stderr, "accepted bad repo id '%s'\n", bad[i]);
        CHECK(rc == MM_EINVAL && (!bad[i][0] || strstr(err, "invalid model name")));
    }
    char long_name[300];
    memset(long_name, 'a', sizeof long_name - 1);
    long_name[sizeof long_name - 1] = 0;
    long_name[50] = '/';
    CHECK(mm_hub_validate_repo_id(long_name, NULL, 0) == MM_EINVAL);
}

static void test_revisions(void) {
    const char *good[] = {"main", "v1.0", "refs/pr/1", "0123456789abcdef0123456789abcdef01234567", "release-2024",
                          NULL};
    const char *bad[] = {"", "../main", "a/../b", "/main", "main/", "a//b", "ma in", "a\\b", "a\tb", ".", "./a",
                         "a/./b", "x~1", "x^", NULL};
    for (int i = 0; good[i]; i++)
        CHECK(mm_hub_validate_revision(good[i], NULL, 0) == 0);
    for (int i = 0; bad[i]; i++) {
        int rc = mm_hub_validate_revision(bad[i], NULL, 0);
        if (rc != MM_EINVAL)
            fprintf(stderr, "accepted bad revision '%s'\n", bad[i]);
        CHECK(rc == MM_EINVAL);
    }
    CHECK(mm__hub_is_commit("0123456789abcdef0123456789abcdef01234567"));
    CHECK(!mm__hub_is_commit("0123456789abcdef0123456789abcdef0123456"));
    CHECK(!mm__hub_is_commit("main"));
    CHECK(!mm__hub_is_commit("0123456789abcdef0123456789abcdef0123456g"));
}

static void test_paths(void) {
    char buf[256];
    CHECK(mm_hub_repo_dir("/c", "org/name", buf, sizeof buf) == 0);
    CHECK_STR(buf, "/c/models--org--name");
    CHECK(mm_hub_repo_dir("data/models", "gpt2", buf, sizeof buf) == 0);
    CHECK_STR(buf, "data/models/models--gpt2");
    CHECK(mm_hub_repo_dir("/c", "org/name", buf, 10) == MM_ENOBUFS);

    CHECK(mm__hub_link_target("config.json", "abc", buf, sizeof buf) == 0);
    CHECK_STR(buf, "../../blobs/abc");
    CHECK(mm__hub_link_target("1_Pooling/config.json", "abc", buf, sizeof buf) == 0);
    CHECK_STR(buf, "../../../blobs/abc");
    CHECK(mm__hub_link_target("a/b/c.json", "e", buf, sizeof buf) == 0);
    CHECK_STR(buf, "../../../../blobs/e");
    CHECK(mm__hub_link_target("a/b/c.json", "e", buf, 8) == MM_ENOBUFS);

    CHECK(mm__hub_is_safe_repo_path("config.json"));
    CHECK(mm__hub_is_safe_repo_path("1_Pooling/config.json"));
    CHECK(!mm__hub_is_safe_repo_path("../x"));
    CHECK(!mm__hub_is_safe_repo_path("a/../../x"));
    CHECK(!mm__hub_is_safe_repo_path("/etc/passwd"));
    CHECK(!mm__hub_is_safe_repo_path("a//b"));
    CHECK(!mm__hub_is_safe_repo_path("a/./b"));
    CHECK(!mm__hub_is_safe_repo_path("a/"));
    CHECK(!mm__hub_is_safe_repo_path("a\\b"));
    CHECK(!mm__hub_is_safe_repo_path(""));

    CHECK(mm__hub_is_safe_etag("53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"));
    CHECK(!mm__hub_is_safe_etag("../../x"));
    CHECK(!mm__hub_is_safe_etag(".hidden"));
    CHECK(!mm__hub_is_safe_etag("a/b"));
    CHECK(!mm__hub_is_safe_etag(""));
}

static void test_quote_and_origin(void) {
    char buf[128];
    CHECK(mm__hub_quote("refs/pr/1", 0, buf, sizeof buf) == 0);
    CHECK_STR(buf, "refs%2Fpr%2F1");
    CHECK(mm__hub_quote("1_Pooling/config.json", 1, buf, sizeof buf) == 0);
    CHECK_STR(buf, "1_Pooling/config.json");
    CHECK(mm__hub_quote("a b+c", 1, buf, sizeof buf) == 0);
    CHECK_STR(buf, "a%20b%2Bc");
    CHECK(mm__hub_quote("abcdef", 1, buf, 6) == MM_ENOBUFS);
    CHECK(mm__hub_quote("a b", 1, buf, 5) == MM_ENOBUFS);

    CHECK(mm__hub_same_origin("https://hub.example.org/x", "https://hub.example.org"));
    CHECK(mm__hub_same_origin("https://Hub.Example.org:443/x", "https://hub.example.org"));
    CHECK(mm__hub_same_origin("http://127.0.0.1:8080/a", "http://127.0.0.1:8080"));
    CHECK(!mm__hub_same_origin("http://127.0.0.2:8080/a", "http://127.0.0.1:8080"));
    CHECK(!mm__hub_same_origin("http://127.0.0.1:8081/a", "http://127.0.0.1:8080"));
    CHECK(!mm__hub_same_origin("https://cdn.hub.example.org/x", "https://hub.example.org"));
    CHECK(!mm__hub_same_origin("http://hub.example.org/x", "https://hub.example.org"));
    CHECK(!mm__hub_same_origin("https://hub.example.org@evil.example/x", "https://hub.example.org"));
    CHECK(!mm__hub_same_origin("not a url", "https://hub.example.org"));
}

static void feed(mm__hub_headers *h, const char *line) {
    mm__hub_header_line(h, line, strlen(line));
}

static void test_headers(void) {
    mm__hub_headers h;
    mm__hub_headers_reset(&h);
    CHECK(h.linked_size == -1 && h.content_length == -1 && h.retry_after_s == -1 && h.range_total == -1);
    feed(&h, "HTTP/1.1 302 Found\r\n");
    feed(&h, "x-repo-commit: 0123456789abcdef0123456789abcdef01234567\r\n");
    feed(&h, "X-Linked-Etag: \"53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db\"\r\n");
    feed(&h, "X-Linked-Size: 90868376\r\n");
    feed(&h, "ETag: W/\"abc\"\r\n");
    feed(&h, "Content-Length: 1234\r\n");
    feed(&h, "Location: https://cdn.example.org/repos/x?X-Amz=1&b=2\r\n");
    feed(&h, "\r\n");
    CHECK(h.status == 302);
    CHECK_STR(h.commit, "0123456789abcdef0123456789abcdef01234567");
    CHECK_STR(h.linked_etag, "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db");
    CHECK(h.linked_size == 90868376);
    CHECK_STR(h.etag, "abc");
    CHECK(h.content_length == 1234);
    CHECK_STR(h.location, "https://cdn.example.org/repos/x?X-Amz=1&b=2");

    /* a second response (followed redirect) starts clean */
    feed(&h, "HTTP/2 206\r\n");
    feed(&h, "content-range: bytes 100-199/1000\r\n");
    CHECK(h.status == 206 && h.range_total == 1000 && h.linked_size == -1 && h.commit[0] == 0);

    feed(&h, "HTTP/1.1 429 Too Many Requests\n");
    feed(&h, "Retry-After: 7\n");
    feed(&h, "X-Error-Code: GatedRepo\n");
    feed(&h, "X-Error-Message:   Access to model x is restricted.  \n");
    CHECK(h.status == 429 && h.retry_after_s == 7);
    CHECK_STR(h.error_code, "GatedRepo");
    CHECK_STR(h.error_message, "Access to model x is restricted.");

    feed(&h, "HTTP/1.1 503 Unavailable\r\n");
    feed(&h, "Retry-After: Wed, 21 Oct 2015 07:28:00 GMT\r\n");
    feed(&h, "Content-Length: -5\r\n");
    feed(&h, "garbage without colon\r\n");
    CHECK(h.status == 503 && h.retry_after_s == -1 && h.content_length == -1);

    /* a Location longer than the buffer is flagged, never cut */
    static char longloc[MM__HUB_LOCATION_MAX + 64];
    memcpy(longloc, "Location: http://127.0.0.2/?", 28);
    memset(longloc + 28, 'a', sizeof longloc - 29);
    longloc[sizeof longloc - 1] = 0;
    feed(&h, "HTTP/1.1 302 Found\r\n");
    feed(&h, longloc);
    CHECK(h.location_too_long && h.location[0] == 0);
    feed(&h, "HTTP/1.1 302 Found\r\n");
    CHECK(!h.location_too_long);

    char out[16];
    mm__hub_normalize_etag(" \"abc\" ", 7, out, sizeof out);
    CHECK_STR(out, "abc");
    mm__hub_normalize_etag("W/\"x\"", 5, out, sizeof out);
    CHECK_STR(out, "x");
    mm__hub_normalize_etag("0123456789abcdefXYZ", 19, out, sizeof out);
    CHECK(strlen(out) == sizeof out - 1);
}

static void test_classify(void) {
    struct {
        const char *path;
        int kind;
    } cases[] = {
        {"config.json", MM__HUB_WANT},
        {"tokenizer.json", MM__HUB_WANT},
        {"vocab.txt", MM__HUB_WANT},
        {"spiece.model", MM__HUB_WANT},
        {"generation_config.json", MM__HUB_WANT},
        {"modules.json", MM__HUB_WANT},
        {"sentence_bert_config.json", MM__HUB_WANT},
        {"config_sentence_transformers.json", MM__HUB_WANT},
        {"1_Pooling/config.json", MM__HUB_WANT},
        {"2_Dense/model.safetensors", MM__HUB_WANT},
        {"2_Dense/pytorch_model.bin", MM__HUB_SKIP},
        {"1_Pooling/onnx/model.onnx", MM__HUB_SKIP},
        {"model.safetensors", MM__HUB_WEIGHTS},
        {"model.safetensors.index.json", MM__HUB_INDEX},
        {"model-00001-of-00002.safetensors", MM__HUB_SHARD},
        {"model-1-of-x.safetensors", MM__HUB_SHARD},
        {"1_Pooling/x.safetensors.tmp", MM__HUB_SKIP},
        {"pytorch_model.bin", MM__HUB_TORCH_BIN},
        {"pytorch_model.bin.index.json", MM__HUB_TORCH_BIN},
        {"pytorch_model-00001-of-00002.bin", MM__HUB_TORCH_BIN},
        {"model.onnx", MM__HUB_SKIP},
        {"onnx/model.onnx", MM__HUB_SKIP},
        {"onnx/config.json", MM__HUB_SKIP},
        {"openvino/openvino_model.xml", MM__HUB_SKIP},
        {"tf_model.h5", MM__HUB_SKIP},
        {"flax_model.msgpack", MM__HUB_SKIP},
        {"rust_model.ot", MM__HUB_SKIP},
        {"model.gguf", MM__HUB_SKIP},
        {"README.md", MM__HUB_SKIP},
        {".gitattributes", MM__HUB_SKIP},
        {"data_config.json", MM__HUB_SKIP},
        {"../config.json", MM__HUB_SKIP},
        {"1_Pooling/../../x.json", MM__HUB_SKIP},
        {"runs/events.json", MM__HUB_SKIP},
        {"modeling_custom.py", MM__HUB_WANT},
        {"1_Pooling/custom.py", MM__HUB_SKIP},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int k = mm__hub_classify(cases[i].path);
        if (k != cases[i].kind)
            fprintf(stderr, "classify(%s) = %d, want %d\n", cases[i].path, k, cases[i].kind);
        CHECK(k == cases[i].kind);
    }
}

static void test_backoff(void) {
    mm_hub_params p;
    mm_hub_default_params(&p);
    p.retry_base_ms = 100;
    p.retry_max_ms = 1000;
    CHECK(mm__hub_backoff_ms(&p, 1, -1) == 100);
    CHECK(mm__hub_backoff_ms(&p, 2, -1) == 200);
    CHECK(mm__hub_backoff_ms(&p, 4, -1) == 800);
    CHECK(mm__hub_backoff_ms(&p, 9, -1) == 1000);
    CHECK(mm__hub_backoff_ms(&p, 1, 0) == 0);
    CHECK(mm__hub_backoff_ms(&p, 1, 3600) == 1000);
}

static void test_params_and_token(void) {
    char dir[64], cwd[1024], path[1200];
    make_tmp(dir, sizeof dir);
    if (!getcwd(cwd, sizeof cwd))
        cwd[0] = 0;
    if (chdir(dir) != 0)
        failures++;
    unsetenv("HF_TOKEN");
    unsetenv("HUGGING_FACE_HUB_TOKEN");
    unsetenv("HF_TOKEN_PATH");
    unsetenv("HF_HUB_OFFLINE");
    unsetenv("TRANSFORMERS_OFFLINE");
    unsetenv("MM_HUB_CACHE");
    unsetenv("HF_HUB_CACHE");
    unsetenv("HUGGINGFACE_HUB_CACHE");
    setenv("HF_HOME", dir, 1);
    setenv("HF_ENDPOINT", "http://127.0.0.1:9/", 1);

    mm_hub_params p;
    mm_hub_default_params(&p);
    CHECK_STR(p.endpoint, "http://127.0.0.1:9");
    CHECK_STR(p.cache_dir, "data/models");
    CHECK_STR(p.token, "");
    CHECK(p.offline == 0 && p.max_retries > 0 && p.verify_tls == 1);

    write_file(".env", "# comment\nOTHER=1\nexport HF_TOKEN=\"hf_from_dotenv\"  # mine\n");
    mm_hub_default_params(&p);
    CHECK_STR(p.token, "hf_from_dotenv");

    snprintf(path, sizeof path, "%s/token", dir);
    write_file(path, "  hf_from_file\n");
    mm_hub_default_params(&p);
    CHECK_STR(p.token, "hf_from_file");

    snprintf(path, sizeof path, "%s/other_token", dir);
    write_file(path, "hf_from_token_path");
    setenv("HF_TOKEN_PATH", path, 1);
    mm_hub_default_params(&p);
    CHECK_STR(p.token, "hf_from_token_path");

    setenv("HF_TOKEN", " hf_from_env ", 1);
    setenv("HF_HUB_OFFLINE", "1", 1);
    setenv("MM_HUB_CACHE", "hf", 1);
    setenv("HF_HUB_DOWNLOAD_TIMEOUT", "2.5", 1);
    {
        const char *names[] = {"CURL_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"};
        char *saved[3];
        for (int i = 0; i < 3; i++) {
            const char *v = getenv(names[i]);
            saved[i] = v ? strdup(v) : NULL;
            unsetenv(names[i]);
        }
        mm_hub_default_params(&p);
        CHECK_STR(p.ca_bundle, "");
        setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/corp.pem", 1);
        mm_hub_default_params(&p);
        CHECK_STR(p.ca_bundle, "/etc/ssl/certs/corp.pem");
        setenv("CURL_CA_BUNDLE", "/etc/ssl/certs/first.pem", 1);
        mm_hub_default_params(&p);
        CHECK_STR(p.ca_bundle, "/etc/ssl/certs/first.pem");
        for (int i = 0; i < 3; i++) {
            if (saved[i])
                setenv(names[i], saved[i], 1);
            else
                unsetenv(names[i]);
            free(saved[i]);
        }
    }
    mm_hub_default_params(&p);
    CHECK_STR(p.token, "hf_from_env");
    CHECK(p.offline == 1);
    CHECK(p.read_timeout_ms == 2500);
    snprintf(path, sizeof path, "%s/hub", dir);
    CHECK_STR(p.cache_dir, path);

    unsetenv("HF_TOKEN");
    unsetenv("HF_TOKEN_PATH");
    unsetenv("HF_HUB_OFFLINE");
    unsetenv("MM_HUB_CACHE");
    unsetenv("HF_HUB_DOWNLOAD_TIMEOUT");
    unsetenv("HF_HOME");
    unsetenv("HF_ENDPOINT");
    if (cwd[0] && chdir(cwd) != 0)
        failures++;
    rm_rf(dir);
}

static const char *COMMIT = "0123456789abcdef0123456789abcdef01234567";

static void test_offline_cache(void) {
    char cache[64], err[512];
    make_tmp(cache, sizeof cache);
    mm_hub_params p;
    offline_params(&p, cache);
    mm_hub_result r;

    int rc = mm_hub_snapshot(&p, "acme/tiny", "main", &r, err, sizeof err);
    CHECK(rc == MM_ENOTFOUND && strstr(err, "offline") && strstr(err, "acme/tiny"));

    make_cached_model(cache, COMMIT, 0); /* no weights: incomplete */
    rc = mm_hub_snapshot(&p, "acme/tiny", NULL, &r, err, sizeof err);
    CHECK(rc == MM_ENOTFOUND);
    rm_rf(cache);
    make_tmp(cache, sizeof cache);
    offline_params(&p, cache);
    make_cached_model(cache, COMMIT, 1);

    rc = mm_hub_snapshot(&p, "acme/tiny", NULL, &r, err, sizeof err);
    CHECK(rc == 0 && r.from_cache && r.n_requests == 0);
    CHECK_STR(r.commit, COMMIT);
    CHECK(strstr(r.path, "/models--acme--tiny/snapshots/0123456789abcdef") != NULL);

    rc = mm_hub_snapshot(&p, "acme/tiny", COMMIT, &r, err, sizeof err); /* pinned commit */
    CHECK(rc == 0 && r.from_cache);
    rc = mm_hub_snapshot(&p, "acme/tiny", "v2", &r, err, sizeof err);
    CHECK(rc == MM_ENOTFOUND);

    /* a local folder is used in place */
    char snap[1024];
    snprintf(snap, sizeof snap, "%s/models--acme--tiny/snapshots/%s", cache, COMMIT);
    rc = mm_hub_snapshot(&p, snap, NULL, &r, err, sizeof err);
    CHECK(rc == 0 && r.local_dir && r.commit[0] == 0);

    /* pytorch-only local folder */
    char bin[600];
    snprintf(bin, sizeof bin, "%s/binonly", cache);
    mkdir(bin, 0777);
    snprintf(snap, sizeof snap, "%s/config.json", bin);
    write_file(snap, "{}");
    snprintf(snap, sizeof snap, "%s/pytorch_model.bin", bin);
    write_file(snap, "x");
    rc = mm_hub_snapshot(&p, bin, NULL, &r, err, sizeof err);
    CHECK(rc == MM_EFORMAT && strstr(err, "pytorch_model.bin"));

    /* names */
    CHECK(mm_hub_snapshot(&p, "/no/such/dir", NULL, &r, err, sizeof err) == MM_EINVAL);
    CHECK(mm_hub_snapshot(&p, "../../no/such/dir", NULL, &r, err, sizeof err) == MM_EINVAL);
    CHECK(mm_hub_snapshot(&p, "acme/tiny", "../x", &r, err, sizeof err) == MM_EINVAL);
    CHECK(mm_hub_snapshot(NULL, "acme/tiny", NULL, &r, err, sizeof err) == MM_EINVAL);
    rm_rf(cache);
}

static void test_snapshot_complete(void) {
    char dir[64], p[256];
    make_tmp(dir, sizeof dir);
    CHECK(mm__hub_snapshot_complete(dir, NULL, 0) == 1);
    snprintf(p, sizeof p, "%s/config.json", dir);
    write_file(p, "{}");
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", dir);
    write_file(p, "{\"weight_map\": {\"a\": \"model-00001-of-00002.safetensors\", \"b\": "
                  "\"model-00002-of-00002.safetensors\"}}");
    snprintf(p, sizeof p, "%s/model-00001-of-00002.safetensors", dir);
    write_file(p, "x");
    CHECK(mm__hub_snapshot_complete(dir, NULL, 0) == 1); /* a shard missing */
    snprintf(p, sizeof p, "%s/model-00002-of-00002.safetensors", dir);
    write_file(p, "x");
    CHECK(mm__hub_snapshot_complete(dir, NULL, 0) == 0);
    snprintf(p, sizeof p, "%s/modules.json", dir);
    write_file(p, "[{\"path\": \"\", \"type\": \"sentence_transformers.models.Transformer\"},"
                  "{\"path\": \"1_Pooling\", \"type\": \"sentence_transformers.models.Pooling\"},"
                  "{\"path\": \"2_Normalize\", \"type\": \"sentence_transformers.models.Normalize\"}]");
    CHECK(mm__hub_snapshot_complete(dir, NULL, 0) == 1); /* 1_Pooling missing */
    snprintf(p, sizeof p, "%s/1_Pooling", dir);
    mkdir(p, 0777);
    CHECK(mm__hub_snapshot_complete(dir, NULL, 0) == 0); /* Normalize has no folder */
    /* a dangling link counts as missing */
    snprintf(p, sizeof p, "%s/model-00002-of-00002.safetensors", dir);
    unlink(p);
    if (symlink("../../blobs/nothere", p) != 0)
        failures++;
    CHECK(mm__hub_snapshot_complete(dir, NULL, 0) == 1);
    rm_rf(dir);
}

/* Several threads resolving from one cache at once (offline hits) and
 * against a refused connection (the curl paths), for TSan and ASan. */
typedef struct thread_arg {
    const char *cache;
    int online;
    int rc;
} thread_arg;

static void *worker(void *ud) {
    thread_arg *a = ud;
    mm_hub_params p;
    offline_params(&p, a->cache);
    char err[512];
    mm_hub_result r;
    a->rc = 0;
    for (int i = 0; i < 20 && a->rc == 0; i++)
        a->rc = mm_hub_snapshot(&p, "acme/tiny", "main", &r, err, sizeof err);
    if (a->online) {
        p.offline = 0;
        p.connect_timeout_ms = 2000;
        p.retry_base_ms = 1;
        int rc = mm_hub_snapshot(&p, "acme/other", "main", &r, err, sizeof err);
        if (rc != MM_ENETWORK || !strstr(err, "not cached")) {
            fprintf(stderr, "refused connection: rc=%d err=%s\n", rc, err);
            a->rc = -1;
        }
        /* the cached model is still served, with a warning, when refresh asks the hub */
        p.refresh = 1;
        rc = mm_hub_snapshot(&p, "acme/tiny", "main", &r, err, sizeof err);
        if (rc != 0 || !r.stale) {
            fprintf(stderr, "stale fallback: rc=%d err=%s\n", rc, err);
            a->rc = -1;
        }
    }
    return NULL;
}

static void test_threads(void) {
    char cache[64];
    make_tmp(cache, sizeof cache);
    make_cached_model(cache, COMMIT, 1);
    pthread_t t[4];
    thread_arg a[4];
    for (int i = 0; i < 4; i++) {
        a[i] = (thread_arg){.cache = cache, .online = i % 2};
        pthread_create(&t[i], NULL, worker, &a[i]);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        CHECK(a[i].rc == 0);
    }
    rm_rf(cache);
}

int main(void) {
    alarm(60); /* a hung test fails instead of blocking ctest */
    test_repo_ids();
    test_revisions();
    test_paths();
    test_quote_and_origin();
    test_headers();
    test_classify();
    test_backoff();
    test_params_and_token();
    test_snapshot_complete();
    test_offline_cache();
    test_threads();
    mm_hub_global_cleanup();
    return mm_check_done("hub tests passed");
}
