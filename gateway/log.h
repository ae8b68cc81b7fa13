/* gateway/log.h: leveled one-line logs, key=value text or JSON.
 * Callers write the message as key=value pairs: log_info("conn=%llu peer=%s close reason=\"%s\"", ...).
 * In JSON format each key=value pair becomes a member, bare words join "msg".
 * Loop thread and writer thread may both log; a line is written with one write(). */
#ifndef GALE_LOG_H
#define GALE_LOG_H

enum log_level { LOG_DEBUG = 0, LOG_INFO = 1, LOG_WARN = 2, LOG_ERROR = 3 };
enum log_format { LOG_TEXT = 0, LOG_JSON = 1 };

void log_setup(enum log_level level, enum log_format format);
/* Parses "debug" | "info" | "warn" | "error"; returns -1 if unknown. */
int log_parse_level(const char *s);
void log_write(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_debug(...) log_write(LOG_DEBUG, __VA_ARGS__)
#define log_info(...) log_write(LOG_INFO, __VA_ARGS__)
#define log_warn(...) log_write(LOG_WARN, __VA_ARGS__)
#define log_error(...) log_write(LOG_ERROR, __VA_ARGS__)

#endif
