/* mm_hub_internal.h: pieces of the hub client shared between its files and
 * exposed to the C tests (tests/c/hub).  Everything here is pure (no I/O,
 * no network) unless it says otherwise; none of it is public API.
 */
#ifndef MM_HUB_INTERNAL_H
#define MM_HUB_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "mm_hub.h"

/* Longest redirect Location we accept: signed CDN URLs run past 1 kB. */
#define MM__HUB_LOCATION_MAX 8192

/* Response headers the client cares about, collected by mm__hub_header_line()
 * from libcurl's header callback.  A new status line resets every field, so
 * after a followed redirect the struct describes the last response. */
typedef struct mm__hub_headers {
    long status;                  /* from the status line; 0 before one */
    char commit[64];              /* X-Repo-Commit */
    char etag[160];               /* ETag, normalized (no W/, no quotes) */
    char linked_etag[160];        /* X-Linked-Etag, normalized */
    int64_t linked_size;          /* X-Linked-Size; -1 absent */
    int64_t content_length;       /* Content-Length; -1 absent */
    int64_t range_total;          /* total from Content-Range "bytes a-b/T"; -1 absent */
    char location[MM__HUB_LOCATION_MAX]; /* Location */
    int location_too_long;        /* the Location did not fit: not usable */
    char error_code[64];          /* X-Error-Code */
    char error_message[256];      /* X-Error-Message */
    char content_encoding[32];    /* Content-Encoding */
    long retry_after_s;           /* Retry-After in seconds; -1 absent or a date */
} mm__hub_headers;

void mm__hub_headers_reset(mm__hub_headers *h);

/* Feeds one raw header line (as libcurl delivers it, CRLF included or not). */
void mm__hub_header_line(mm__hub_headers *h, const char *line, size_t len);

/* Strips a leading W/ and surrounding quotes; writes at most cap-1 bytes. */
void mm__hub_normalize_etag(const char *in, size_t len, char *out, size_t cap);

/* Percent-encodes s into out.  Unreserved characters (A-Z a-z 0-9 - . _ ~)
 * pass; so does '/' when keep_slash.  0 or MM_ENOBUFS. */
int mm__hub_quote(const char *s, int keep_slash, char *out, size_t cap);

/* 1 when s is exactly 40 lowercase-or-uppercase hex digits. */
int mm__hub_is_commit(const char *s);

/* 1 when s is a safe blob name (etag): 1..128 of [A-Za-z0-9._-], not
 * starting with '.', so it can be used as a file name under blobs/. */
int mm__hub_is_safe_etag(const char *s);

/* 1 when a repo file path from the server is safe to create under a
 * snapshot: relative, no empty, "." or ".." component, no backslash, no
 * control characters, at most 1024 bytes. */
int mm__hub_is_safe_repo_path(const char *path);

/* What a repo file is to us. */
enum mm__hub_kind {
    MM__HUB_SKIP = 0,     /* not needed (README, ONNX/TF/Flax/OpenVINO/GGUF copies, ...) */
    MM__HUB_WANT = 1,     /* config, tokenizer, sentence-transformers files */
    MM__HUB_WEIGHTS = 2,  /* model.safetensors */
    MM__HUB_INDEX = 3,    /* model.safetensors.index.json */
    MM__HUB_SHARD = 4,    /* model-00001-of-00002.safetensors, or another root .safetensors
                             that only the index can confirm */
    MM__HUB_TORCH_BIN = 5 /* pytorch_model*.bin (unsupported for now) */
};

/* Classifies a repo path.  Pure. */
int mm__hub_classify(const char *path);

/* Writes the relative symlink target from snapshots/<commit>/<path> to
 * blobs/<etag> ("../../blobs/<etag>", one more "../" per directory level
 * in path).  0 or MM_ENOBUFS. */
int mm__hub_link_target(const char *path, const char *etag, char *out, size_t cap);

/* 1 when the two URLs have the same scheme, host and port. */
int mm__hub_same_origin(const char *a, const char *b);

/* Back-off before retry number attempt (1-based): base * 2^(attempt-1),
 * capped at max; a Retry-After (seconds, >= 0) wins, also capped. */
long mm__hub_backoff_ms(const mm_hub_params *p, int attempt, long retry_after_s);

/* Reads the token from the environment and files as mm_hub_default_params
 * documents; writes "" when there is none.  Does file I/O. */
void mm__hub_resolve_token(char *out, size_t cap);

/* Checks a snapshot directory for a usable model (I/O: stat and reading
 * modules.json / the safetensors index).  0 = complete, 1 = incomplete,
 * MM_EFORMAT = only PyTorch .bin weights (message in err). */
int mm__hub_snapshot_complete(const char *dir, char *err, size_t errlen);

/* snprintf into err when err is not NULL; returns code. */
int mm__hub_fail(char *err, size_t errlen, int code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;

#endif
