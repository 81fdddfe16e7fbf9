/* mm_hub_util.c: the pure parts of the hub client and its settings.
 *
 * Name and path validation, header parsing, URL quoting, file selection,
 * symlink targets and back-off live here, apart from the network code, so
 * the C tests can drive them without a server.  mm_hub_default_params() and
 * the token lookup are here too: they read only the environment and a few
 * small files.  Nothing here logs the token or puts it in a message.
 */
#include "mm_hub_internal.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include <jansson.h>

#include "mm_err.h"

int mm__hub_fail(char *err, size_t errlen, int code, const char *fmt, ...) {
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return code;
}

/* ---- names ------------------------------------------------------------ */

static int name_char(int c) {
    return isalnum(c) || c == '_' || c == '-' || c == '.';
}

static int check_part(const char *s, size_t n) {
    if (n < 1 || n > 96)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!name_char((unsigned char)s[i]))
            return 0;
    if (s[0] == '.' || s[0] == '-' || s[n - 1] == '.' || s[n - 1] == '-')
        return 0;
    return 1;
}

int mm_hub_validate_repo_id(const char *id, char *err, size_t errlen) {
    if (!id || !*id)
        return mm__hub_fail(err, errlen, MM_EINVAL, "model name is empty");
    size_t n = strlen(id);
    const char *slash = strchr(id, '/');
    int ok = n <= 200 && !strstr(id, "..") && !strstr(id, "--");
    if (ok && n > 4 && strcmp(id + n - 4, ".git") == 0)
        ok = 0;
    if (ok) {
        if (slash)
            ok = !strchr(slash + 1, '/') && check_part(id, (size_t)(slash - id)) &&
                 check_part(slash + 1, strlen(slash + 1));
        else
            ok = check_part(id, n);
    }
    if (!ok)
        return mm__hub_fail(err, errlen, MM_EINVAL,
                            "invalid model name '%.200s': expected 'org/name' (letters, digits, "
                            "'.', '_', '-'; no '..' or '--') or a path to an existing model "
                            "directory",
                            id);
    return 0;
}

int mm_hub_validate_revision(const char *rev, char *err, size_t errlen) {
    size_t n = rev ? strlen(rev) : 0;
    int ok = n >= 1 && n <= 255 && rev[0] != '/' && rev[n - 1] != '/' && !strstr(rev, "..") &&
             !strstr(rev, "//");
    for (size_t i = 0; ok && i < n; i++) {
        unsigned char c = (unsigned char)rev[i];
        if (c <= 0x20 || c >= 0x7f || c == '\\' || c == ':' || c == '?' || c == '*' || c == '[' ||
            c == '~' || c == '^')
            ok = 0;
    }
    if (ok && (strcmp(rev, ".") == 0 || strncmp(rev, "./", 2) == 0 || strstr(rev, "/./") ||
               (n >= 2 && strcmp(rev + n - 2, "/.") == 0)))
        ok = 0;
    if (!ok)
        return mm__hub_fail(err, errlen, MM_EINVAL,
                            "invalid revision '%.100s': expected a branch, tag or commit", rev ? rev : "");
    return 0;
}

int mm__hub_is_commit(const char *s) {
    if (!s)
        return 0;
    size_t i = 0;
    for (; s[i]; i++)
        if (!isxdigit((unsigned char)s[i]))
            return 0;
    return i == 40;
}

int mm__hub_is_safe_etag(const char *s) {
    size_t n = s ? strlen(s) : 0;
    if (n < 1 || n > 128 || s[0] == '.')
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!name_char((unsigned char)s[i]))
            return 0;
    return 1;
}

int mm__hub_is_safe_repo_path(const char *path) {
    size_t n = path ? strlen(path) : 0;
    if (n < 1 || n > 1024 || path[0] == '/')
        return 0;
    const char *p = path;
    while (*p) {
        const char *e = strchr(p, '/');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len == 0 || (len == 1 && p[0] == '.') || (len == 2 && p[0] == '.' && p[1] == '.'))
            return 0;
        for (size_t i = 0; i < len; i++) {
            unsigned char c = (unsigned char)p[i];
            if (c < 0x20 || c == 0x7f || c == '\\')
                return 0;
        }
        if (!e)
            break;
        p = e + 1;
        if (!*p)
            return 0; /* trailing slash */
    }
    return 1;
}

