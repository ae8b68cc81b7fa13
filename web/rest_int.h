/* web/rest_int.h: shared only inside web/rest*.c: the REST state and the helpers the
 * route files (rest.c's table, rest_telemetry.c, rest_devices.c) have in common.
 * Loop thread only. */
#ifndef GALE_REST_INT_H
#define GALE_REST_INT_H

#include <stdbool.h>
#include <stddef.h>

#include "base/buf.h"
#include "web/rest.h"

struct api_key;
struct device;
struct gw;
struct http_conn;
struct http_req;
struct store_tz_span;
struct ticket;

#define REST_JSON "application/json"
#define REST_TZ_CACHE 8

/* One time zone's UTC offsets (rest_telemetry.c), computed once per name. */
struct rest_tz {
    char name[64];
    struct store_tz_span *spans; /* heap, owned */
    size_t nspans;
};

struct ops;

struct rest {
    struct http_server srv;         /* the HTTP listener's ctx; srv.ctx is this */
    struct gw *gw;
    struct store *store;            /* device writes and telemetry queries */
    struct commands *commands;
    struct ops *ops;                /* operations routes (web/ops.h), or NULL */
    struct httpdev *httpdev;        /* HTTP devices' presence and commands (web/httpdev.h) */
    rest_upgrade_fn on_upgrade;     /* NULL: upgrade requests are plain requests */
    void *upgrade_ctx;
    rest_device_deleted_fn on_device_deleted; /* NULL: nothing else to forget */
    void *device_deleted_ctx;
    struct rest_tz tz[REST_TZ_CACHE]; /* zones asked for; the oldest makes room */
    size_t ntz, tz_next;
};

void rest_reply_json(struct http_conn *h, int status, struct buf *b);
/* 405 with an Allow header listing allow (e.g. "GET, DELETE"). */
void rest_method_not_allowed(struct http_conn *h, const char *allow);
/* True when req carries an API key (any role). */
bool rest_authorized(struct gw *gw, const struct http_req *req);
/* Answers with status and body (taken over; left empty) once every write of t is
 * durable, or 503 when one failed. undo_device: a created device to forget on failure. */
void rest_reply_when_durable(struct http_conn *h, const struct ticket *t, int status,
                             struct buf *body, const char *undo_device);
/* Every query parameter of req must be one of names (NULL-terminated). Otherwise answers
 * 400 unknown_param naming each unknown one and returns false. */
bool rest_check_params(struct http_conn *h, const struct http_req *req,
                       const char *const *names);

/* rest_telemetry.c */
/* GET /api/devices/{id}/telemetry */
void rest_telemetry_get(struct rest *r, struct http_conn *h, struct http_req *req,
                        struct device *dev);
/* GET /api/telemetry?devices=a,b&... : the same query over several devices (those key
 * does not allow look absent) */
void rest_telemetry_query(struct rest *r, struct http_conn *h, struct http_req *req,
                          const struct api_key *key);
/* POST /api/devices/{id}/telemetry (the API key, the device's token or certificate) */
void rest_telemetry_post(struct rest *r, struct http_conn *h, struct http_req *req,
                         struct device *dev);
/* The answer to ingest without valid credentials, the same for known and unknown ids. */
void rest_unauthorized_ingest(struct gw *gw, struct http_conn *h);
/* A device token for device id was refused (session_check_token's why and reason): 401
 * with why, logged with the peer and counted. */
void rest_unauthorized_token(struct gw *gw, struct http_conn *h, const char *id, const char *why,
                             const char *reason);
void rest_tz_free(struct rest *r);

/* rest_fleet.c: POST /api/fleet/tokens {"device":..,"expires_s":..,"key_id":..} */
void rest_fleet_token(struct rest *r, struct http_conn *h, struct http_req *req);

/* rest_devices.c */
/* GET /api/devices: the devices key allows */
void rest_devices_list(struct rest *r, struct http_conn *h, struct http_req *req,
                       const struct api_key *key);
void rest_device_create(struct rest *r, struct http_conn *h, struct http_req *req);
void rest_device_patch(struct rest *r, struct http_conn *h, struct http_req *req,
                       struct device *dev);
void rest_device_delete(struct rest *r, struct http_conn *h, struct http_req *req,
                        struct device *dev);
/* PATCH /api/devices/{id}/attributes: the body (an object) merges into the server scope,
 * null deleting; answers {"server":{..},"reported":{..}}. */
void rest_device_patch_attrs(struct rest *r, struct http_conn *h, struct http_req *req,
                             struct device *dev);
/* POST /api/devices/{id}/token: a new token, shown once; the old one stops working. */
void rest_device_token(struct rest *r, struct http_conn *h, struct device *dev);

#endif
