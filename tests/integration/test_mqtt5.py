"""MQTT 5.0 on the wire, with a byte-level client (mqttraw.Raw5) where a test must see or
send exact packets: CONNACK properties, Assigned Client Identifier, Server Keep Alive, the
Session Expiry cap; topic aliases both ways and their errors; Receive Maximum both ways;
Maximum Packet Size both ways; reason codes in PUBACK, PUBREC, PUBCOMP, SUBACK, UNSUBACK;
subscription options (No Local, Retain As Published, Retain Handling 0/1/2) and
Subscription Identifiers on overlapping filters; Message Expiry while a session is
offline; shared subscriptions with 5.0 members; session expiry (ends with the connection, kept, expired, across a restart,
changed by DISCONNECT); will delay (fired and cancelled) and DISCONNECT with will;
server DISCONNECT reason codes (takeover, protocol error, administrative action,
shutdown); AUTH refused with 0x8C; properties passed through to a 5.0 subscriber and a
3.1.1 subscriber on the same topic; the REST session listing's 5.0 fields; commands to
a 5.0 device with Response Topic, Correlation Data and Message Expiry; Reason Strings left
out of a PUBACK, CONNACK or DISCONNECT that would not fit the client's Maximum Packet
Size; the will after a DISCONNECT with an error reason code or an invalid one; a resumed
session within the new connection's Receive Maximum; Server Keep Alive applied; QoS 2
counted until PUBCOMP; protocol rules (Subscription Identifier 0, aliases end with the
connection and are replaced by a new topic, a second CONNECT, Request Problem Information
0)."""
import json
import socket
import time

import mqttraw as R
from galetest import Check, Gale, wait_for

t = Check("test_mqtt5")
ANON = ["--set", "mqtt.allow_anonymous=true"]


def publisher(g, cid="pub"):
    return R.session5(g.ports["mqtt"], cid)


def recv_publish(c, timeout=5):
    while True:
        p = c.recv(timeout)
        if p.type == R.PUBLISH:
            return p


def no_publish(c, timeout=0.7):
    try:
        while True:
            p = c.recv(timeout)
            if p.type == R.PUBLISH:
                return False
    except socket.timeout:
        return True


def connack_props():
    with Gale(args=ANON + ["--set", "mqtt.max_keepalive=30", "--set", "mqtt.session_expiry_s=100",
                           "--set", "mqtt.receive_maximum=50",
                           "--set", "mqtt.topic_alias_maximum=7",
                           "--set", "mqtt.max_packet_bytes=4096"]) as g:
        port = g.ports["mqtt"]
        c = R.Raw5(port)
        a = c.connect("", keepalive=300, prop=R.props((R.P_SESSION_EXPIRY, 1000)))
        t.eq(a.rc, 0, "CONNACK accepted for a 5.0 client")
        t.eq(a.props.get(R.P_RECEIVE_MAX), 50, "Receive Maximum = mqtt.receive_maximum")
        t.eq(a.props.get(R.P_MAX_PACKET), 4096, "Maximum Packet Size = mqtt.max_packet_bytes")
        t.eq(a.props.get(R.P_ALIAS_MAX), 7, "Topic Alias Maximum = mqtt.topic_alias_maximum")
        t.eq(a.props.get(R.P_SERVER_KEEP_ALIVE), 30, "Server Keep Alive = mqtt.max_keepalive")
        t.eq(a.props.get(R.P_SESSION_EXPIRY), 100, "Session Expiry capped by mqtt.session_expiry_s")
        aid = a.props.get(R.P_ASSIGNED_ID)
        t(isinstance(aid, str) and aid, "Assigned Client Identifier for an empty client id")
        c.send(R.disconnect5())
        c.close()
        # the assigned id resumes the session (its expiry was kept)
        c = R.Raw5(port)
        a = c.connect(aid, clean=False, prop=R.props((R.P_SESSION_EXPIRY, 60)))
        t.eq((a.rc, a.session_present), (0, 1), "the assigned id resumes its session")
        t(R.P_ASSIGNED_ID not in a.props and R.P_SESSION_EXPIRY not in a.props,
          "no Assigned Client Identifier or expiry when not needed: %r" % a.props)
        c.close()
        # enhanced authentication without a configured method
        c = R.Raw5(port)
        a = c.connect("auth", prop=R.props((R.P_AUTH_METHOD, "SCRAM-SHA-256")))
        t.eq(a.rc, 0x8C, "CONNECT with an Authentication Method: CONNACK 0x8C")
        t(R.P_REASON_STRING in a.props, "the refusal carries a Reason String")
        t(c.closed(), "closed after CONNACK 0x8C")
        # a 3.1.1 client is answered as before
        c = R.Raw(port)
        a = c.connect("v311", keepalive=300)
        t.eq(a.rc, 2, "3.1.1: keep alive above the maximum refused as before (0x02)")
        c.close()


