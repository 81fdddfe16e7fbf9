/* mm_hub.c: mm_hub_snapshot(), the download path of the hub client.
 *
 * One call resolves a model to a snapshot directory in four steps:
 *   1. cache first: a revision that is a commit, or a branch whose refs file
 *      names a commit, is served from a complete snapshot with no request;
 *   2. list the repo (GET /api/models/{repo}/revision/{rev}?blobs=true) and
 *      pick the files a model needs (mm__hub_classify);
 *   3. for each missing blob: HEAD /{repo}/resolve/{commit}/{file} without
 *      following the cross-host redirect (X-Repo-Commit, X-Linked-Etag,
 *      X-Linked-Size, Location), then, under a lock file per blob, GET the
 *      redirect target (Authorization only to the hub's own origin) into
 *      blobs/<etag>.incomplete with Range resume, verify sha256 (LFS) or
 *      the git blob sha1, and rename it into blobs/<etag>;
 *   4. only when every blob is in place, create the relative symlinks under
 *      snapshots/<commit>/ and write refs/<rev>, so a snapshot that exists
 *      is complete for the files we select.
 * The lock is flock() on <cache>/.locks/models--org--name/<etag>.lock, the
 * path huggingface_hub uses, so threads, processes and huggingface_hub
 * itself download a blob once.  Each thread has one curl easy handle,
 * kept between its calls (connections are reused) and freed when the thread
 * exits; the blocking waits (back-off, lock) poll the progress callback so a caller
 * can cancel.  The token is only ever put in a request header.
 */
#include "mm_hub.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <jansson.h>
#include <openssl/evp.h>

#include "mm_alloc.h"
#include "mm_err.h"
#include "mm_hub_internal.h"
#include "mm_log.h"
#include "mm_time.h"

#define LISTING_MAX (64u << 20) /* bytes of repo listing JSON we accept */

/* ---- process-wide libcurl state ---------------------------------------- */

/* One easy handle per thread, kept between calls so a worker that loads
 * several models reuses its connections; freed when the thread exits. */
static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static int curl_init_rc;
static pthread_key_t curl_key;

static void free_thread_handle(void *h) {
    curl_easy_cleanup(h);
}

static void curl_init_once(void) {
    curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? 0 : MM_EINTERNAL;
    if (curl_init_rc == 0 && pthread_key_create(&curl_key, free_thread_handle) != 0)
        curl_init_rc = MM_EINTERNAL;
}

/* This thread's handle, made on first use; NULL on out-of-memory. */
static CURL *thread_handle(void) {
    CURL *h = pthread_getspecific(curl_key);
    if (!h) {
        h = curl_easy_init();
        if (h && pthread_setspecific(curl_key, h) != 0) {
            curl_easy_cleanup(h);
            h = NULL;
        }
    }
    return h;
}

void mm_hub_thread_cleanup(void) {
    if (pthread_once(&curl_once, curl_init_once) != 0 || curl_init_rc)
        return;
    CURL *h = pthread_getspecific(curl_key);
    if (h) {
        pthread_setspecific(curl_key, NULL);
        curl_easy_cleanup(h);
    }
}

void mm_hub_global_cleanup(void) {
    mm_hub_thread_cleanup();
    curl_global_cleanup();
}

/* ---- one call ----------------------------------------------------------- */

typedef struct hub_file {
    char *path;       /* repo path (owned) */
    char etag[161];   /* blob name from the listing, then from HEAD */
    uint64_t size;    /* from the listing, then from HEAD */
    int lfs;          /* listing says LFS */
    int kind;         /* mm__hub_kind */
    int have;         /* already in the snapshot */
} hub_file;

typedef struct hub_call {
    const mm_hub_params *p;
    CURL *curl;                     /* this call's handle; used by this thread only */
    const char *repo_id;
    char repo_dir[MM_HUB_PATH_MAX]; /* <cache>/models--org--name */
    char lock_dir[MM_HUB_PATH_MAX]; /* <cache>/.locks/models--org--name */
    char curl_err[CURL_ERROR_SIZE];
    mm_hub_progress prog;
    uint64_t done_before_file;      /* model bytes done, without the file in flight */
    int cancelled;
    int n_requests;
    uint64_t bytes_downloaded;
    char *err;
    size_t errlen;
} hub_call;

/* Tells the progress callback where we are; sets c->cancelled when it asks
 * to stop.  Returns 1 when cancelled. */
static int report(hub_call *c) {
    c->prog.model_done = c->done_before_file + c->prog.file_done;
    if (c->p->progress && !c->cancelled && c->p->progress(&c->prog, c->p->progress_ud) != 0)
        c->cancelled = 1;
    return c->cancelled;
}

/* Sleeps ms milliseconds in short slices, asking the callback whether to
 * stop.  Returns 1 when cancelled. */
static int nap(hub_call *c, long ms) {
    int64_t end = mm_now_ns() + (int64_t)ms * 1000000;
    for (;;) {
        if (report(c))
            return 1;
        int64_t left = end - mm_now_ns();
        if (left <= 0)
            return 0;
        if (left > 50000000)
            left = 50000000;
        struct timespec ts = mm_ns_to_timespec(left);
        nanosleep(&ts, NULL);
    }
}

/* ---- filesystem helpers ------------------------------------------------- */

/* snprintf that reports truncation as MM_ENOBUFS (no format attribute on
 * purpose: the callers check the result, and GCC's truncation warning would
 * fire on every path built from two PATH_MAX parts). */
static int fmt_path(char *buf, size_t cap, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, cap, fmt, ap);
    va_end(ap);
    return (n < 0 || (size_t)n >= cap) ? MM_ENOBUFS : 0;
}


static int mkdirs(const char *path) {
    char tmp[MM_HUB_PATH_MAX];
    if (fmt_path(tmp, sizeof tmp, "%s", path)) {
        errno = ENAMETOOLONG;
        return -1;
    }
    for (char *s = tmp + 1; *s; s++) {
        if (*s != '/')
            continue;
        *s = 0;
        if (mkdir(tmp, 0777) != 0 && errno != EEXIST)
            return -1;
        *s = '/';
    }
    if (mkdir(tmp, 0777) != 0 && errno != EEXIST)
        return -1;
    return 0;
}

static int mkdirs_parent(const char *path) {
    char tmp[MM_HUB_PATH_MAX];
    if (fmt_path(tmp, sizeof tmp, "%s", path)) {
        errno = ENAMETOOLONG;
        return -1;
    }
    char *slash = strrchr(tmp, '/');
    if (!slash || slash == tmp)
        return 0;
    *slash = 0;
    return mkdirs(tmp);
}

static int io_code(int e) {
    return (e == ENOSPC || e == EDQUOT) ? MM_EDISKFULL : MM_EIO;
}

static int path_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