int mm_hub_repo_dir(const char *cache_dir, const char *repo_id, char *buf, size_t cap) {
    char flat[256];
    size_t j = 0;
    for (const char *s = repo_id; *s; s++) {
        if (j + 3 >= sizeof flat)
            return MM_ENOBUFS;
        if (*s == '/') {
            flat[j++] = '-';
            flat[j++] = '-';
        } else {
            flat[j++] = *s;
        }
    }
    flat[j] = 0;
    int n = snprintf(buf, cap, "%s/models--%s", cache_dir, flat);
    return (n < 0 || (size_t)n >= cap) ? MM_ENOBUFS : 0;
}

/* ---- URLs --------------------------------------------------------------- */

int mm__hub_quote(const char *s, int keep_slash, char *out, size_t cap) {
    static const char hex[] = "0123456789ABCDEF";
    size_t j = 0;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~' || (keep_slash && c == '/')) {
            if (j + 1 >= cap)
                return MM_ENOBUFS;
            out[j++] = (char)c;
        } else {
            if (j + 3 >= cap)
                return MM_ENOBUFS;
            out[j++] = '%';
            out[j++] = hex[c >> 4];
            out[j++] = hex[c & 15];
        }
    }
    if (j >= cap)
        return MM_ENOBUFS;
    out[j] = 0;
    return 0;
}

/* Splits "scheme://host[:port]/..." into lowercased scheme, host and a port
 * (defaulted from the scheme).  0 on success. */
static int split_origin(const char *url, char *scheme, size_t scap, char *host, size_t hcap,
                        long *port) {
    const char *p = strstr(url, "://");
    if (!p || (size_t)(p - url) >= scap)
        return -1;
    size_t sl = (size_t)(p - url);
    for (size_t i = 0; i < sl; i++)
        scheme[i] = (char)tolower((unsigned char)url[i]);
    scheme[sl] = 0;
    p += 3;
    const char *at = NULL;
    const char *end = p + strcspn(p, "/?#");
    for (const char *q = p; q < end; q++)
        if (*q == '@')
            at = q;
    if (at)
        p = at + 1;
    const char *colon = NULL;
    if (*p == '[') { /* IPv6 literal */
        const char *rb = memchr(p, ']', (size_t)(end - p));
        if (!rb)
            return -1;
        colon = (rb + 1 < end && rb[1] == ':') ? rb + 1 : NULL;
    } else {
        colon = memchr(p, ':', (size_t)(end - p));
    }
    const char *hend = colon ? colon : end;
    size_t hl = (size_t)(hend - p);
    if (hl == 0 || hl >= hcap)
        return -1;
    for (size_t i = 0; i < hl; i++)
        host[i] = (char)tolower((unsigned char)p[i]);
    host[hl] = 0;
    if (colon && colon + 1 < end)
        *port = strtol(colon + 1, NULL, 10);
    else
        *port = strcmp(scheme, "https") == 0 ? 443 : strcmp(scheme, "http") == 0 ? 80 : -1;
    return 0;
}

int mm__hub_same_origin(const char *a, const char *b) {
    char sa[16], sb[16], ha[256], hb[256];
    long pa, pb;
    if (split_origin(a, sa, sizeof sa, ha, sizeof ha, &pa) || split_origin(b, sb, sizeof sb, hb, sizeof hb, &pb))
        return 0;
    return strcmp(sa, sb) == 0 && strcmp(ha, hb) == 0 && pa == pb;
}

/* ---- headers ------------------------------------------------------------ */

void mm__hub_headers_reset(mm__hub_headers *h) {
    memset(h, 0, sizeof *h);
    h->linked_size = -1;
    h->content_length = -1;
    h->range_total = -1;
    h->retry_after_s = -1;
}

void mm__hub_normalize_etag(const char *in, size_t len, char *out, size_t cap) {
    while (len && isspace((unsigned char)*in)) {
        in++;
        len--;
    }
    if (len >= 2 && (in[0] == 'W' || in[0] == 'w') && in[1] == '/') {
        in += 2;
        len -= 2;
    }
    while (len && isspace((unsigned char)in[len - 1]))
        len--;
    if (len >= 2 && in[0] == '"' && in[len - 1] == '"') {
        in++;
        len -= 2;
    }
    if (cap == 0)
        return;
    if (len >= cap)
        len = cap - 1;
    memcpy(out, in, len);
    out[len] = 0;
}

static void copy_value(char *dst, size_t cap, const char *v, size_t n) {
    if (n >= cap)
        n = cap - 1;
    memcpy(dst, v, n);
    dst[n] = 0;
}

