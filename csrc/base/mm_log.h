/* mm_log.h: logging for the C layers, which never print.
 *
 * Every message goes to one process-wide sink that the embedder installs
 * (the Python extension forwards to the `pymodelmgr` logger).  With no sink
 * installed, messages are discarded.  Levels match Python's logging numbers
 * so the extension passes them through unchanged.  Never pass a token or a
 * secret to mm_log: log lines are for people and may be shipped anywhere.
 */
#ifndef MM_LOG_H
#define MM_LOG_H

enum mm_log_level {
    MM_LOG_DEBUG = 10,
    MM_LOG_INFO = 20,
    MM_LOG_WARNING = 30,
    MM_LOG_ERROR = 40,
};

/* Receives one formatted line (no trailing newline).  Called on whatever
 * thread logged, possibly with core locks held: a sink must not call back
 * into the engine and must not block for long. */
typedef void (*mm_log_cb)(int level, const char *msg, void *ud);

/* Installs the sink (NULL removes it).  Call before starting threads that log. */
void mm_log_set_sink(mm_log_cb cb, void *ud);

/* Formats and sends one message to the sink; any thread. */
void mm_log(int level, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

#endif