def aliases_and_flow():
    with Gale(args=ANON + ["--set", "mqtt.topic_alias_maximum=4", "--set", "mqtt.receive_maximum=2",
                           "--set", "mqtt.max_packet_bytes=2048"]) as g:
        port = g.ports["mqtt"]
        sub = R.session5(port, "sub", prop=R.props((R.P_ALIAS_MAX, 3)))
        t.eq(sub.sub(1, [("al/#", 0)]), [0], "SUBACK granted")
        pub = R.session5(port, "pub")
        pub.send(R.publish5("al/one", "a", prop=R.props((R.P_ALIAS, 2))))
        pub.send(R.publish5("", "b", prop=R.props((R.P_ALIAS, 2))))
        pub.send(R.publish5("al/one", "c"))
        got = [recv_publish(sub) for _ in range(3)]
        t.eq([p.payload for p in got], [b"a", b"b", b"c"], "messages sent with an alias arrive")
        # Gale's aliases towards the subscriber: the first carries topic and alias, later
        # ones the alias alone
        t.eq((got[0].topic, got[0].props.get(R.P_ALIAS)), ("al/one", 1),
             "first delivery: topic and a new alias")
        t.eq((got[1].topic, got[1].props.get(R.P_ALIAS)), ("", 1), "second: the alias alone")
        t.eq((got[2].topic, got[2].props.get(R.P_ALIAS)), ("", 1), "third: the alias alone")
        # errors: alias above the maximum, unknown alias
        bad = R.session5(port, "bad1")
        bad.send(R.publish5("al/x", "x", prop=R.props((R.P_ALIAS, 5))))
        t.eq(bad.disconnected(), 0x94, "alias above Topic Alias Maximum: DISCONNECT 0x94")
        bad = R.session5(port, "bad2")
        bad.send(R.publish5("", "x", prop=R.props((R.P_ALIAS, 3))))
        t.eq(bad.disconnected(), 0x82, "unknown alias with an empty topic: DISCONNECT 0x82")
        # Receive Maximum towards Gale: QoS 2 publishes never released stay unacknowledged
        q = R.session5(port, "q2")
        for i in (1, 2):
            q.send(R.publish5("al/q", "x", qos=2, pid=i))
            t.eq(q.recv_type(R.PUBREC).pid, i, "PUBREC %d" % i)
        q.send(R.publish5("al/q", "x", qos=2, pid=3))
        t.eq(q.disconnected(), 0x93, "one more than Receive Maximum: DISCONNECT 0x93")
        # PUBREL for an unknown id: PUBCOMP 0x92
        q = R.session5(port, "q3")
        q.send(R.ack5(R.PUBREL, 77))
        p = q.recv_type(R.PUBCOMP)
        t.eq((p.pid, p.rc), (77, 0x92), "PUBREL of an unknown id: PUBCOMP 0x92")
        q.close()
        # Gale's Maximum Packet Size: larger packets are refused with DISCONNECT 0x95
        big = R.session5(port, "big")
        big.send(R.publish5("al/big", b"x" * 3000))
        t.eq(big.disconnected(), 0x95, "packet above mqtt.max_packet_bytes: DISCONNECT 0x95")
        # the client's Receive Maximum: never more than 2 QoS 1 messages unacknowledged
        slow = R.session5(port, "slow", prop=R.props((R.P_RECEIVE_MAX, 2)))
        slow.sub(1, [("rm/#", 1)])
        for i in range(1, 8):
            pub.send(R.publish5("rm/t", str(i), qos=1, pid=i))
            pub.recv_type(R.PUBACK)
        first = [recv_publish(slow) for _ in range(2)]
        t(no_publish(slow), "a third message waits for an ack (client Receive Maximum 2)")
        slow.send(R.ack5(R.PUBACK, first[0].pid))
        third = recv_publish(slow)
        t.eq(third.payload, b"3", "the ack lets the next one through")
        t(no_publish(slow), "still two in flight")
        slow.close()
        # the client's Maximum Packet Size: larger messages are not sent to it
        small = R.session5(port, "small", prop=R.props((R.P_MAX_PACKET, 200)))
        small.sub(1, [("mp/#", 0)])
        pub.send(R.publish5("mp/t", b"L" * 500))
        pub.send(R.publish5("mp/t", b"s" * 20))
        p = recv_publish(small)
        t.eq(p.payload, b"s" * 20, "the small message arrives, the large one does not")
        st, text = g.http("GET", "/metrics")
        t("gale_mqtt_too_large_total 1" in text, "gale_mqtt_too_large_total counts it")
        small.close()
        sub.close()
        pub.close()


