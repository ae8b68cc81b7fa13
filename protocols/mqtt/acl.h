/* protocols/mqtt/acl.h: MQTT access rules.
 *
 * Config (mqtt.acl) holds ordered rules; the first rule that matches the client
 * and the topic decides. A rule: {"user": glob, "client": glob, "topic": filter,
 * "action": "publish"|"subscribe"|"all", "allow": bool}; "user"/"client" default to
 * "*"; %u and %c in "topic" are replaced by the username and client id. When no
 * rule matches, the default by role applies:
 *   device     publish and subscribe under devices/<its id>/# only
 *   app        everything
 *   anonymous  everything (only reachable with mqtt.allow_anonymous); the broker
 *              keeps them out of provisioned devices' namespaces (broker_anon_denied)
 * except that no default lets a client publish to a topic starting with '$' (the
 * server's own $SYS tree); only a rule can allow that.
 * For publish the rule's filter must match the topic name; for subscribe the
 * rule's filter must cover the requested filter (every topic the requested filter
 * can match is matched by the rule). Pure; loop thread. */
#ifndef GALE_MQTT_ACL_H
#define GALE_MQTT_ACL_H

#include <stdbool.h>
#include <stddef.h>

enum acl_action { ACL_PUBLISH = 1, ACL_SUBSCRIBE = 2, ACL_ALL = 3 };
enum acl_role { ACL_ROLE_DEVICE = 0, ACL_ROLE_APP = 1, ACL_ROLE_ANONYMOUS = 2 };

struct acl;

/* Parses the rules (JSON array text). Returns NULL with err filled when invalid. */
struct acl *acl_new(const char *json, char *err, size_t errlen);
void acl_free(struct acl *a);
/* username may be NULL (anonymous); device is the device id the client speaks for
 * (NULL for apps and anonymous). */
bool acl_check(const struct acl *a, enum acl_role role, const char *username,
               const char *client_id, const char *device, const char *topic, size_t topic_len,
               enum acl_action action);
/* True when some rule denies subscribing. A filter a rule allows (or the default covers)
 * can still match a topic a rule denies ('#' and a denied "a/secret"), so the broker then
 * checks each delivery too: acl_check(..., topic name, ACL_SUBSCRIBE). */
bool acl_has_subscribe_denials(const struct acl *a);
/* 1 when every topic that filter `inner` can match is also matched by `outer`. */
bool acl_filter_covers(const char *outer, size_t olen, const char *inner, size_t ilen);

#endif
