/* gateway/log.c: one line per event, written with a single write(2) so lines
 * from the loop and the writer thread never interleave. Text format:
 *   2026-11-24T22:52:48.123Z level=info conn=3 peer=127.0.0.1:5000 msg="..."
 * JSON format turns each key=value pair of the message into a member. */
#include "gateway/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "base/buf.h"

static enum log_level g_level = LOG_INFO;
static enum log_format g_format = LOG_TEXT;
static const char *const level_names[] = {"debug", "info", "warn", "error"};

void log_setup(enum log_level level, enum log_format format)
{
    g_level = level;
    g_format = format;
}

int log_parse_level(const char *s)
{
    for (int i = 0; i < 4; i++)
        if (strcmp(s, level_names[i]) == 0)
            return i;
    if (strcmp(s, "warning") == 0)
        return LOG_WARN;
    return -1;
}

static void format_time(char *out, size_t n)
{
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    snprintf(out, n, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000);
}

static int is_integer(const char *v, size_t n)
{
    size_t i = (n > 0 && v[0] == '-') ? 1 : 0;
    if (i == n || n > 18)
        return 0;
    if (v[i] == '0' && n > i + 1)
        return 0;
    for (; i < n; i++)
        if (v[i] < '0' || v[i] > '9')
            return 0;
    return 1;
}

/* Splits "a=1 b=\"x y\" word" into JSON members; bare words join "msg". */
static void append_json_pairs(struct buf *out, const char *s)
{
    struct buf words;
    buf_init(&words);
    while (*s) {
        const char *k, *eq, *v;
        size_t klen, vlen;
        int quoted = 0;
        while (*s == ' ')
            s++;
        if (!*s)
            break;
        k = s;
        while (*s && *s != ' ' && *s != '=')
            s++;
        if (*s != '=') { /* bare word */
            if (words.len)
                buf_append(&words, " ", 1);
            buf_append(&words, k, (size_t)(s - k));
            continue;
        }
        eq = s;
        klen = (size_t)(eq - k);
        s++;
        if (*s == '"') {
            quoted = 1;
            v = ++s;
            while (*s && !(*s == '"' && s[-1] != '\\'))
                s++;
            vlen = (size_t)(s - v);
            if (*s)
                s++;
        } else {
            v = s;
            while (*s && *s != ' ')
                s++;
            vlen = (size_t)(s - v);
        }
        buf_append(out, ",", 1);
        buf_append_json_str(out, k, klen);
        buf_append(out, ":", 1);
        if (!quoted && is_integer(v, vlen))
            buf_append(out, v, vlen); /* numbers stay numbers */
        else
            buf_append_json_str(out, v, vlen);
    }
    if (words.len) {
        buf_append_str(out, ",\"msg\":");
        buf_append_json_str(out, (const char *)words.data, words.len);
    }
    buf_fini(&words);
}

void log_write(enum log_level level, const char *fmt, ...)
{
    char msg[4096], ts[64];
    struct buf line;
    va_list ap;
    ssize_t w;

    if (level < g_level)
        return;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    format_time(ts, sizeof ts);
    buf_init(&line);
    if (g_format == LOG_JSON) {
        buf_printf(&line, "{\"ts\":\"%s\",\"level\":\"%s\"", ts, level_names[level]);
        append_json_pairs(&line, msg);
        buf_append_str(&line, "}\n");
    } else {
        buf_printf(&line, "%s level=%s %s\n", ts, level_names[level], msg);
    }
    w = write(STDERR_FILENO, line.data, line.len);
    (void)w;
    buf_fini(&line);
}