def subscription_options():
    with Gale(args=ANON) as g:
        port = g.ports["mqtt"]
        a = R.session5(port, "nl-a")
        b = R.session5(port, "nl-b")
        a.sub(1, [("nl/t", 0x04)])  # No Local
        b.sub(1, [("nl/t", 0)])
        a.send(R.publish5("nl/t", "mine"))
        t.eq(recv_publish(b).payload, b"mine", "another subscriber gets it")
        t(no_publish(a), "No Local: the publisher's own subscription does not")
        # Retain As Published
        rap = R.session5(port, "rap")
        norap = R.session5(port, "norap")
        rap.sub(1, [("rp/t", 0x08)])
        norap.sub(1, [("rp/t", 0)])
        a.send(R.publish5("rp/t", "r", retain=True))
        t.eq(recv_publish(rap).retain, True, "Retain As Published keeps the retain flag")
        t.eq(recv_publish(norap).retain, False, "without it, cleared on live delivery")
        # Retain Handling: 0 on every subscribe, 1 only when new, 2 never
        rh = R.session5(port, "rh")
        rh.sub(1, [("rp/t", 0x00)])
        t.eq(recv_publish(rh).payload, b"r", "Retain Handling 0: retained sent")
        rh.sub(2, [("rp/t", 0x00)])
        t.eq(recv_publish(rh).payload, b"r", "Retain Handling 0: sent again on a resubscribe")
        rh.sub(3, [("rp/t", 0x10)])
        t(no_publish(rh), "Retain Handling 1: not sent for an existing subscription")
        rh.sub(4, [("rp/#", 0x10)])
        t.eq(recv_publish(rh).payload, b"r", "Retain Handling 1: sent for a new one")
        rh.sub(5, [("rp/+", 0x20)])
        t(no_publish(rh), "Retain Handling 2: never sent")
        # Subscription Identifiers: overlapping filters give one copy with both ids
        si = R.session5(port, "si")
        si.sub(1, [("si/a/#", 0)], prop=R.props((R.P_SUB_ID, 11)))
        si.sub(2, [("si/+/b", 0)], prop=R.props((R.P_SUB_ID, 22)))
        a.send(R.publish5("si/a/b", "both"))
        p = recv_publish(si)
        t.eq(sorted(p.props.get(R.P_SUB_ID, [])), [11, 22], "one copy carrying both identifiers")
        t(no_publish(si), "only one copy")
        a.send(R.publish5("si/a/c", "one"))
        t.eq(recv_publish(si).props.get(R.P_SUB_ID), [11], "one identifier when one matches")
        # shared subscriptions with 5.0 members: each message to one member, with that
        # member's Subscription Identifier; No Local on a shared subscription is an error
        m1 = R.session5(port, "sh1")
        m2 = R.session5(port, "sh2")
        m1.sub(1, [("$share/g5/sh/#", 1)], prop=R.props((R.P_SUB_ID, 5)))
        m2.sub(1, [("$share/g5/sh/#", 1)], prop=R.props((R.P_SUB_ID, 6)))
        for i in range(4):
            a.send(R.publish5("sh/t", str(i), qos=1, pid=10 + i))
        got = {}
        for m, want in ((m1, 5), (m2, 6)):
            for _ in range(2):
                p = recv_publish(m)
                m.send(R.ack5(R.PUBACK, p.pid))
                got.setdefault(want, []).append((p.payload, p.props.get(R.P_SUB_ID)))
        t.eq(sorted(x for v in got.values() for x, _ in v), [b"0", b"1", b"2", b"3"],
             "$share with 5.0 members: every message once, spread over both")
        t(all(ids == [k] for k, v in got.items() for _, ids in v),
          "each member gets its own Subscription Identifier: %r" % got)
        bad = R.session5(port, "shnl")
        bad.send(R.subscribe5(1, [("$share/g5/x", 0x04)]))
        t.eq(bad.disconnected(), 0x82, "No Local on a shared subscription: DISCONNECT 0x82")
        m1.close()
        m2.close()
        # UNSUBACK reason codes
        si.send(R.unsubscribe5(9, ["si/a/#", "never/subscribed"]))
        p = si.recv_type(R.UNSUBACK)
        t.eq(p.codes, [0x00, 0x11], "UNSUBACK: Success, No subscription existed")
        for c in (a, b, rap, norap, rh, si):
            c.close()


