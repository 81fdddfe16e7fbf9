/* mm_hub.h: the Hugging Face Hub client and the on-disk model cache.
 *
 * One blocking call, mm_hub_snapshot(), turns a model name ("org/name" at a
 * revision, or a local directory used in place) into a local directory that
 * holds the files a model needs: config, tokenizer, sentence-transformers
 * files and module folders, generation config, and safetensors weights.  The
 * cache has the huggingface_hub layout (models--org--name/{blobs,refs,
 * snapshots}, relative symlinks), so the two libraries share one cache.
 *
 * Threads: any thread may call mm_hub_snapshot(); it is meant for engine
 * worker threads (no Python, no GIL).  Each thread has its own curl handle
 * (made on first use, freed at thread exit or by mm_hub_thread_cleanup()).
 * Two threads or two processes asking for the same blob download it once
 * (a lock file per blob under <cache>/.locks).  The C code never prints;
 * it logs through mm_log() and never logs the token.
 */
#ifndef MM_HUB_H
#define MM_HUB_H

#include <stddef.h>
#include <stdint.h>

#define MM_HUB_PATH_MAX 4096
#define MM_HUB_URL_MAX 1024
#define MM_HUB_TOKEN_MAX 1024

/* Progress of one mm_hub_snapshot() call.  Byte counts include files that
 * were already cached (they count as done at once), so model_done reaches
 * model_total when the call succeeds.  Totals are 0 when not yet known
 * (while the repo is listed).  Counts only go back when a file restarts
 * from zero (the server ignored a Range, or a resumed partial file failed
 * its checksum). */
typedef struct mm_hub_progress {
    const char *file;     /* repo path of the file in flight ("" between files) */
    uint64_t file_done;   /* bytes of that file on disk so far */
    uint64_t file_total;  /* its size */
    uint64_t model_done;  /* bytes of all selected files on disk so far */
    uint64_t model_total; /* size of all selected files */
    int file_index;       /* 0-based index of the file in flight */
    int file_count;       /* number of selected files */
} mm_hub_progress;

/* Called on the thread that runs mm_hub_snapshot(), often (every received
 * chunk, and once per file start and end).  The pointer is valid for the
 * call only.  Return 0 to go on, non-zero to cancel the download: the call
 * then returns MM_ECANCELLED and keeps the partial file for a later resume.
 * Must not call mm_hub_snapshot() itself. */
typedef int (*mm_hub_progress_cb)(const mm_hub_progress *p, void *ud);

/* Settings for one call.  Fill with mm_hub_default_params(), then change
 * fields; new fields are added at the end with defaults so callers that use
 * mm_hub_default_params() keep working.  Strings are copied in (fixed
 * arrays), so the struct owns nothing and may be copied freely. */
typedef struct mm_hub_params {
    char endpoint[MM_HUB_URL_MAX];    /* "https://huggingface.co" (HF_ENDPOINT); no trailing '/' */
    char cache_dir[MM_HUB_PATH_MAX];  /* cache root: MM_HUB_CACHE, else "data/models" */
    char token[MM_HUB_TOKEN_MAX];     /* "" for none; never logged */
    int offline;                      /* HF_HUB_OFFLINE=1: no request at all */
    int refresh;  /* 0: a complete cached snapshot of the revision is used with no
                     request; 1: ask the hub what the branch points at now */
    long connect_timeout_ms;          /* 10000 */
    long read_timeout_ms;             /* no byte for this long = a timeout (10000;
                                         HF_HUB_DOWNLOAD_TIMEOUT in seconds) */
    int max_retries;                  /* retries per request for transient failures (5) */
    long retry_base_ms;               /* first back-off (500), doubled per retry */
    long retry_max_ms;                /* back-off and Retry-After cap (20000) */
    int verify_tls;                   /* 1 */
    char user_agent[128];             /* "pymodelmgr/0.1; hub-c" */
    mm_hub_progress_cb progress;      /* NULL: none */
    void *progress_ud;
    char ca_bundle[MM_HUB_PATH_MAX];  /* CA certificates file ("" = libcurl's default):
                                         CURL_CA_BUNDLE, REQUESTS_CA_BUNDLE or SSL_CERT_FILE */
} mm_hub_params;