/* Reads refs/<rev> into commit (41 bytes).  0 when it names a commit. */
static int read_ref(const char *repo_dir, const char *rev, char commit[41]) {
    char path[MM_HUB_PATH_MAX];
    char buf[128];
    if (snprintf(path, sizeof path, "%s/refs/%s", repo_dir, rev) >= (int)sizeof path)
        return -1;
    FILE *f = fopen(path, "rb");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' '))
        n--;
    buf[n] = 0;
    if (!mm__hub_is_commit(buf))
        return -1;
    memcpy(commit, buf, 41);
    return 0;
}

/* Writes path atomically (temp file + rename). */
static int write_file_atomic(const char *path, const char *data, size_t n) {
    char tmp[MM_HUB_PATH_MAX + 64];
    if (fmt_path(tmp, sizeof tmp, "%s.tmp.%ld.%lx", path, (long)getpid(), (unsigned long)pthread_self()))
        return MM_EIO;
    if (mkdirs_parent(path) != 0)
        return io_code(errno);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return io_code(errno);
    ssize_t w = write(fd, data, n);
    int e = errno;
    if (close(fd) != 0 && w == (ssize_t)n) {
        w = -1;
        e = errno;
    }
    if (w != (ssize_t)n || rename(tmp, path) != 0) {
        if (w == (ssize_t)n)
            e = errno;
        unlink(tmp);
        return io_code(e);
    }
    return 0;
}

/* ---- HTTP --------------------------------------------------------------- */

typedef struct membuf {
    char *data;
    size_t len, cap, limit;
    int overflow;
} membuf;

static size_t mem_write(char *ptr, size_t size, size_t nmemb, void *ud) {
    membuf *m = ud;
    size_t n = size * nmemb;
    if (m->len + n + 1 > m->limit) {
        m->overflow = 1;
        return 0;
    }
    if (m->len + n + 1 > m->cap) {
        size_t cap = m->cap ? m->cap : 8192;
        while (cap < m->len + n + 1)
            cap *= 2;
        char *d = mm_realloc(m->data, cap);
        if (!d) {
            m->overflow = 2;
            return 0;
        }
        m->data = d;
        m->cap = cap;
    }
    memcpy(m->data + m->len, ptr, n);
    m->len += n;
    m->data[m->len] = 0;
    return n;
}

static size_t header_cb(char *buf, size_t size, size_t nitems, void *ud) {
    mm__hub_header_line(ud, buf, size * nitems);
    return size * nitems;
}

static int xfer_cb(void *ud, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal, curl_off_t ulnow) {
    (void)dltotal, (void)dlnow, (void)ultotal, (void)ulnow;
    hub_call *c = ud;
    return report(c);
}

