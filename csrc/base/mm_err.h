/* mm_err.h: the one table of error codes used by every C layer.
 *
 * Fallible functions return 0 or a negative MM_E* code.  The same table
 * generates mm_err_name() (the stable code string that Python's
 * Result.error carries, e.g. "QUEUE_FULL") and mm_strerror() (a short
 * human phrase).  Details specific to one failure go into the object that
 * failed (a task's or model's errmsg), never into a global.
 *
 * To add a code, append a row; never renumber an existing one.
 */
#ifndef MM_ERR_H
#define MM_ERR_H

/*  X(enum suffix, value, stable name, phrase) */
#define MM_ERROR_TABLE(X)                                                        \
    X(OK,             0,  "OK",                      "success")                  \
    X(EINVAL,        -1,  "INVALID_ARGUMENT",        "invalid argument")         \
    X(ENOMEM,        -2,  "OUT_OF_MEMORY",           "out of memory")            \
    X(ENOTFOUND,     -3,  "MODEL_NOT_FOUND",         "model not found")          \
    X(ELOAD,         -4,  "MODEL_LOAD_FAILED",       "model failed to load")     \
    X(EQUEUEFULL,    -5,  "QUEUE_FULL",              "queue is full")            \
    X(ETIMEDOUT,     -6,  "QUEUE_TIMEOUT",           "timed out in the queue")   \
    X(ETASK,         -7,  "TASK_FAILED",             "task failed")              \
    X(ESHUTDOWN,     -8,  "SHUTTING_DOWN",           "manager is shutting down") \
    X(ECANCELLED,    -9,  "CANCELLED",               "task was cancelled")       \
    X(EDROPPED,      -10, "DROPPED",                 "task was dropped")         \
    X(ENOBUFS,       -11, "BUFFER_TOO_SMALL",        "buffer too small")         \
    X(EIO,           -12, "IO_ERROR",                "input/output error")       \
    X(EFORMAT,       -13, "UNSUPPORTED_FORMAT",      "unsupported file format")  \
    X(EARCH,         -14, "UNSUPPORTED_ARCHITECTURE","unsupported architecture") \
    X(EAUTH,         -15, "AUTH_REQUIRED",           "authentication required")  \
    X(EBADTOKEN,     -16, "INVALID_TOKEN",           "access token rejected")    \
    X(ENETWORK,      -17, "NETWORK_ERROR",           "network error")            \
    X(EDISKFULL,     -18, "DISK_FULL",               "no space left on disk")    \
    X(ECORRUPT,      -19, "CORRUPT_DOWNLOAD",        "download failed its checksum") \
    X(EREVISION,     -20, "REVISION_NOT_FOUND",      "revision not found")       \
    X(EFILE,         -21, "FILE_NOT_FOUND",          "file not found in repo")   \
    X(EPARSE,        -22, "PARSE_ERROR",             "could not parse input")    \
    X(EUNSUPPORTED,  -23, "UNSUPPORTED",             "not supported")            \
    X(EDEVICE,       -24, "DEVICE_ERROR",            "device error")             \
    X(EINTERNAL,     -25, "INTERNAL_ERROR",          "internal error")           \
    X(EBUSY,         -26, "BUSY",                    "resource busy")            \
    X(EDISABLED,     -27, "MODEL_MANAGER_DISABLED",  "model manager is disabled") \
    X(ENOSPACE,      -28, "INSUFFICIENT_MEMORY",     "not enough device memory for the model")

enum mm_err {
#define MM__ERR_ENUM(sym, val, name, phrase) MM_##sym = (val),
    MM_ERROR_TABLE(MM__ERR_ENUM)
#undef MM__ERR_ENUM
};

/* Stable name for a code ("QUEUE_FULL"); "UNKNOWN_ERROR" for unknown codes.
 * Returns a static string; any thread. */
const char *mm_err_name(int code);

/* Short phrase for a code; static string; any thread. */
const char *mm_strerror(int code);

#endif