def reason_codes():
    acl = json.dumps([{"topic": "secret/#", "action": "publish", "allow": False},
                      {"topic": "secret/#", "action": "subscribe", "allow": False}])
    with Gale(args=ANON + ["--set", "mqtt.acl=" + acl]) as g:
        port = g.ports["mqtt"]
        tok = g.create_device("d5")
        c = R.session5(port, "rc", prop=R.props((0x17, 1)))
        c.send(R.publish5("secret/x", "no", qos=1, pid=1))
        p = c.recv_type(R.PUBACK)
        t.eq(p.rc, 0x87, "PUBACK 0x87 for a publish the ACL denies")
        t(R.P_REASON_STRING in p.props, "with a Reason String (Request Problem Information 1)")
        t.eq(c.sub(2, [("secret/#", 1), ("open/#", 1)]), [0x87, 1], "SUBACK 0x87 for a denied filter")
        c.send(R.publish5("open/x", b"\xff\xfe", qos=1, pid=3, prop=R.props((R.P_PAYLOAD_FORMAT, 1))))
        t.eq(c.recv_type(R.PUBACK).rc, 0x99, "PUBACK 0x99: flagged UTF-8 but is not")
        c.close()
        # a device's telemetry that does not decode: PUBACK 0x99, the connection stays
        d = R.session5(port, "d5", username="d5", password=tok)
        d.send(R.publish5("devices/d5/telemetry", "{not json", qos=1, pid=1))
        t.eq(d.recv_type(R.PUBACK).rc, 0x99, "telemetry that does not decode: PUBACK 0x99")
        d.send(R.publish5("devices/d5/telemetry", '{"temp": 21.5}', qos=1, pid=2))
        p = d.recv_type(R.PUBACK)
        t.eq((p.pid, p.rc), (2, 0), "the connection stays and the next one is stored")
        st, js = g.http("GET", "/api/devices/d5/latest")
        t(st == 200 and "temp" in json.dumps(js), "the good value is stored: %r" % (js,))
        d.close()


def sessions_and_wills():
    with Gale(args=ANON) as g:
        port = g.ports["mqtt"]
        pub = publisher(g)
        # Session Expiry 0: the session ends with the connection
        c = R.session5(port, "e0")
        c.sub(1, [("ex/#", 1)])
        c.close()
        time.sleep(0.3)
        c = R.session5(port, "e0", clean=False)
        t.eq(c.session_present, 0, "expiry 0: no session after the connection")
        c.close()
        # kept for its expiry, with what was queued; Message Expiry while offline
        c = R.session5(port, "e5", prop=R.props((R.P_SESSION_EXPIRY, 30)))
        c.sub(1, [("ex/#", 1)])
        c.send(R.disconnect5())
        c.close()
        time.sleep(0.3)
        pub.send(R.publish5("ex/short", "gone", qos=1, pid=1, prop=R.props((R.P_MESSAGE_EXPIRY, 1))))
        pub.recv_type(R.PUBACK)
        pub.send(R.publish5("ex/long", "kept", qos=1, pid=2, prop=R.props((R.P_MESSAGE_EXPIRY, 60))))
        pub.recv_type(R.PUBACK)
        time.sleep(2.2)
        c = R.session5(port, "e5", clean=False, prop=R.props((R.P_SESSION_EXPIRY, 30)))
        t.eq(c.session_present, 1, "expiry 30: session present on return")
        p = recv_publish(c)
        t.eq(p.payload, b"kept", "the expired message was never delivered")
        t(0 < p.props.get(R.P_MESSAGE_EXPIRY, 0) <= 60, "remaining expiry forwarded: %r" % p.props)
        c.send(R.ack5(R.PUBACK, p.pid))
        t(no_publish(c), "nothing else queued")
        # DISCONNECT with a Session Expiry of 1: expired a second later
        c.send(R.disconnect5(0, R.props((R.P_SESSION_EXPIRY, 1))))
        c.close()
        time.sleep(2.5)
        c = R.session5(port, "e5", clean=False, prop=R.props((R.P_SESSION_EXPIRY, 30)))
        t.eq(c.session_present, 0, "expiry changed by DISCONNECT: the session expired")
        c.close()
        # expiry 0 in CONNECT, non-zero in DISCONNECT: protocol error
        c = R.session5(port, "e00")
        c.send(R.disconnect5(0, R.props((R.P_SESSION_EXPIRY, 10))))
        t.eq(c.disconnected(), 0x82, "DISCONNECT expiry after 0 in CONNECT: DISCONNECT 0x82")
        # will delay: fired after the delay
        w = R.session5(port, "watch")
        w.sub(1, [("will/#", 0)])
        c = R.session5(port, "wd", will=("will/wd", "gone", 0, False),
                       will_props=R.props((R.P_WILL_DELAY, 2), (R.P_CONTENT_TYPE, "text/plain")),
                       prop=R.props((R.P_SESSION_EXPIRY, 30)))
        c.abort()
        t(no_publish(w, 1.0), "will delay 2 s: not yet after 1 s")
        p = recv_publish(w, 5)
        t.eq(p.payload, b"gone", "will published after its delay")
        t.eq(p.props.get(R.P_CONTENT_TYPE), "text/plain", "will properties forwarded")
        # will delay: cancelled by a reconnect within the delay
        c = R.session5(port, "wc", will=("will/wc", "gone", 0, False),
                       will_props=R.props((R.P_WILL_DELAY, 2)), prop=R.props((R.P_SESSION_EXPIRY, 30)))
        c.abort()
        time.sleep(0.5)
        c = R.session5(port, "wc", clean=False, prop=R.props((R.P_SESSION_EXPIRY, 30)))
        t(no_publish(w, 3.0), "will cancelled: the client came back within the delay")
        c.close()
        # will delay longer than the session: published when the session ends
        c = R.session5(port, "ws", will=("will/ws", "ended", 0, False),
                       will_props=R.props((R.P_WILL_DELAY, 60)), prop=R.props((R.P_SESSION_EXPIRY, 1)))
        c.abort()
        t.eq(recv_publish(w, 5).payload, b"ended", "will published when the session ends first")
        # DISCONNECT 0x04: with will; 0x00: without
        c = R.session5(port, "dw", will=("will/dw", "asked", 0, False))
        c.send(R.disconnect5(0x04))
        t.eq(recv_publish(w, 5).payload, b"asked", "DISCONNECT 0x04 publishes the will")
        c = R.session5(port, "dn", will=("will/dn", "no", 0, False))
        c.send(R.disconnect5(0x00))
        t(no_publish(w, 1.0), "DISCONNECT 0x00 discards it")
        # server reason codes: takeover, administrative action
        a = R.session5(port, "take", prop=R.props((R.P_SESSION_EXPIRY, 30)))
        b = R.session5(port, "take", clean=False, prop=R.props((R.P_SESSION_EXPIRY, 30)))
        t.eq(a.disconnected(), 0x8E, "takeover: DISCONNECT 0x8E to the first connection")
        st, js = g.http("GET", "/api/mqtt/sessions/take")
        t(st == 200 and js.get("protocol") == 5 and js.get("session_expiry_s") == 30 and
          "receive_maximum" in js and "topic_aliases" in js, "REST shows 5.0 fields: %r" % (js,))
        st, _ = g.http("DELETE", "/api/mqtt/sessions/take")
        t.eq(st in (200, 204), True, "session discarded over REST (%d)" % st)
        t.eq(b.disconnected(), 0x98, "discarded: DISCONNECT 0x98 (administrative action)")
        w.close()
        pub.close()