/* Resets the handle and sets what every request shares. */
static struct curl_slist *setup_request(hub_call *c, const char *url, int with_auth, mm__hub_headers *h) {
    CURL *cu = c->curl;
    curl_easy_reset(cu);
    c->curl_err[0] = 0;
    curl_easy_setopt(cu, CURLOPT_URL, url);
    curl_easy_setopt(cu, CURLOPT_ERRORBUFFER, c->curl_err);
    curl_easy_setopt(cu, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(cu, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(cu, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(cu, CURLOPT_USERAGENT, c->p->user_agent);
    curl_easy_setopt(cu, CURLOPT_CONNECTTIMEOUT_MS, c->p->connect_timeout_ms > 0 ? c->p->connect_timeout_ms : 10000L);
    long lst = (c->p->read_timeout_ms + 999) / 1000;
    curl_easy_setopt(cu, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(cu, CURLOPT_LOW_SPEED_TIME, lst > 0 ? lst : 10L);
    curl_easy_setopt(cu, CURLOPT_SSL_VERIFYPEER, c->p->verify_tls ? 1L : 0L);
    curl_easy_setopt(cu, CURLOPT_SSL_VERIFYHOST, c->p->verify_tls ? 2L : 0L);
    if (c->p->ca_bundle[0])
        curl_easy_setopt(cu, CURLOPT_CAINFO, c->p->ca_bundle);
    curl_easy_setopt(cu, CURLOPT_HEADERFUNCTION, header_cb);
    curl_easy_setopt(cu, CURLOPT_HEADERDATA, h);
    curl_easy_setopt(cu, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(cu, CURLOPT_XFERINFOFUNCTION, xfer_cb);
    curl_easy_setopt(cu, CURLOPT_XFERINFODATA, c);
    curl_easy_setopt(cu, CURLOPT_UNRESTRICTED_AUTH, 0L);
    struct curl_slist *hl = curl_slist_append(NULL, "Accept-Encoding: identity");
    if (hl && with_auth && c->p->token[0]) {
        char auth[MM_HUB_TOKEN_MAX + 32];
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", c->p->token);
        struct curl_slist *n = curl_slist_append(hl, auth);
        memset(auth, 0, sizeof auth);
        if (!n) {
            curl_slist_free_all(hl);
            return NULL;
        }
        hl = n;
    }
    if (hl)
        curl_easy_setopt(cu, CURLOPT_HTTPHEADER, hl);
    mm__hub_headers_reset(h);
    return hl;
}

static int retryable_status(long s) {
    return s == 408 || s == 429 || s == 500 || s == 502 || s == 503 || s == 504;
}

/* Transport errors that are worth another try; connection failures get
 * fewer (see retries_for). */
static int retryable_curl(CURLcode rc) {
    switch (rc) {
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_PARTIAL_FILE:
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
        return 1;
    default:
        return 0;
    }
}

static int retries_for(const hub_call *c, CURLcode rc) {
    int r = c->p->max_retries > 0 ? c->p->max_retries : 0;
    if (rc == CURLE_COULDNT_CONNECT || rc == CURLE_COULDNT_RESOLVE_HOST || rc == CURLE_COULDNT_RESOLVE_PROXY)
        return r < 1 ? r : 1; /* the hub is down or unreachable: fail fast, maybe serve the cache */
    return r;
}

/* Maps a final HTTP error status to a code and a message a person can act
 * on.  file is NULL for the repo listing. */
static int map_status(hub_call *c, const mm__hub_headers *h, const char *rev, const char *file) {
    const char *id = c->repo_id;
    const char *ep = c->p->endpoint;
    int tok = c->p->token[0] != 0;
    const char *code = h->error_code;
    if (strcmp(h->error_message, "Access to this resource is disabled.") == 0)
        return mm__hub_fail(c->err, c->errlen, MM_ENOTFOUND, "model '%s' has been disabled on %s", id, ep);
    if (strcmp(code, "GatedRepo") == 0)
        return mm__hub_fail(c->err, c->errlen, MM_EAUTH,
                            tok ? "model '%s' is gated and the token in use has no access to it: accept "
                                  "the model's terms at %s/%s with that account"
                                : "model '%s' is gated: accept the model's terms at %s/%s and set "
                                  "HF_TOKEN (or log in with `huggingface-cli login`)",
                            id, ep, id);
    if (strcmp(code, "RepoNotFound") == 0 || (h->status == 404 && !file && !code[0]))
        return mm__hub_fail(c->err, c->errlen, MM_ENOTFOUND,
                            "model '%s' was not found on %s: check the name%s", id, ep,
                            tok ? "" : "; if it is private, set HF_TOKEN to a token that can read it");
    if (strcmp(code, "RevisionNotFound") == 0)
        return mm__hub_fail(c->err, c->errlen, MM_EREVISION,
                            "revision '%s' of model '%s' was not found: check the branch, tag or commit",
                            rev, id);
    if (strcmp(code, "EntryNotFound") == 0 || h->status == 404)
        return mm__hub_fail(c->err, c->errlen, MM_EFILE, "file '%s' was not found in model '%s' at revision '%s'",
                            file ? file : "?", id, rev);
    if (h->status == 401) {
        if (tok)
            return mm__hub_fail(c->err, c->errlen, MM_EBADTOKEN,
                                "the hub rejected the access token (from HF_TOKEN, the token file or "
                                ".env) for model '%s': check that it is valid and not expired",
                                id);
        return mm__hub_fail(c->err, c->errlen, MM_EAUTH,
                            "model '%s' needs authentication (it is private or gated, or does not "
                            "exist): set HF_TOKEN and accept the model's terms at %s/%s",
                            id, ep, id);
    }
    if (h->status == 403)
        return mm__hub_fail(c->err, c->errlen, MM_EAUTH,
                            "access to model '%s' was refused: %s", id,
                            tok ? "the token in use lacks permission to read it"
                                : "set HF_TOKEN to a token that can read it");
    return mm__hub_fail(c->err, c->errlen, MM_ENETWORK, "the hub at %s answered HTTP %ld for %s%s%s", ep,
                        h->status, id, file ? "/" : "", file ? file : "");
}

/* One request (HEAD when head, else GET into body) with retries for
 * transient failures.  Returns 0 with h describing the final response
 * (any status), or a negative code: MM_ENETWORK after retries, MM_ECANCELLED. */
static int request(hub_call *c, const char *url, int head, int with_auth, membuf *body, mm__hub_headers *h) {
    for (int attempt = 0;; attempt++) {
        struct curl_slist *hl = setup_request(c, url, with_auth, h);
        if (!hl)
            return mm__hub_fail(c->err, c->errlen, MM_ENOMEM, "out of memory");
        if (head) {
            curl_easy_setopt(c->curl, CURLOPT_NOBODY, 1L);
        } else {
            if (body)
                body->len = 0;
            curl_easy_setopt(c->curl, CURLOPT_WRITEFUNCTION, mem_write);
            curl_easy_setopt(c->curl, CURLOPT_WRITEDATA, body);
            /* API calls follow redirects (a renamed repo answers 307); libcurl
             * does not carry our Authorization header to another host. */
            curl_easy_setopt(c->curl, CURLOPT_FOLLOWLOCATION, 1L);
            curl_easy_setopt(c->curl, CURLOPT_MAXREDIRS, 5L);
        }
        CURLcode rc = curl_easy_perform(c->curl);
        curl_slist_free_all(hl);
        c->n_requests++;
        if (c->cancelled)
            return mm__hub_fail(c->err, c->errlen, MM_ECANCELLED, "download of '%s' was cancelled", c->repo_id);
        if (rc == CURLE_WRITE_ERROR && body && body->overflow)
            return mm__hub_fail(c->err, c->errlen, body->overflow == 2 ? MM_ENOMEM : MM_ENETWORK,
                                "the hub's answer for '%s' is too large", c->repo_id);
        long retry_after = -1;
        int limit;
        if (rc == CURLE_OK) {
            if (!retryable_status(h->status))
                return 0;
            retry_after = h->retry_after_s;
            limit = c->p->max_retries;
        } else if (retryable_curl(rc)) {
            limit = retries_for(c, rc);
        } else {
            return mm__hub_fail(c->err, c->errlen, MM_ENETWORK, "could not reach the hub at %s: %s",
                                c->p->endpoint, c->curl_err[0] ? c->curl_err : curl_easy_strerror(rc));
        }
        if (attempt >= limit) {
            if (rc == CURLE_OK)
                return 0; /* the caller maps the final status */
            return mm__hub_fail(c->err, c->errlen, MM_ENETWORK,
                                "could not reach the hub at %s after %d attempt%s: %s", c->p->endpoint,
                                attempt + 1, attempt ? "s" : "",
                                c->curl_err[0] ? c->curl_err : curl_easy_strerror(rc));
        }
        long wait = mm__hub_backoff_ms(c->p, attempt + 1, retry_after);
        mm_log(MM_LOG_INFO, "hub: %s for %s; retrying in %ld ms (%d/%d)",
               rc == CURLE_OK ? "server busy" : curl_easy_strerror(rc), c->repo_id, wait, attempt + 1, limit);
        if (nap(c, wait))
            return mm__hub_fail(c->err, c->errlen, MM_ECANCELLED, "download of '%s' was cancelled", c->repo_id);
    }
}

/* ---- listing ------------------------------------------------------------ */

typedef struct listing {
    char commit[41];
    hub_file *files;
    int n;
} listing;

static void listing_free(listing *l) {
    for (int i = 0; i < l->n; i++)
        mm_free(l->files[i].path);
    mm_free(l->files);
    l->files = NULL;
    l->n = 0;
}

static int fetch_listing(hub_call *c, const char *rev, listing *l) {
    char qrepo[512], qrev[800], url[MM_HUB_URL_MAX + 512 + 800 + 64];
    if (mm__hub_quote(c->repo_id, 1, qrepo, sizeof qrepo) || mm__hub_quote(rev, 0, qrev, sizeof qrev))
        return mm__hub_fail(c->err, c->errlen, MM_EINVAL, "model name or revision too long");
    snprintf(url, sizeof url, "%s/api/models/%s/revision/%s?blobs=true", c->p->endpoint, qrepo, qrev);
    membuf body = {.limit = LISTING_MAX};
    mm__hub_headers h;
    int rc = request(c, url, 0, 1, &body, &h);
    if (rc == 0 && h.status != 200)
        rc = map_status(c, &h, rev, NULL);
    if (rc) {
        mm_free(body.data);
        return rc;
    }
    json_error_t jerr;
    json_t *root = body.data ? json_loadb(body.data, body.len, 0, &jerr) : NULL;
    mm_free(body.data);
    const char *sha = json_string_value(json_object_get(root, "sha"));
    json_t *sib = json_object_get(root, "siblings");
    if (!sha || !mm__hub_is_commit(sha) || !json_is_array(sib)) {
        json_decref(root);
        return mm__hub_fail(c->err, c->errlen, MM_ENETWORK,
                            "the hub at %s sent an unexpected listing for '%s' (is HF_ENDPOINT a Hugging "
                            "Face hub?)",
                            c->p->endpoint, c->repo_id);
    }
    memcpy(l->commit, sha, 41);
    for (char *s = l->commit; *s; s++)
        if (*s >= 'A' && *s <= 'F')
            *s = (char)(*s - 'A' + 'a');
    size_t n = json_array_size(sib);
    l->files = mm_calloc(n ? n : 1, sizeof *l->files);
    if (!l->files) {
        json_decref(root);
        return mm__hub_fail(c->err, c->errlen, MM_ENOMEM, "out of memory");
    }
    size_t i;
    json_t *e;
    json_array_foreach(sib, i, e) {
        const char *path = json_string_value(json_object_get(e, "rfilename"));
        if (!path)
            continue;
        int kind = mm__hub_classify(path);
        if (kind == MM__HUB_SKIP)
            continue;
        hub_file *f = &l->files[l->n];
        f->path = mm_strdup(path);
        if (!f->path) {
            json_decref(root);
            return mm__hub_fail(c->err, c->errlen, MM_ENOMEM, "out of memory");
        }
        f->kind = kind;
        json_t *lfs = json_object_get(e, "lfs");
        const char *etag = NULL;
        json_int_t size = json_integer_value(json_object_get(e, "size"));
        if (json_is_object(lfs)) {
            f->lfs = 1;
            etag = json_string_value(json_object_get(lfs, "sha256"));
            if (json_is_integer(json_object_get(lfs, "size")))
                size = json_integer_value(json_object_get(lfs, "size"));
        } else {
            etag = json_string_value(json_object_get(e, "blobId"));
        }
        if (etag && mm__hub_is_safe_etag(etag))
            snprintf(f->etag, sizeof f->etag, "%s", etag);
        f->size = size > 0 ? (uint64_t)size : 0;
        l->n++;
    }
    json_decref(root);
    return 0;
}

/* Keeps the files a model needs: the chosen weights plus every WANT file.
 * Fails with MM_EFORMAT when there are no safetensors weights. */
static int select_files(hub_call *c, listing *l) {
    int has_single = 0, has_index = 0, has_bin = 0;
    for (int i = 0; i < l->n; i++) {
        has_single |= l->files[i].kind == MM__HUB_WEIGHTS;
        has_index |= l->files[i].kind == MM__HUB_INDEX;
        has_bin |= l->files[i].kind == MM__HUB_TORCH_BIN;
    }
    if (!has_single && !has_index) {
        if (has_bin)
            return mm__hub_fail(c->err, c->errlen, MM_EFORMAT,
                                "model '%s' has only PyTorch .bin weights (pytorch_model.bin); only "
                                "safetensors weights are supported for now",
                                c->repo_id);
        return mm__hub_fail(c->err, c->errlen, MM_EFORMAT,
                            "model '%s' has no safetensors weights (model.safetensors or "
                            "model.safetensors.index.json); ONNX, TensorFlow, Flax, OpenVINO and GGUF "
                            "copies are not supported",
                            c->repo_id);
    }
    int j = 0;
    for (int i = 0; i < l->n; i++) {
        hub_file *f = &l->files[i];
        int keep = f->kind == MM__HUB_WANT || (has_single && f->kind == MM__HUB_WEIGHTS) ||
                   (!has_single && (f->kind == MM__HUB_INDEX || f->kind == MM__HUB_SHARD));
        if (keep)
            l->files[j++] = *f;
        else
            mm_free(f->path);
    }
    l->n = j;
    return 0;
}

/* ---- one blob (declared here, defined below) ------------------------------ */

static int fetch_blob(hub_call *c, const char *commit, hub_file *f);

/* With a sharded checkpoint, keeps exactly the shards its index names: the
 * small index is fetched first and its weight_map read.  A shard the index
 * names but the repo lacks is MM_EFILE. */
static int resolve_shards(hub_call *c, listing *l) {
    hub_file *idx = NULL;
    for (int i = 0; i < l->n; i++)
        if (l->files[i].kind == MM__HUB_INDEX)
            idx = &l->files[i];
    if (!idx)
        return 0;
    char path[MM_HUB_PATH_MAX + 1200];
    int rc;
    if (fmt_path(path, sizeof path, "%s/snapshots/%s/%s", c->repo_dir, l->commit, idx->path))
        return mm__hub_fail(c->err, c->errlen, MM_EINVAL, "path too long: %s", idx->path);
    if (!path_exists(path)) {
        c->prog.file = idx->path;
        c->prog.file_total = idx->size;
        c->prog.file_done = 0;
        if ((rc = fetch_blob(c, l->commit, idx)))
            return rc;
        fmt_path(path, sizeof path, "%s/blobs/%s", c->repo_dir, idx->etag);
    }
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    json_t *map = json_object_get(root, "weight_map");
    if (!json_is_object(map) || json_object_size(map) == 0) {
        json_decref(root);
        return mm__hub_fail(c->err, c->errlen, MM_EFORMAT, "%s of model '%s' has no weight_map", idx->path,
                            c->repo_id);
    }
    int *keep = mm_calloc((size_t)l->n, sizeof *keep);
    if (!keep) {
        json_decref(root);
        return mm__hub_fail(c->err, c->errlen, MM_ENOMEM, "out of memory");
    }
    const char *key;
    json_t *val;
    rc = 0;
    json_object_foreach(map, key, val) {
        const char *shard = json_string_value(val);
        int found = 0;
        for (int i = 0; shard && i < l->n && !found; i++)
            if (l->files[i].kind == MM__HUB_SHARD && strcmp(l->files[i].path, shard) == 0)
                found = keep[i] = 1;
        if (!found) {
            rc = mm__hub_fail(c->err, c->errlen, MM_EFILE,
                              "%s of model '%s' names the shard '%.200s', which the repo does not have",
                              idx->path, c->repo_id, shard ? shard : "?");
            break;
        }
    }
    json_decref(root);
    if (rc == 0) {
        int j = 0;
        for (int i = 0; i < l->n; i++) {
            if (l->files[i].kind != MM__HUB_SHARD || keep[i])
                l->files[j++] = l->files[i];
            else
                mm_free(l->files[i].path);
        }
        l->n = j;
    }
    mm_free(keep);
    return rc;
}

/* ---- one blob ------------------------------------------------------------ */

typedef struct blob_dl {
    hub_call *c;
    int fd;
    uint64_t have;        /* bytes in the .incomplete file */
    uint64_t start;       /* offset this response started at */
    int first;            /* no body byte seen yet in this response */
    int skip_body;        /* an error response: keep its body out of the file */
    int write_errno;
    EVP_MD_CTX *md;
    const EVP_MD *alg;
    uint64_t expect;      /* expected size; 0 unknown */
    mm__hub_headers *h;
} blob_dl;

static int hash_reset(blob_dl *d) {
    if (!d->alg)
        return 0;
    if (EVP_DigestInit_ex(d->md, d->alg, NULL) != 1)
        return -1;
    if (d->alg == EVP_sha1()) { /* git blob id: sha1("blob <size>\0" + content) */
        char pre[48];
        int n = snprintf(pre, sizeof pre, "blob %llu", (unsigned long long)d->expect);
        if (EVP_DigestUpdate(d->md, pre, (size_t)n + 1) != 1)
            return -1;
    }
    return 0;
}

static size_t blob_write(char *ptr, size_t size, size_t nmemb, void *ud) {
    blob_dl *d = ud;
    size_t n = size * nmemb;
    if (d->first) {
        d->first = 0;
        long s = d->h->status;
        d->skip_body = !(s == 200 || s == 206);
        if (s == 200 && d->have > 0) {
            /* A 200 to a Range request is the whole file: start over. */
            mm_log(MM_LOG_INFO, "hub: server ignored the resume request for %s; restarting it", d->c->prog.file);
            if (ftruncate(d->fd, 0) != 0 || lseek(d->fd, 0, SEEK_SET) != 0 || hash_reset(d) != 0) {
                d->write_errno = errno ? errno : EIO;
                return 0;
            }
            d->have = 0;
            d->c->prog.file_done = 0;
        }
    }
    if (d->skip_body)
        return n;
    size_t off = 0;
    while (off < n) {
        ssize_t w = write(d->fd, ptr + off, n - off);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            d->write_errno = errno;
            return 0;
        }
        off += (size_t)w;
    }
    if (d->alg && EVP_DigestUpdate(d->md, ptr, n) != 1) {
        d->write_errno = ENOMEM;
        return 0;
    }
    d->have += n;
    d->c->bytes_downloaded += n;
    d->c->prog.file_done = d->have;
    if (report(d->c))
        return 0;
    return n;
}

/* Hashes the first n bytes already in the file (a resumed download). */
static int hash_existing(blob_dl *d, uint64_t n) {
    if (!d->alg || n == 0)
        return 0;
    char *buf = mm_malloc(1 << 20);
    if (!buf)
        return MM_ENOMEM;
    uint64_t off = 0;
    int rc = 0;
    while (off < n) {
        size_t want = (n - off) < (1u << 20) ? (size_t)(n - off) : (1u << 20);
        ssize_t r = pread(d->fd, buf, want, (off_t)off);
        if (r <= 0) {
            rc = MM_EIO;
            break;
        }
        if (EVP_DigestUpdate(d->md, buf, (size_t)r) != 1) {
            rc = MM_ENOMEM;
            break;
        }
        off += (uint64_t)r;
    }
    mm_free(buf);
    return rc;
}

static void hex(const unsigned char *b, unsigned n, char *out) {
    static const char digits[] = "0123456789abcdef";
    for (unsigned i = 0; i < n; i++) {
        out[2 * i] = digits[b[i] >> 4];
        out[2 * i + 1] = digits[b[i] & 15];
    }
    out[2 * n] = 0;
}

/* Takes the blob lock, polling so the caller can cancel.  Returns the fd. */
static int take_lock(hub_call *c, const char *etag, int *fd_out) {
    char path[MM_HUB_PATH_MAX + 200];
    snprintf(path, sizeof path, "%s/%s.lock", c->lock_dir, etag);
    if (mkdirs(c->lock_dir) != 0)
        return mm__hub_fail(c->err, c->errlen, io_code(errno), "cannot create the lock folder %s: %s", c->lock_dir,
                            strerror(errno));
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
    if (fd < 0)
        return mm__hub_fail(c->err, c->errlen, io_code(errno), "cannot open the lock file %s: %s", path,
                            strerror(errno));
    int logged = 0;
    while (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        if (errno != EWOULDBLOCK && errno != EINTR) {
            int e = errno;
            close(fd);
            return mm__hub_fail(c->err, c->errlen, MM_EIO, "cannot lock %s: %s", path, strerror(e));
        }
        if (!logged++)
            mm_log(MM_LOG_INFO, "hub: waiting for another download of %s/%s", c->repo_id, c->prog.file);
        if (nap(c, 50)) {
            close(fd);
            return mm__hub_fail(c->err, c->errlen, MM_ECANCELLED, "download of '%s' was cancelled", c->repo_id);
        }
    }
    *fd_out = fd;
    return 0;
}

/* HEAD the file: fills f->etag/f->size and the URL to GET. */
static int head_file(hub_call *c, const char *commit, hub_file *f, char *get_url, size_t cap) {
    char qrepo[512], qpath[3200], url[MM_HUB_URL_MAX + MM__HUB_LOCATION_MAX];
    if (mm__hub_quote(c->repo_id, 1, qrepo, sizeof qrepo) || mm__hub_quote(f->path, 1, qpath, sizeof qpath))
        return mm__hub_fail(c->err, c->errlen, MM_EINVAL, "file name too long: %s", f->path);
    snprintf(url, sizeof url, "%s/%s/resolve/%s/%s", c->p->endpoint, qrepo, commit, qpath);
    mm__hub_headers h;
    for (int hops = 0;; hops++) {
        int rc = request(c, url, 1, mm__hub_same_origin(url, c->p->endpoint), NULL, &h);
        if (rc)
            return rc;
        /* Follow only relative redirects (renamed repos); stop at the CDN. */
        if (h.status >= 300 && h.status < 400 && h.location[0] == '/' && hops < 5) {
            char origin[MM_HUB_URL_MAX];
            const char *p = strstr(c->p->endpoint, "://");
            size_t ol = p ? (size_t)(p + 3 - c->p->endpoint) + strcspn(p + 3, "/") : strlen(c->p->endpoint);
            if (ol >= sizeof origin)
                ol = sizeof origin - 1;
            memcpy(origin, c->p->endpoint, ol);
            origin[ol] = 0;
            snprintf(url, sizeof url, "%s%s", origin, h.location);
            continue;
        }
        break;
    }
    int redirect = h.status >= 300 && h.status < 400;
    if (!(h.status == 200 || redirect))
        return map_status(c, &h, commit, f->path);
    if (redirect && !h.location[0])
        return mm__hub_fail(c->err, c->errlen, MM_ENETWORK, "the hub sent a redirect %s for %s",
                            h.location_too_long ? "with an overlong Location" : "without a Location", f->path);
    if (!h.commit[0])
        mm_log(MM_LOG_DEBUG, "hub: no X-Repo-Commit for %s/%s", c->repo_id, f->path);
    const char *etag = h.linked_etag[0] ? h.linked_etag : h.etag;
    if (etag[0]) {
        if (!mm__hub_is_safe_etag(etag))
            return mm__hub_fail(c->err, c->errlen, MM_ENETWORK, "the hub sent an unusable ETag for %s", f->path);
        if (f->etag[0] && strcmp(f->etag, etag) != 0)
            mm_log(MM_LOG_DEBUG, "hub: %s: listing and HEAD disagree on the blob id; using HEAD's", f->path);
        snprintf(f->etag, sizeof f->etag, "%s", etag);
    }
    if (!f->etag[0])
        return mm__hub_fail(c->err, c->errlen, MM_ENETWORK, "the hub sent no ETag for %s", f->path);
    if (h.linked_size >= 0)
        f->size = (uint64_t)h.linked_size;
    else if (!redirect && h.content_length >= 0)
        f->size = (uint64_t)h.content_length;
    if (fmt_path(get_url, cap, "%s", redirect ? h.location : url))
        return mm__hub_fail(c->err, c->errlen, MM_ENETWORK, "the download URL for %s is too long", f->path);
    return 0;
}

/* Downloads one file into blobs/<etag> (nothing to do when another thread
 * or process got there first). */
static int fetch_blob(hub_call *c, const char *commit, hub_file *f) {
    char get_url[MM_HUB_URL_MAX + MM__HUB_LOCATION_MAX];
    int rc = head_file(c, commit, f, get_url, sizeof get_url);
    if (rc)
        return rc;
    char blob[MM_HUB_PATH_MAX + 200], part[MM_HUB_PATH_MAX + 220];
    snprintf(blob, sizeof blob, "%s/blobs/%s", c->repo_dir, f->etag);
    snprintf(part, sizeof part, "%s.incomplete", blob);
    if (path_exists(blob))
        return 0;
    int lock_fd = -1;
    if ((rc = take_lock(c, f->etag, &lock_fd)))
        return rc;
    if (path_exists(blob)) { /* someone else downloaded it while we waited */
        close(lock_fd);
        return 0;
    }
    if (mkdirs_parent(blob) != 0) {
        int e = errno;
        close(lock_fd);
        return mm__hub_fail(c->err, c->errlen, io_code(e), "cannot create %s/blobs: %s", c->repo_dir, strerror(e));
    }
    blob_dl d = {.c = c, .fd = -1, .expect = f->size};
    mm__hub_headers h;
    d.h = &h;
    size_t elen = strlen(f->etag);
    int is_hex = 1;
    for (size_t i = 0; i < elen; i++)
        if (!strchr("0123456789abcdefABCDEF", f->etag[i]))
            is_hex = 0;
    if (is_hex && elen == 64)
        d.alg = EVP_sha256();
    else if (is_hex && elen == 40 && f->size > 0 && !f->lfs)
        d.alg = EVP_sha1();
    d.fd = open(part, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (d.fd < 0) {
        int e = errno;
        close(lock_fd);
        return mm__hub_fail(c->err, c->errlen, io_code(e), "cannot write %s: %s", part, strerror(e));
    }
    if (d.alg && !(d.md = EVP_MD_CTX_new())) {
        rc = mm__hub_fail(c->err, c->errlen, MM_ENOMEM, "out of memory");
        goto out;
    }
    struct stat st;
    fstat(d.fd, &st);
    d.have = (uint64_t)st.st_size;
    if (d.expect && d.have > d.expect) {
        if (ftruncate(d.fd, 0) != 0) {
            rc = mm__hub_fail(c->err, c->errlen, io_code(errno), "cannot truncate %s", part);
            goto out;
        }
        d.have = 0;
    }
    if (hash_reset(&d) != 0 || (rc = hash_existing(&d, d.have)) != 0) {
        rc = mm__hub_fail(c->err, c->errlen, rc ? rc : MM_ENOMEM, "cannot hash %s", part);
        goto out;
    }
    if (lseek(d.fd, (off_t)d.have, SEEK_SET) < 0) {
        rc = mm__hub_fail(c->err, c->errlen, MM_EIO, "cannot seek in %s", part);
        goto out;
    }
    if (d.have)
        mm_log(MM_LOG_INFO, "hub: resuming %s/%s at byte %llu", c->repo_id, f->path, (unsigned long long)d.have);
    c->prog.file_done = d.have;
    c->prog.file_total = f->size;
    report(c);
    int same = mm__hub_same_origin(get_url, c->p->endpoint);
    /* A partial file left by an earlier run may hold bytes that are not the
     * blob's (a crash, another server): when the checksum then fails, start
     * over once from zero before calling the download corrupt. */
    int may_restart = d.have > 0;
again:
    for (int attempt = 0;; attempt++) {
        if (d.expect && d.have == d.expect)
            break;
        struct curl_slist *hl = setup_request(c, get_url, same, &h);
        if (!hl) {
            rc = mm__hub_fail(c->err, c->errlen, MM_ENOMEM, "out of memory");
            goto out;
        }
        char range[64];
        if (d.have) {
            snprintf(range, sizeof range, "%llu-", (unsigned long long)d.have);
            curl_easy_setopt(c->curl, CURLOPT_RANGE, range);
        }
        curl_easy_setopt(c->curl, CURLOPT_FOLLOWLOCATION, 1L);
        curl_easy_setopt(c->curl, CURLOPT_MAXREDIRS, 5L);
        curl_easy_setopt(c->curl, CURLOPT_WRITEFUNCTION, blob_write);
        curl_easy_setopt(c->curl, CURLOPT_WRITEDATA, &d);
        curl_easy_setopt(c->curl, CURLOPT_BUFFERSIZE, 256L * 1024);
        d.first = 1;
        d.skip_body = 0;
        d.start = d.have;
        CURLcode cr = curl_easy_perform(c->curl);
        curl_slist_free_all(hl);
        c->n_requests++;
        if (c->cancelled) {
            rc = mm__hub_fail(c->err, c->errlen, MM_ECANCELLED, "download of '%s' was cancelled", c->repo_id);
            goto out;
        }
        if (d.write_errno) {
            rc = mm__hub_fail(c->err, c->errlen, io_code(d.write_errno),
                              d.write_errno == ENOSPC || d.write_errno == EDQUOT
                                  ? "no space left on the disk holding %s while downloading %s: free some "
                                    "space or point the model cache elsewhere"
                                  : "cannot write %s while downloading %s",
                              c->repo_dir, f->path);
            goto out;
        }
        long retry_after = -1;
        int limit = c->p->max_retries;
        if (cr == CURLE_OK) {
            if (h.status == 416) {
                /* Our partial file does not fit the server's: start over. */
                if (ftruncate(d.fd, 0) != 0 || lseek(d.fd, 0, SEEK_SET) != 0 || hash_reset(&d) != 0) {
                    rc = mm__hub_fail(c->err, c->errlen, MM_EIO, "cannot truncate %s", part);
                    goto out;
                }
                d.have = 0;
            } else if (h.status == 200 || h.status == 206) {
                if (!d.expect || d.have == d.expect)
                    break;
                /* short body: resume below */
            } else if (!retryable_status(h.status)) {
                rc = map_status(c, &h, commit, f->path);
                goto out;
            } else {
                retry_after = h.retry_after_s;
            }
        } else if (retryable_curl(cr)) {
            limit = retries_for(c, cr);
        } else {
            rc = mm__hub_fail(c->err, c->errlen, MM_ENETWORK, "download of %s/%s failed: %s", c->repo_id, f->path,
                              c->curl_err[0] ? c->curl_err : curl_easy_strerror(cr));
            goto out;
        }
        if (attempt >= limit) {
            rc = mm__hub_fail(c->err, c->errlen, MM_ENETWORK,
                              "download of %s/%s failed after %d attempts (%s); run again to resume it",
                              c->repo_id, f->path, attempt + 1,
                              cr != CURLE_OK ? (c->curl_err[0] ? c->curl_err : curl_easy_strerror(cr))
                                             : "the server kept failing");
            goto out;
        }
        long wait = mm__hub_backoff_ms(c->p, attempt + 1, retry_after);
        mm_log(MM_LOG_INFO, "hub: download of %s/%s interrupted at byte %llu (%s); retrying in %ld ms (%d/%d)",
               c->repo_id, f->path, (unsigned long long)d.have,
               cr != CURLE_OK ? curl_easy_strerror(cr) : "server error", wait, attempt + 1, limit);
        if (nap(c, wait)) {
            rc = mm__hub_fail(c->err, c->errlen, MM_ECANCELLED, "download of '%s' was cancelled", c->repo_id);
            goto out;
        }
    }
    if (d.alg) {
        unsigned char md[EVP_MAX_MD_SIZE];
        unsigned mdlen = 0;
        char got[2 * EVP_MAX_MD_SIZE + 1];
        EVP_DigestFinal_ex(d.md, md, &mdlen);
        hex(md, mdlen, got);
        if (strcasecmp(got, f->etag) != 0 && may_restart) {
            may_restart = 0;
            mm_log(MM_LOG_WARNING, "hub: %s/%s: the resumed download failed its checksum; downloading it anew",
                   c->repo_id, f->path);
            if (ftruncate(d.fd, 0) != 0 || lseek(d.fd, 0, SEEK_SET) != 0 || hash_reset(&d) != 0) {
                rc = mm__hub_fail(c->err, c->errlen, MM_EIO, "cannot truncate %s", part);
                goto out;
            }
            d.have = 0;
            c->prog.file_done = 0;
            goto again;
        }
        if (strcasecmp(got, f->etag) != 0) {
            unlink(part);
            rc = mm__hub_fail(c->err, c->errlen, MM_ECORRUPT,
                              "%s/%s failed its %s check (expected %s, got %s); the download was deleted: "
                              "run again to download it anew",
                              c->repo_id, f->path, d.alg == EVP_sha1() ? "git sha1" : "sha256", f->etag, got);
            goto out;
        }
    }
    if (rename(part, blob) != 0) {
        rc = mm__hub_fail(c->err, c->errlen, io_code(errno), "cannot move %s into place: %s", part,
                          strerror(errno));
        goto out;
    }
    rc = 0;
out:
    if (d.md)
        EVP_MD_CTX_free(d.md);
    if (d.fd >= 0)
        close(d.fd);
    close(lock_fd);
    return rc;
}

/* snapshots/<commit>/<path> -> ../../blobs/<etag>, replaced atomically. */
static int link_file(hub_call *c, const char *commit, const hub_file *f) {
    char lnk[MM_HUB_PATH_MAX + 1200], target[1400], cur[1400];
    snprintf(lnk, sizeof lnk, "%s/snapshots/%s/%s", c->repo_dir, commit, f->path);
    if (mm__hub_link_target(f->path, f->etag, target, sizeof target))
        return mm__hub_fail(c->err, c->errlen, MM_EINVAL, "path too long: %s", f->path);
    ssize_t n = readlink(lnk, cur, sizeof cur - 1);
    if (n >= 0) {
        cur[n] = 0;
        if (strcmp(cur, target) == 0)
            return 0;
    }
    if (mkdirs_parent(lnk) != 0)
        return mm__hub_fail(c->err, c->errlen, io_code(errno), "cannot create the snapshot folder for %s: %s",
                            f->path, strerror(errno));
    char tmp[MM_HUB_PATH_MAX + 1300];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld.%lx", lnk, (long)getpid(), (unsigned long)pthread_self());
    unlink(tmp);
    if (symlink(target, tmp) != 0 || rename(tmp, lnk) != 0) {
        int e = errno;
        unlink(tmp);
        return mm__hub_fail(c->err, c->errlen, io_code(e), "cannot link %s into the snapshot: %s", f->path,
                            strerror(e));
    }
    return 0;
}

/* ---- the call ----------------------------------------------------------- */

static int fill_from_snapshot(const char *repo_dir, const char *commit, mm_hub_result *out) {
    char snap[MM_HUB_PATH_MAX + 64];
    snprintf(snap, sizeof snap, "%s/snapshots/%s", repo_dir, commit);
    if (!realpath(snap, out->path) && fmt_path(out->path, sizeof out->path, "%s", snap))
        return MM_ENOBUFS;
    snprintf(out->commit, sizeof out->commit, "%s", commit);
    return 0;
}

static int local_model(const char *model, mm_hub_result *out, char *err, size_t errlen) {
    if (!realpath(model, out->path))
        return mm__hub_fail(err, errlen, MM_EIO, "cannot resolve the model folder '%s': %s", model, strerror(errno));
    out->local_dir = 1;
    out->from_cache = 1;
    int rc = mm__hub_snapshot_complete(out->path, err, errlen);
    if (rc < 0)
        return rc;
    if (rc == 1)
        mm_log(MM_LOG_WARNING, "hub: local model folder %s has no config.json or no safetensors weights", out->path);
    return 0;
}

static int download(hub_call *c, const char *rev, mm_hub_result *out) {
    listing l = {0};
    int rc = fetch_listing(c, rev, &l);
    if (rc)
        goto done;
    if (mm__hub_is_commit(rev) && strcasecmp(rev, l.commit) != 0) {
        rc = mm__hub_fail(c->err, c->errlen, MM_EREVISION, "the hub resolved commit %s of '%s' to %s", rev,
                          c->repo_id, l.commit);
        goto done;
    }
    if ((rc = select_files(c, &l)))
        goto done;
    if (mkdirs(c->repo_dir) != 0) {
        rc = mm__hub_fail(c->err, c->errlen, io_code(errno), "cannot create the model cache folder %s: %s",
                          c->repo_dir, strerror(errno));
        goto done;
    }
    if ((rc = resolve_shards(c, &l)))
        goto done;
    /* What is there already, and how much is left to fetch. */
    uint64_t total = 0, missing = 0;
    for (int i = 0; i < l.n; i++) {
        hub_file *f = &l.files[i];
        char p[MM_HUB_PATH_MAX + 1200];
        snprintf(p, sizeof p, "%s/snapshots/%s/%s", c->repo_dir, l.commit, f->path);
        f->have = path_exists(p);
        if (!f->have && f->etag[0]) {
            snprintf(p, sizeof p, "%s/blobs/%s", c->repo_dir, f->etag);
            f->have = path_exists(p) ? 2 : 0; /* blob present: only the link is missing */
        }
        total += f->size;
        if (!f->have)
            missing += f->size;
    }
    c->prog.model_total = total;
    c->prog.file_count = l.n;
    struct statvfs vfs;
    if (missing && statvfs(c->repo_dir, &vfs) == 0 &&
        (uint64_t)vfs.f_bavail * vfs.f_frsize < missing + (16u << 20)) {
        rc = mm__hub_fail(c->err, c->errlen, MM_EDISKFULL,
                          "not enough disk space for '%s': %.1f MB needed, %.1f MB free at %s; free some "
                          "space or point the model cache elsewhere",
                          c->repo_id, missing / 1e6, (double)vfs.f_bavail * vfs.f_frsize / 1e6, c->repo_dir);
        goto done;
    }
    if (missing)
        mm_log(MM_LOG_INFO, "hub: downloading %s@%s (commit %.12s): %d files, %.1f MB to fetch", c->repo_id, rev,
               l.commit, l.n, missing / 1e6);
    for (int i = 0; i < l.n; i++) {
        hub_file *f = &l.files[i];
        c->prog.file = f->path;
        c->prog.file_index = i;
        c->prog.file_total = f->size;
        c->prog.file_done = 0;
        if (!f->have && (rc = fetch_blob(c, l.commit, f)))
            goto done;
        c->prog.file_done = f->size;
        if (report(c)) {
            rc = mm__hub_fail(c->err, c->errlen, MM_ECANCELLED, "download of '%s' was cancelled", c->repo_id);
            goto done;
        }
        c->done_before_file += f->size;
        c->prog.file_done = 0;
    }
    /* Every blob is in place: publish the snapshot, then the ref. */
    for (int i = 0; i < l.n; i++)
        if (l.files[i].have != 1 && (rc = link_file(c, l.commit, &l.files[i])))
            goto done;
    if (!mm__hub_is_commit(rev)) {
        char refp[MM_HUB_PATH_MAX + 300];
        snprintf(refp, sizeof refp, "%s/refs/%s", c->repo_dir, rev);
        if ((rc = write_file_atomic(refp, l.commit, 40)))
            goto done;
    }
    char snap[MM_HUB_PATH_MAX + 64];
    snprintf(snap, sizeof snap, "%s/snapshots/%s", c->repo_dir, l.commit);
    if ((rc = mm__hub_snapshot_complete(snap, c->err, c->errlen)) != 0) {
        if (rc > 0)
            rc = mm__hub_fail(c->err, c->errlen, MM_EFILE,
                              "model '%s' at %s lacks files a model needs (config.json or weights)", c->repo_id,
                              rev);
        goto done;
    }
    fill_from_snapshot(c->repo_dir, l.commit, out);
    out->n_files = l.n;
    out->bytes_total = total;
    c->prog.file = "";
    report(c);
done:
    listing_free(&l);
    return rc;
}

int mm_hub_snapshot(const mm_hub_params *p, const char *model, const char *revision, mm_hub_result *out,
                    char *err, size_t errlen) {
    if (err && errlen)
        err[0] = 0;
    if (!p || !model || !out)
        return mm__hub_fail(err, errlen, MM_EINVAL, "mm_hub_snapshot: missing argument");
    memset(out, 0, sizeof *out);
    const char *rev = (revision && *revision) ? revision : "main";

    /* A path to an existing directory is a model used in place. */
    struct stat st;
    if (stat(model, &st) == 0 && S_ISDIR(st.st_mode))
        return local_model(model, out, err, errlen);
    if (model[0] == '/' || model[0] == '~' || strncmp(model, "./", 2) == 0 || strncmp(model, "../", 3) == 0)
        return mm__hub_fail(err, errlen, MM_EINVAL, "model path '%.300s' is not an existing directory", model);
    int rc;
    if ((rc = mm_hub_validate_repo_id(model, err, errlen)) || (rc = mm_hub_validate_revision(rev, err, errlen)))
        return rc;
    if (!p->cache_dir[0])
        return mm__hub_fail(err, errlen, MM_EINVAL, "no model cache folder set");

    hub_call c = {.p = p, .repo_id = model, .err = err, .errlen = errlen};
    char cache_abs[MM_HUB_PATH_MAX];
    const char *cache = p->cache_dir;
    if (mkdirs(p->cache_dir) == 0 && realpath(p->cache_dir, cache_abs))
        cache = cache_abs;
    if (mm_hub_repo_dir(cache, model, c.repo_dir, sizeof c.repo_dir) ||
        fmt_path(c.lock_dir, sizeof c.lock_dir, "%s/.locks/%s", cache, strrchr(c.repo_dir, '/') + 1))
        return mm__hub_fail(err, errlen, MM_EINVAL, "model cache path too long");
    c.prog.file = "";

    /* 1. cache first */
    char commit[41] = "";
    int have_commit = 0;
    if (mm__hub_is_commit(rev)) {
        for (int i = 0; i < 40; i++)
            commit[i] = (char)((rev[i] >= 'A' && rev[i] <= 'F') ? rev[i] - 'A' + 'a' : rev[i]);
        commit[40] = 0;
        have_commit = 1;
    } else {
        have_commit = read_ref(c.repo_dir, rev, commit) == 0;
    }
    int cached = 0;
    if (have_commit) {
        char snap[MM_HUB_PATH_MAX + 64];
        snprintf(snap, sizeof snap, "%s/snapshots/%s", c.repo_dir, commit);
        rc = mm__hub_snapshot_complete(snap, err, errlen);
        if (rc < 0)
            return rc;
        cached = rc == 0;
        if (cached && (!p->refresh || p->offline || mm__hub_is_commit(rev))) {
            fill_from_snapshot(c.repo_dir, commit, out);
            out->from_cache = 1;
            return 0;
        }
    }
    if (p->offline)
        return mm__hub_fail(err, errlen, MM_ENOTFOUND,
                            "model '%s' at revision '%s' is not in the cache (%s) and offline mode is on "
                            "(HF_HUB_OFFLINE=1): download it once with network access",
                            model, rev, cache);

    for (const char *t = p->token; *t; t++)
        if ((unsigned char)*t < 0x21 || (unsigned char)*t == 0x7f) /* it goes into a header line */
            return mm__hub_fail(err, errlen, MM_EBADTOKEN,
                                "the access token (HF_TOKEN, the token file or .env) contains spaces or "
                                "control characters: check it");
    pthread_once(&curl_once, curl_init_once);
    if (curl_init_rc)
        return mm__hub_fail(err, errlen, MM_EINTERNAL, "libcurl failed to initialize");
    c.curl = thread_handle();
    if (!c.curl)
        return mm__hub_fail(err, errlen, MM_ENOMEM, "out of memory (curl handle)");
    rc = download(&c, rev, out);
    curl_easy_reset(c.curl); /* drops this call's pointers (callbacks, error buffer); keeps connections */
    if (rc == MM_ENETWORK && cached) {
        /* The hub is unreachable (or kept failing) but this revision is
         * cached: serve it, and say so. */
        mm_log(MM_LOG_WARNING, "hub: %s; serving the cached copy of %s at %s (commit %.12s)", err ? err : "",
               model, rev, commit);
        memset(out, 0, sizeof *out);
        fill_from_snapshot(c.repo_dir, commit, out);
        out->stale = 1;
        if (err && errlen)
            err[0] = 0;
        rc = 0;
    } else if (rc == MM_ENETWORK && err && errlen) {
        size_t used = strlen(err);
        snprintf(err + used, errlen - used, "; model '%s' is not cached at revision '%s'", model, rev);
    }
    out->n_requests = c.n_requests;
    out->bytes_downloaded = c.bytes_downloaded;
    if (rc == 0)
        mm_log(MM_LOG_DEBUG, "hub: %s@%s ready at %s (%d requests, %llu bytes received)", model, rev, out->path,
               c.n_requests, (unsigned long long)c.bytes_downloaded);
    return rc;
}