static int64_t parse_i64(const char *v, size_t n) {
    char tmp[32];
    if (n == 0 || n >= sizeof tmp)
        return -1;
    memcpy(tmp, v, n);
    tmp[n] = 0;
    char *end;
    long long x = strtoll(tmp, &end, 10);
    if (end == tmp || *end || x < 0)
        return -1;
    return (int64_t)x;
}

void mm__hub_header_line(mm__hub_headers *h, const char *line, size_t len) {
    while (len && (line[len - 1] == '\r' || line[len - 1] == '\n'))
        len--;
    if (len >= 5 && strncmp(line, "HTTP/", 5) == 0) {
        mm__hub_headers_reset(h);
        const char *sp = memchr(line, ' ', len);
        if (sp)
            h->status = strtol(sp + 1, NULL, 10);
        return;
    }
    const char *colon = memchr(line, ':', len);
    if (!colon)
        return;
    size_t klen = (size_t)(colon - line);
    const char *v = colon + 1;
    size_t vlen = len - klen - 1;
    while (vlen && isspace((unsigned char)*v)) {
        v++;
        vlen--;
    }
    while (vlen && isspace((unsigned char)v[vlen - 1]))
        vlen--;
#define KEY(name) (klen == sizeof(name) - 1 && strncasecmp(line, name, klen) == 0)
    if (KEY("X-Repo-Commit"))
        copy_value(h->commit, sizeof h->commit, v, vlen);
    else if (KEY("ETag"))
        mm__hub_normalize_etag(v, vlen, h->etag, sizeof h->etag);
    else if (KEY("X-Linked-Etag"))
        mm__hub_normalize_etag(v, vlen, h->linked_etag, sizeof h->linked_etag);
    else if (KEY("X-Linked-Size"))
        h->linked_size = parse_i64(v, vlen);
    else if (KEY("Content-Length"))
        h->content_length = parse_i64(v, vlen);
    else if (KEY("Location")) {
        h->location_too_long = vlen >= sizeof h->location;
        copy_value(h->location, sizeof h->location, h->location_too_long ? "" : v, h->location_too_long ? 0 : vlen);
    }
    else if (KEY("X-Error-Code"))
        copy_value(h->error_code, sizeof h->error_code, v, vlen);
    else if (KEY("X-Error-Message"))
        copy_value(h->error_message, sizeof h->error_message, v, vlen);
    else if (KEY("Content-Encoding"))
        copy_value(h->content_encoding, sizeof h->content_encoding, v, vlen);
    else if (KEY("Retry-After"))
        h->retry_after_s = parse_i64(v, vlen);
    else if (KEY("Content-Range")) {
        const char *slash = memchr(v, '/', vlen);
        if (slash)
            h->range_total = parse_i64(slash + 1, vlen - (size_t)(slash + 1 - v));
    }
#undef KEY
}

/* ---- file selection ----------------------------------------------------- */

static int has_suffix(const char *s, const char *suf) {
    size_t n = strlen(s), m = strlen(suf);
    return n >= m && strcmp(s + n - m, suf) == 0;
}

/* "model-00001-of-00002.safetensors" */
static int is_shard_name(const char *s) {
    if (strncmp(s, "model-", 6) != 0 || !has_suffix(s, ".safetensors"))
        return 0;
    const char *p = s + 6;
    if (!isdigit((unsigned char)*p))
        return 0;
    while (isdigit((unsigned char)*p))
        p++;
    if (strncmp(p, "-of-", 4) != 0)
        return 0;
    p += 4;
    if (!isdigit((unsigned char)*p))
        return 0;
    while (isdigit((unsigned char)*p))
        p++;
    return strcmp(p, ".safetensors") == 0;
}