def restart_and_shutdown():
    g = Gale(args=ANON)
    g.start(wait_ports=("http", "line", "mqtt"))
    try:
        port = g.ports["mqtt"]
        c = R.session5(port, "keep", prop=R.props((R.P_SESSION_EXPIRY, 300)))
        c.sub(1, [("rs/#", 1)])
        c.send(R.disconnect5())
        c.close()
        pub = publisher(g)
        pub.send(R.publish5("rs/x", "queued", qos=1, pid=1,
                            prop=R.props((R.P_CONTENT_TYPE, "text/plain"), (R.P_USER, ("a", "b")),
                                         (R.P_MESSAGE_EXPIRY, 600))))
        pub.recv_type(R.PUBACK)
        pub.send(R.publish5("rt/ret", "kept", qos=1, pid=2, retain=True,
                            prop=R.props((R.P_CORRELATION, b"\x07"))))
        pub.recv_type(R.PUBACK)
        pub.close()
        short = R.session5(port, "short", prop=R.props((R.P_SESSION_EXPIRY, 1)))
        short.send(R.disconnect5())
        short.close()
        live = R.session5(port, "live")
        g.stop()
        t.eq(live.disconnected(), 0x8B, "shutdown: DISCONNECT 0x8B (server shutting down)")
        g.ports = {}
        g.start(wait_ports=("http", "mqtt"))
        port = g.ports["mqtt"]
        c = R.session5(port, "keep", clean=False, prop=R.props((R.P_SESSION_EXPIRY, 300)))
        t.eq(c.session_present, 1, "a 5.0 session survives a restart")
        p = recv_publish(c)
        t.eq(p.payload, b"queued", "with its queued message")
        t.eq((p.props.get(R.P_CONTENT_TYPE), p.props.get(R.P_USER)), ("text/plain", [("a", "b")]),
             "its properties kept across the restart")
        t(0 < p.props.get(R.P_MESSAGE_EXPIRY, 0) <= 600, "and its expiry: %r" % p.props)
        c.sub(2, [("rt/ret", 0)])
        p = recv_publish(c)
        t.eq((p.payload, p.retain, p.props.get(R.P_CORRELATION)), (b"kept", True, b"\x07"),
             "a retained message keeps its properties across a restart")
        c.close()
        time.sleep(1.5)
        c = R.session5(port, "short", clean=False, prop=R.props((R.P_SESSION_EXPIRY, 1)))
        t.eq(c.session_present, 0, "its own expiry still applies after a restart")
        c.close()
    finally:
        g.__exit__(None, None, None)