/* What a successful mm_hub_snapshot() produced. */
typedef struct mm_hub_result {
    char path[MM_HUB_PATH_MAX]; /* absolute snapshot directory (or the local directory) */
    char commit[41];            /* resolved commit ("" for a local directory) */
    int local_dir;              /* 1: the model name was a local directory, used in place */
    int from_cache;             /* 1: served from the cache without any request */
    int stale;                  /* 1: the hub could not be reached; the cached copy was served */
    int n_files;                /* files in the snapshot that the model needs */
    uint64_t bytes_total;       /* their size */
    uint64_t bytes_downloaded;  /* bytes received over the network by this call */
    int n_requests;             /* HTTP requests made by this call (0 on a cache hit) */
} mm_hub_result;

/* Fills p from the environment: HF_ENDPOINT; MM_HUB_CACHE (the value "hf"
 * means the standard huggingface cache, HF_HUB_CACHE or $HF_HOME/hub);
 * the token from HF_TOKEN, then HUGGING_FACE_HUB_TOKEN, then the file at
 * HF_TOKEN_PATH (default $HF_HOME/token, HF_HOME defaulting to
 * ~/.cache/huggingface), then HF_TOKEN=... in ./.env; HF_HUB_OFFLINE /
 * TRANSFORMERS_OFFLINE; HF_HUB_ETAG_TIMEOUT / HF_HUB_DOWNLOAD_TIMEOUT.
 * Any thread (reads the environment and a few small files). */
void mm_hub_default_params(mm_hub_params *p);

/* Writes the standard huggingface_hub cache directory (HF_HUB_CACHE,
 * HUGGINGFACE_HUB_CACHE, $HF_HOME/hub, $XDG_CACHE_HOME/huggingface/hub,
 * ~/.cache/huggingface/hub) into buf.  0, or MM_ENOBUFS. */
int mm_hub_hf_cache_dir(char *buf, size_t cap);

/* Resolves model at revision (NULL = "main"; a 40-hex commit pins exactly)
 * to a local snapshot directory, downloading what is missing.
 *
 * Blocks for as long as the download takes; call it from a worker thread.
 * model is "org/name" (or a legacy one-part name), or a path to an existing
 * directory, which is used in place.  On success returns 0 and fills *out.
 * On failure returns a negative MM_E* code and writes a message a person can
 * act on into err (errlen bytes; may be NULL): MM_EINVAL (bad name),
 * MM_ENOTFOUND (no such repo, or not cached while offline), MM_EREVISION,
 * MM_EFILE, MM_EAUTH (gated/private: set HF_TOKEN), MM_EBADTOKEN,
 * MM_EFORMAT (no safetensors weights), MM_ENETWORK, MM_EDISKFULL,
 * MM_ECORRUPT (checksum mismatch), MM_EIO, MM_ECANCELLED, MM_ENOMEM. */
int mm_hub_snapshot(const mm_hub_params *p, const char *model, const char *revision,
                    mm_hub_result *out, char *err, size_t errlen);

/* Checks a repo id: "name" or "org/name", each part of [A-Za-z0-9._-],
 * 1..96 characters, not starting or ending with '.' or '-', no "..", no
 * "--".  0 or MM_EINVAL (with a message in err).  Pure; any thread. */
int mm_hub_validate_repo_id(const char *repo_id, char *err, size_t errlen);

/* Checks a revision (branch, tag, "refs/pr/N" or commit): printable ASCII,
 * no "..", no '\\', no leading '/', at most 255 characters.  Pure. */
int mm_hub_validate_revision(const char *rev, char *err, size_t errlen);

/* Writes <cache_dir>/models--org--name into buf.  0 or MM_ENOBUFS. */
int mm_hub_repo_dir(const char *cache_dir, const char *repo_id, char *buf, size_t cap);

/* Frees the calling thread's curl handle now (it is otherwise freed when
 * the thread exits).  Optional. */
void mm_hub_thread_cleanup(void);

/* Frees the calling thread's handle and the process-wide libcurl state.
 * Optional, at process exit, after every other thread that downloaded has
 * exited. */
void mm_hub_global_cleanup(void);

#endif