int mm__hub_classify(const char *path) {
    static const char *const skip_ext[] = {".onnx", ".onnx_data", ".h5", ".msgpack", ".gguf", ".ot",
                                           ".tflite", ".mlmodel", ".mlpackage", ".xml", ".pb",
                                           ".ckpt", ".pt", ".pth", ".npz", ".pkl", NULL};
    static const char *const skip_dir[] = {"onnx", "openvino", "tf", "flax", "coreml", "gguf",
                                           "tfjs", "ct2", "runs", NULL};
    static const char *const want_root[] = {
        "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
        "special_tokens_map.json", "added_tokens.json", "vocab.txt", "vocab.json", "merges.txt",
        "spiece.model", "sentencepiece.bpe.model", "tokenizer.model", "source.spm", "target.spm",
        "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json",
        "chat_template.jinja", NULL};
    if (!mm__hub_is_safe_repo_path(path))
        return MM__HUB_SKIP;
    for (int i = 0; skip_ext[i]; i++)
        if (has_suffix(path, skip_ext[i]))
            return MM__HUB_SKIP;
    const char *slash = strchr(path, '/');
    if (!slash) {
        for (int i = 0; want_root[i]; i++)
            if (strcmp(path, want_root[i]) == 0)
                return MM__HUB_WANT;
        if (strcmp(path, "model.safetensors") == 0)
            return MM__HUB_WEIGHTS;
        if (strcmp(path, "model.safetensors.index.json") == 0)
            return MM__HUB_INDEX;
        if (is_shard_name(path))
            return MM__HUB_SHARD;
        /* Any other root safetensors may be a shard under another name; the
         * index decides (see mm_hub.c resolve_shards). */
        if (has_suffix(path, ".safetensors"))
            return MM__HUB_SHARD;
        /* A model's own code (config.json auto_map names it): small, and only
         * ever run by the transformers fallback with trust_remote_code=True. */
        if (has_suffix(path, ".py"))
            return MM__HUB_WANT;
        if (strncmp(path, "pytorch_model", 13) == 0 &&
            (has_suffix(path, ".bin") || has_suffix(path, ".bin.index.json")))
            return MM__HUB_TORCH_BIN;
        return MM__HUB_SKIP;
    }
    /* Sub-folders: only sentence-transformers module folders ("1_Pooling",
     * "2_Normalize", "2_Dense"), and only their config and safetensors. */
    size_t dl = (size_t)(slash - path);
    for (int i = 0; skip_dir[i]; i++)
        if (strlen(skip_dir[i]) == dl && strncmp(path, skip_dir[i], dl) == 0)
            return MM__HUB_SKIP;
    if (!isdigit((unsigned char)path[0]))
        return MM__HUB_SKIP;
    size_t k = 0;
    while (k < dl && isdigit((unsigned char)path[k]))
        k++;
    if (k >= dl || path[k] != '_')
        return MM__HUB_SKIP;
    if (strstr(slash, "/onnx/") || strstr(slash, "/openvino/"))
        return MM__HUB_SKIP;
    if (has_suffix(path, ".json") || has_suffix(path, ".txt") || has_suffix(path, ".safetensors") ||
        has_suffix(path, ".model"))
        return MM__HUB_WANT;
    return MM__HUB_SKIP;
}

int mm__hub_link_target(const char *path, const char *etag, char *out, size_t cap) {
    size_t j = 0;
    int depth = 2; /* snapshots/<commit>/ */
    for (const char *s = path; *s; s++)
        if (*s == '/')
            depth++;
    for (int i = 0; i < depth; i++) {
        if (j + 3 >= cap)
            return MM_ENOBUFS;
        memcpy(out + j, "../", 3);
        j += 3;
    }
    int n = snprintf(out + j, cap - j, "blobs/%s", etag);
    return (n < 0 || (size_t)n >= cap - j) ? MM_ENOBUFS : 0;
}

long mm__hub_backoff_ms(const mm_hub_params *p, int attempt, long retry_after_s) {
    long cap = p->retry_max_ms > 0 ? p->retry_max_ms : 20000;
    if (retry_after_s >= 0) {
        long ms = retry_after_s > cap / 1000 ? cap : retry_after_s * 1000;
        return ms;
    }
    long ms = p->retry_base_ms > 0 ? p->retry_base_ms : 0;
    for (int i = 1; i < attempt && ms < cap; i++)
        ms *= 2;
    return ms > cap ? cap : ms;
}

/* ---- settings ----------------------------------------------------------- */

static const char *env_nonempty(const char *name) {
    const char *v = getenv(name);
    return (v && *v) ? v : NULL;
}

static int env_truthy(const char *name) {
    const char *v = getenv(name);
    if (!v)
        return 0;
    return strcasecmp(v, "1") == 0 || strcasecmp(v, "true") == 0 || strcasecmp(v, "yes") == 0 ||
           strcasecmp(v, "on") == 0;
}

/* Copies s into out with surrounding whitespace (and, when unquote, one
 * pair of matching quotes) removed.  Returns the length written. */