def passthrough_and_commands():
    with Gale(args=ANON) as g:
        port = g.ports["mqtt"]
        s5 = R.session5(port, "s5")
        s5.sub(1, [("rr/#", 0)])
        s3 = R.session(port, "s3")
        s3.sub(1, [("rr/#", 0)])
        pub = publisher(g)
        pr = R.props((R.P_PAYLOAD_FORMAT, 1), (R.P_CONTENT_TYPE, "application/json"),
                     (R.P_RESPONSE_TOPIC, "rr/reply"), (R.P_CORRELATION, b"\x01\x02"),
                     (R.P_USER, ("k", "v")), (R.P_USER, ("k", "w")))
        pub.send(R.publish5("rr/req", '{"a":1}', prop=pr))
        p = recv_publish(s5)
        want = {R.P_PAYLOAD_FORMAT: 1, R.P_CONTENT_TYPE: "application/json",
                R.P_RESPONSE_TOPIC: "rr/reply", R.P_CORRELATION: b"\x01\x02",
                R.P_USER: [("k", "v"), ("k", "w")]}
        t.eq(p.props, want, "5.0 subscriber: properties unchanged")
        p3 = s3.recv_type(R.PUBLISH)
        t.eq((p3.topic, p3.payload), ("rr/req", b'{"a":1}'), "3.1.1 subscriber: same message")
        s3.send(R.publish("rr/from311", "x"))
        t.eq(recv_publish(s5).payload, b"x", "3.1.1 publisher -> 5.0 subscriber")
        # a command to a 5.0 device: where to reply, and its lifetime
        tok = g.create_device("cmd5")
        d = R.session5(port, "cmd5", username="cmd5", password=tok)
        d.sub(1, [("devices/cmd5/commands", 1)])
        st, js = g.http("POST", "/api/devices/cmd5/commands",
                        {"name": "reboot", "params": {}, "timeout_ms": 30000})
        t(st in (200, 201, 202), "command accepted (%d %r)" % (st, js))
        p = recv_publish(d)
        cid = json.loads(p.payload)["id"]
        t.eq(p.props.get(R.P_RESPONSE_TOPIC), "devices/cmd5/commands/%s/reply" % cid,
             "Response Topic names the reply topic")
        t.eq(p.props.get(R.P_CORRELATION), cid.encode(), "Correlation Data is the command id")
        t(0 < p.props.get(R.P_MESSAGE_EXPIRY, 0) <= 30, "Message Expiry from timeout_ms")
        d.send(R.ack5(R.PUBACK, p.pid))
        d.send(R.publish5(p.props[R.P_RESPONSE_TOPIC], '{"ok":true}', qos=1, pid=9,
                          prop=R.props((R.P_CORRELATION, cid.encode()))))
        d.recv_type(R.PUBACK)
        wait_for(lambda: g.http("GET", "/api/devices/cmd5/commands/" + cid)[1].get("status")
                 == "replied", 5, "command replied")
        t(True, "a reply to the Response Topic marks the command replied")
        for c in (s5, s3, pub, d):
            c.close()


def goodbye(c, timeout=5):
    """The DISCONNECT the server sends before closing (packets before it are skipped)."""
    deadline = time.time() + timeout
    while True:
        p = c.recv(max(0.05, deadline - time.time()))
        if p.type == R.DISCONNECT:
            return p


def size(p):
    """Bytes of a received packet on the wire (remaining length < 128 here)."""
    return 2 + len(p.body)


def reason_strings_fit():
    """A Reason String never makes a packet larger than the client's Maximum Packet Size
    [MQTT-3.2.2-19] [MQTT-3.4.2-2] [MQTT-3.14.2-3]: the packet goes without it."""
    acl = json.dumps([{"topic": "secret/#", "action": "publish", "allow": False}])
    with Gale(args=ANON + ["--set", "mqtt.acl=" + acl, "--set", "mqtt.topic_alias_maximum=2"]) as g:
        port = g.ports["mqtt"]
        small = R.props((R.P_MAX_PACKET, 16))
        c = R.session5(port, "mps-ack", prop=small)
        c.send(R.publish5("secret/x", "no", qos=1, pid=1))
        p = c.recv_type(R.PUBACK)
        t.eq(p.rc, 0x87, "PUBACK 0x87 to a client with Maximum Packet Size 16")
        t(size(p) <= 16 and R.P_REASON_STRING not in p.props,
          "the PUBACK fits, without its Reason String (%d bytes, %r)" % (size(p), p.props))
        c.send(R.publish5("secret/x", "no", qos=1, pid=2))
        p = c.recv_type(R.PUBACK)
        t.eq((p.pid, p.rc), (2, 0x87), "the connection goes on")
        c.close()
        # a larger limit still gets the Reason String
        c = R.session5(port, "mps-big", prop=R.props((R.P_MAX_PACKET, 1000)))
        c.send(R.publish5("secret/x", "no", qos=1, pid=1))
        p = c.recv_type(R.PUBACK)
        t(p.rc == 0x87 and R.P_REASON_STRING in p.props, "room for it: with the Reason String")
        c.close()
        # a refused CONNECT
        c = R.Raw5(port)
        a = c.connect("mps-auth", prop=R.props((R.P_MAX_PACKET, 20),
                                               (R.P_AUTH_METHOD, "SCRAM-SHA-256")))
        t.eq(a.rc, 0x8C, "CONNACK 0x8C to a client with Maximum Packet Size 20")
        t(size(a) <= 20 and R.P_REASON_STRING not in a.props,
          "the CONNACK fits, without its Reason String (%d bytes, %r)" % (size(a), a.props))
        c.close()
        # the server's DISCONNECT
        c = R.session5(port, "mps-bye", prop=small)
        c.send(R.publish5("al/x", "x", prop=R.props((R.P_ALIAS, 3))))
        p = goodbye(c)
        t.eq(p.rc, 0x94, "DISCONNECT 0x94 to a client with Maximum Packet Size 16")
        t(size(p) <= 16 and R.P_REASON_STRING not in p.props,
          "the DISCONNECT fits, without its Reason String (%d bytes, %r)" % (size(p), p.props))
        c.close()


