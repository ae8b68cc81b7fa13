/* gateway/log.h: leveled one-line logs, key=value text or JSON.
 * Callers write the message as key=value pairs: log_info("conn=%llu peer=%s close reason=\"%s\"", ...).
 * In JSON format each key=value pair becomes a member, bare words join "msg".
 * A string that came from a client is always passed through log_q()/log_qn() and printed
 * between quotes (client=\"%s\"), so it can neither end its value nor the line.
 * Any thread may log. Lines go to an in-memory queue of bounded size that a log thread
 * writes to stderr, so a slow stderr never stalls the caller; when the queue is full,
 * lines are dropped and counted ("log: dropped N lines" follows once there is room).
 * The queue is written out at exit (atexit) and by log_flush(). */
#ifndef GALE_LOG_H
#define GALE_LOG_H

#include <stddef.h>
#include <stdint.h>

enum log_level { LOG_DEBUG = 0, LOG_INFO = 1, LOG_WARN = 2, LOG_ERROR = 3 };
enum log_format { LOG_TEXT = 0, LOG_JSON = 1 };

/* Input bytes of one client string that log_q keeps; the rest is cut with a marker. */
#define LOG_Q_MAX_BYTES 256
/* Escaped strings one thread may hold at once (log_q results in one log statement). */
#define LOG_Q_SLOTS 8

void log_setup(enum log_level level, enum log_format format);
/* Parses "debug" | "info" | "warn" | "error"; returns -1 if unknown. */
int log_parse_level(const char *s);
void log_write(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Logs one line made of a JSON object ("{...}", e.g. as cJSON prints it): in JSON
 * format its members become members of the line itself, after ts and level (bytes that
 * are not valid UTF-8 become U+FFFD); in text format the object is the message. For
 * records built as JSON (the HTTP access log), which must not end up as one string. */
void log_write_json(enum log_level level, const char *json);
/* Writes every queued line to stderr before it returns (blocking). For exit and abort
 * paths; safe to call from any thread, also when nothing is queued. */
void log_flush(void);

/* Escapes n bytes of s for a log value between double quotes: '"' and '\' get a
 * backslash, \n \r \t are spelled so, other control bytes, DEL and bytes that are not
 * valid UTF-8 become \xHH; past LOG_Q_MAX_BYTES input bytes the value is cut and ends
 * in "...(+N bytes)". Writes at most cap - 1 bytes and a NUL into out (cap > 0; an
 * escape never is split) and returns the length written. */
size_t log_escape(char *out, size_t cap, const void *s, size_t n);
/* log_escape into a thread-local buffer. Returns a borrowed string, valid until the
 * LOG_Q_SLOTS-th next log_q/log_qn call on the same thread: use it inside one log
 * statement. s may be NULL (""). */
const char *log_qn(const void *s, size_t n);
const char *log_q(const char *s);

/* ---- refusals summarised per peer ----
 * A refusal (failed login, ACL denial, connection limit) is keyed by the peer's address
 * (its port stripped) and the reason. The first LOG_REFUSAL_BURST of a window are
 * logged by the caller as usual; the rest are counted, and when the window
 * (window_ms from its first refusal) ends with refusals counted, one summary line
 * gives their number and a new window starts; a window that ends with none ends the
 * episode; while an episode goes on, only summaries are logged. A slot holds one
 * (peer, reason); when every slot is in use, refusals of the others share one slot whose
 * peer is "other". So a flood costs at most (max_slots + 1) * LOG_REFUSAL_BURST lines
 * for its first window and max_slots + 1 lines a window after. */
#define LOG_REFUSAL_BURST 3

struct log_refusals;

/* Called for a summary: refusals counted and not logged since the window began. */
typedef void (*log_summary_fn)(void *ctx, const char *peer, const char *reason,
                               uint64_t refusals, uint64_t window_ms);

struct log_refusals *log_refusals_new(size_t max_slots, uint64_t window_ms, log_summary_fn fn,
                                      void *ctx);
void log_refusals_free(struct log_refusals *r);
/* Counts one refusal at now_ms (monotonic). peer: "1.2.3.4:5678", "[::1]:5678" or a
 * bare address; reason: borrowed, copied if kept. Returns 1 when the caller is to log
 * this refusal, 0 when it was counted for a summary. */
int log_refusals_note(struct log_refusals *r, const char *peer, const char *reason,
                      uint64_t now_ms);
/* Emits the summaries of windows that ended by now_ms and drops ended episodes. */
void log_refusals_sweep(struct log_refusals *r, uint64_t now_ms);
/* Slots in use, "other" included. */
size_t log_refusals_count(const struct log_refusals *r);

/* log_refusals_note on the process-wide table (256 slots, 10 s windows; the test seam
 * GALE_TEST_REFUSAL_WINDOW_MS sets another window), whose summaries the log thread
 * writes as warn lines "peer=A refusals=N in last Ss reason=\"...\"". Thread-safe. */
int log_refusal(const char *peer, const char *reason);

#define log_debug(...) log_write(LOG_DEBUG, __VA_ARGS__)
#define log_info(...) log_write(LOG_INFO, __VA_ARGS__)
#define log_warn(...) log_write(LOG_WARN, __VA_ARGS__)
#define log_error(...) log_write(LOG_ERROR, __VA_ARGS__)

#endif