static size_t copy_stripped(const char *s, size_t n, int unquote, char *out, size_t cap) {
    while (n && isspace((unsigned char)*s)) {
        s++;
        n--;
    }
    while (n && isspace((unsigned char)s[n - 1]))
        n--;
    if (unquote && n >= 2 && (s[0] == '"' || s[0] == '\'') && s[n - 1] == s[0]) {
        s++;
        n -= 2;
    }
    if (n >= cap)
        n = 0; /* a value that does not fit is no token at all */
    memcpy(out, s, n);
    out[n] = 0;
    return n;
}

static int home_dir(char *buf, size_t cap) {
    const char *hf = env_nonempty("HF_HOME");
    int n;
    if (hf) {
        n = snprintf(buf, cap, "%s", hf);
    } else {
        const char *xdg = env_nonempty("XDG_CACHE_HOME");
        const char *home = env_nonempty("HOME");
        if (xdg)
            n = snprintf(buf, cap, "%s/huggingface", xdg);
        else
            n = snprintf(buf, cap, "%s/.cache/huggingface", home ? home : ".");
    }
    return (n < 0 || (size_t)n >= cap) ? MM_ENOBUFS : 0;
}

/* Reads up to cap-1 bytes of a small file; -1 when it cannot be read. */
static long read_small_file(const char *path, char *buf, size_t cap) {
    FILE *f = fopen(path, "rb");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, cap - 1, f);
    fclose(f);
    buf[n] = 0;
    return (long)n;
}

void mm__hub_resolve_token(char *out, size_t cap) {
    out[0] = 0;
    const char *v = env_nonempty("HF_TOKEN");
    if (!v)
        v = env_nonempty("HUGGING_FACE_HUB_TOKEN");
    if (v) {
        copy_stripped(v, strlen(v), 0, out, cap);
        if (*out)
            return;
    }
    char path[MM_HUB_PATH_MAX];
    char buf[4096];
    const char *tp = env_nonempty("HF_TOKEN_PATH");
    int have_path = 0;
    if (tp) {
        have_path = snprintf(path, sizeof path, "%s", tp) < (int)sizeof path;
    } else if (home_dir(path, sizeof path - 8) == 0) {
        strcat(path, "/token");
        have_path = 1;
    }
    long n;
    if (have_path && (n = read_small_file(path, buf, sizeof buf)) > 0) {
        copy_stripped(buf, (size_t)n, 0, out, cap);
        if (*out)
            return;
    }
    /* ./.env: lines "HF_TOKEN=...", optionally "export HF_TOKEN=...". */
    n = read_small_file(".env", buf, sizeof buf);
    if (n <= 0)
        return;
    char *save = NULL;
    for (char *line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        while (isspace((unsigned char)*line))
            line++;
        if (strncmp(line, "export ", 7) == 0)
            line += 7;
        if (strncmp(line, "HF_TOKEN", 8) != 0)
            continue;
        char *p = line + 8;
        while (*p == ' ' || *p == '\t')
            p++;
        if (*p != '=')
            continue;
        p++;
        char *hash = strstr(p, " #");
        size_t len = hash ? (size_t)(hash - p) : strlen(p);
        copy_stripped(p, len, 1, out, cap);
        if (*out)
            return;
    }
}

int mm_hub_hf_cache_dir(char *buf, size_t cap) {
    const char *v = env_nonempty("HF_HUB_CACHE");
    if (!v)
        v = env_nonempty("HUGGINGFACE_HUB_CACHE");
    if (v) {
        int n = snprintf(buf, cap, "%s", v);
        return (n < 0 || (size_t)n >= cap) ? MM_ENOBUFS : 0;
    }
    char home[MM_HUB_PATH_MAX];
    if (home_dir(home, sizeof home))
        return MM_ENOBUFS;
    int n = snprintf(buf, cap, "%s/hub", home);
    return (n < 0 || (size_t)n >= cap) ? MM_ENOBUFS : 0;
}

static long env_seconds_ms(const char *name, long dflt) {
    const char *v = env_nonempty(name);
    if (!v)
        return dflt;
    char *end;
    double s = strtod(v, &end);
    if (end == v || s <= 0)
        return dflt;
    return (long)(s * 1000.0);
}