def wills_and_disconnect():
    """Only a DISCONNECT with Reason Code 0x00 discards the will [MQTT-3.1.2-8]
    [MQTT-3.14.4-3]; one that is itself a Protocol Error is no valid DISCONNECT
    [MQTT-3.14.2-2]: the will is published."""
    with Gale(args=ANON) as g:
        port = g.ports["mqtt"]
        w = R.session5(port, "watch")
        w.sub(1, [("will/#", 0)])
        c = R.session5(port, "d80", will=("will/d80", "error", 0, False))
        c.send(R.disconnect5(0x80))
        t(c.closed(), "DISCONNECT 0x80 closes the connection")
        t.eq(recv_publish(w, 5).payload, b"error", "DISCONNECT 0x80 (Unspecified error) "
             "publishes the will")
        c = R.session5(port, "dpe", will=("will/dpe", "invalid", 0, False))
        c.send(R.disconnect5(0, R.props((R.P_SESSION_EXPIRY, 10))))
        t.eq(c.disconnected(), 0x82, "DISCONNECT with an expiry after 0 in CONNECT: 0x82")
        t.eq(recv_publish(w, 5).payload, b"invalid", "that DISCONNECT is not valid: the will "
             "is published")
        c = R.session5(port, "d00", will=("will/d00", "no", 0, False))
        c.send(R.disconnect5(0x00))
        t(c.closed(), "DISCONNECT 0x00 closes the connection")
        t(no_publish(w, 1.0), "DISCONNECT 0x00 still discards the will")
        w.close()


def resume_within_receive_maximum():
    """A resumed session's unacknowledged messages are resent, with their packet ids and
    DUP [MQTT-4.4.0-1], but never more at once than the new connection's Receive Maximum
    [MQTT-3.3.4-7]: the rest follow as acks free the window."""
    with Gale(args=ANON) as g:
        port = g.ports["mqtt"]
        pub = publisher(g)
        keep = R.props((R.P_SESSION_EXPIRY, 60), (R.P_RECEIVE_MAX, 5))
        c = R.session5(port, "rmx", prop=keep)
        c.sub(1, [("rq/#", 1)])
        for i in range(1, 6):
            pub.send(R.publish5("rq/t", str(i), qos=1, pid=i))
            pub.recv_type(R.PUBACK)
        first = [recv_publish(c) for _ in range(5)]
        t.eq([p.payload for p in first], [b"1", b"2", b"3", b"4", b"5"],
             "five in flight under Receive Maximum 5, none acknowledged")
        c.abort()
        time.sleep(0.3)
        c = R.session5(port, "rmx", clean=False,
                       prop=R.props((R.P_SESSION_EXPIRY, 60), (R.P_RECEIVE_MAX, 2)))
        t.eq(c.session_present, 1, "the session is resumed")
        got = [recv_publish(c) for _ in range(2)]
        t(no_publish(c), "Receive Maximum 2 on the new connection: only two resent at once")
        unacked = [p.pid for p in got]
        while len(got) < 5:
            c.send(R.ack5(R.PUBACK, unacked.pop(0)))
            got.append(recv_publish(c))
            unacked.append(got[-1].pid)
        t.eq([p.payload for p in got], [b"1", b"2", b"3", b"4", b"5"],
             "all five resent in order as acks come in")
        t.eq([p.pid for p in got], [p.pid for p in first], "with their packet ids")
        t(all(p.dup for p in got), "and DUP")
        c.close()
        pub.close()