void mm_hub_default_params(mm_hub_params *p) {
    memset(p, 0, sizeof *p);
    const char *ep = env_nonempty("HF_ENDPOINT");
    snprintf(p->endpoint, sizeof p->endpoint, "%s", ep ? ep : "https://huggingface.co");
    size_t n = strlen(p->endpoint);
    while (n > 0 && p->endpoint[n - 1] == '/')
        p->endpoint[--n] = 0;
    const char *cd = env_nonempty("MM_HUB_CACHE");
    if (cd && strcmp(cd, "hf") == 0) {
        if (mm_hub_hf_cache_dir(p->cache_dir, sizeof p->cache_dir))
            snprintf(p->cache_dir, sizeof p->cache_dir, "data/models");
    } else {
        snprintf(p->cache_dir, sizeof p->cache_dir, "%s", cd ? cd : "data/models");
    }
    mm__hub_resolve_token(p->token, sizeof p->token);
    p->offline = env_truthy("HF_HUB_OFFLINE") || env_truthy("TRANSFORMERS_OFFLINE");
    p->refresh = 0;
    p->connect_timeout_ms = env_seconds_ms("HF_HUB_ETAG_TIMEOUT", 10000);
    p->read_timeout_ms = env_seconds_ms("HF_HUB_DOWNLOAD_TIMEOUT", 10000);
    p->max_retries = 5;
    p->retry_base_ms = 500;
    p->retry_max_ms = 20000;
    p->verify_tls = 1;
    snprintf(p->user_agent, sizeof p->user_agent, "pymodelmgr/0.1; hub-c");
    const char *ca = env_nonempty("CURL_CA_BUNDLE");
    if (!ca)
        ca = env_nonempty("REQUESTS_CA_BUNDLE");
    if (!ca)
        ca = env_nonempty("SSL_CERT_FILE");
    if (ca && strlen(ca) < sizeof p->ca_bundle)
        memcpy(p->ca_bundle, ca, strlen(ca) + 1);
}

/* ---- snapshot completeness --------------------------------------------- */

static int exists_file(const char *dir, const char *rel) {
    char path[MM_HUB_PATH_MAX];
    struct stat st;
    if (snprintf(path, sizeof path, "%s/%s", dir, rel) >= (int)sizeof path)
        return 0;
    return stat(path, &st) == 0; /* follows the symlink: a dangling one is missing */
}

/* 1 when every shard named in the index's weight_map exists; 0 otherwise. */
static int shards_present(const char *dir) {
    char path[MM_HUB_PATH_MAX];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    if (!root)
        return 0;
    json_t *map = json_object_get(root, "weight_map");
    int ok = json_is_object(map) && json_object_size(map) > 0;
    const char *key;
    json_t *val;
    json_object_foreach(map, key, val) {
        const char *shard = json_string_value(val);
        if (!ok || !shard || !mm__hub_is_safe_repo_path(shard) || !exists_file(dir, shard)) {
            ok = 0;
            break;
        }
    }
    json_decref(root);
    return ok;
}

/* 1 when every module folder named in modules.json exists (or there is no
 * modules.json); 0 otherwise. */
static int modules_present(const char *dir) {
    char path[MM_HUB_PATH_MAX];
    snprintf(path, sizeof path, "%s/modules.json", dir);
    struct stat st;
    if (stat(path, &st) != 0)
        return 1;
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    if (!json_is_array(root)) {
        json_decref(root);
        return 0;
    }
    int ok = 1;
    size_t i;
    json_t *m;
    json_array_foreach(root, i, m) {
        /* Normalize modules have no files, so git keeps no folder for them. */
        const char *type = json_string_value(json_object_get(m, "type"));
        const char *p = json_string_value(json_object_get(m, "path"));
        if (type && strlen(type) >= 9 && strcmp(type + strlen(type) - 9, "Normalize") == 0)
            continue;
        if (p && *p && mm__hub_is_safe_repo_path(p) && !exists_file(dir, p))
            ok = 0;
    }
    json_decref(root);
    return ok;
}

int mm__hub_snapshot_complete(const char *dir, char *err, size_t errlen) {
    int has_weights = exists_file(dir, "model.safetensors") ||
                      (exists_file(dir, "model.safetensors.index.json") && shards_present(dir));
    if (!has_weights) {
        if (exists_file(dir, "pytorch_model.bin") || exists_file(dir, "pytorch_model.bin.index.json"))
            return mm__hub_fail(err, errlen, MM_EFORMAT,
                                "model has only PyTorch .bin weights (pytorch_model.bin); only "
                                "safetensors weights are supported for now");
        return 1;
    }
    if (!exists_file(dir, "config.json") && !exists_file(dir, "modules.json"))
        return 1;
    return modules_present(dir) ? 0 : 1;
}