def keepalive_and_flow():
    """Server Keep Alive is the keep alive Gale applies: 1.5 times it without a packet
    ends the connection with DISCONNECT 0x8D [MQTT-3.1.2-22] [MQTT-3.2.2-21]; a QoS 2
    publish counts against Gale's Receive Maximum until its PUBCOMP [MQTT-3.3.4-9]."""
    with Gale(args=ANON + ["--set", "mqtt.max_keepalive=1"]) as g:
        c = R.Raw5(g.ports["mqtt"])
        a = c.connect("ka", keepalive=60)
        t.eq(a.props.get(R.P_SERVER_KEEP_ALIVE), 1, "Server Keep Alive 1 for a client asking 60")
        t0 = time.monotonic()
        t.eq(c.disconnected(10), 0x8D, "silent past it: DISCONNECT 0x8D (Keep Alive timeout)")
        t(time.monotonic() - t0 >= 1.0, "not before the keep alive has passed")
        c.close()
    with Gale(args=ANON + ["--set", "mqtt.receive_maximum=2"]) as g:
        q = R.session5(g.ports["mqtt"], "q2done")
        for rnd in range(3):
            for i in (1, 2):
                q.send(R.publish5("rm/q", "x", qos=2, pid=i))
                t.eq(q.recv_type(R.PUBREC).pid, i, "round %d: PUBREC %d" % (rnd, i))
            for i in (1, 2):
                q.send(R.ack5(R.PUBREL, i))
                p = q.recv_type(R.PUBCOMP)
                t.eq((p.pid, p.rc), (i, 0), "round %d: PUBCOMP %d" % (rnd, i))
        t(q.nothing(0.3), "Receive Maximum 2: PUBCOMP frees the slot, no DISCONNECT")
        q.close()


def protocol_rules():
    """Server rules checked on the wire: a Subscription Identifier of 0 is a Protocol
    Error (5.0 3.8.2.1.2); Topic Alias mappings end with the connection [MQTT-3.3.2-7];
    a second CONNECT is a Protocol Error [MQTT-3.1.0-2]; Request Problem Information 0:
    no Reason String on a PUBACK [MQTT-3.1.2-29]."""
    acl = json.dumps([{"topic": "secret/#", "action": "publish", "allow": False}])
    with Gale(args=ANON + ["--set", "mqtt.acl=" + acl]) as g:
        port = g.ports["mqtt"]
        c = R.session5(port, "sid0")
        c.send(R.subscribe5(1, [("x/#", 0)], prop=R.props((R.P_SUB_ID, 0))))
        t.eq(c.disconnected(), 0x82, "SUBSCRIBE with Subscription Identifier 0: DISCONNECT 0x82")
        c = R.session5(port, "alias", prop=R.props((R.P_SESSION_EXPIRY, 30)))
        c.send(R.publish5("al/one", "a", prop=R.props((R.P_ALIAS, 1))))
        c.send(R.disconnect5())
        c.close()
        c = R.session5(port, "alias", clean=False, prop=R.props((R.P_SESSION_EXPIRY, 30)))
        t.eq(c.session_present, 1, "the session is resumed")
        c.send(R.publish5("", "b", prop=R.props((R.P_ALIAS, 1))))
        t.eq(c.disconnected(), 0x82, "an alias of the previous connection is unknown: 0x82")
        # a PUBLISH with a Topic Alias and a topic maps the alias anew [MQTT-3.3.2-12]
        w = R.session5(port, "alias-watch")
        w.sub(1, [("al/#", 0)])
        c = R.session5(port, "alias2")
        c.send(R.publish5("al/one", "1", prop=R.props((R.P_ALIAS, 1))))
        c.send(R.publish5("al/two", "2", prop=R.props((R.P_ALIAS, 1))))
        c.send(R.publish5("", "3", prop=R.props((R.P_ALIAS, 1))))
        got = [recv_publish(w) for _ in range(3)]
        t.eq([(p.topic, p.payload) for p in got],
             [("al/one", b"1"), ("al/two", b"2"), ("al/two", b"3")],
             "an alias sent again with a topic names the new topic")
        c.close()
        w.close()
        c = R.session5(port, "twice")
        c.send(R.connect5("twice"))
        t.eq(c.disconnected(), 0x82, "a second CONNECT: DISCONNECT 0x82")
        c = R.session5(port, "rpi0", prop=R.props((0x17, 0)))
        c.send(R.publish5("secret/x", "no", qos=1, pid=1))
        p = c.recv_type(R.PUBACK)
        t(p.rc == 0x87 and R.P_REASON_STRING not in p.props,
          "Request Problem Information 0: PUBACK 0x87 without a Reason String (%r)" % p.props)
        c.close()


def main():
    connack_props()
    aliases_and_flow()
    subscription_options()
    reason_codes()
    sessions_and_wills()
    restart_and_shutdown()
    passthrough_and_commands()
    reason_strings_fit()
    wills_and_disconnect()
    resume_within_receive_maximum()
    keepalive_and_flow()
    protocol_rules()


t.run(main)
