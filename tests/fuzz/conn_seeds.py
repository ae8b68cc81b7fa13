#!/usr/bin/env python3
"""tests/fuzz/conn_seeds.py: writes the hand-made seeds of the connection fuzz targets
(fuzz_http_conn, fuzz_ws_conn, and fuzz_mqtt_conn's seeds that use the fault seam, deaf
clients and resets right after a write) in the op format of tests/fuzz/conn_world.h.

    python3 tests/fuzz/conn_seeds.py [CORPUS_DIR]   (default: tests/fuzz/corpus)

Each seed is named for what it does; the fuzzer grows the rest from them."""
import os
import struct
import sys

root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), 'corpus')


class In:
    """An input: the configuration byte, then ops (conn_world.h)."""
    def __init__(s, cfg): s.b = bytearray([cfg])
    def write(s, k, data, bytewise=False, reset=False, deaf=False):
        if isinstance(data, str): data = data.encode('latin1')
        chunks = [data[i:i+255] for i in range(0, len(data), 255)] or [b'']
        for i, c in enumerate(chunks):
            last = i == len(chunks) - 1
            op = k | (4 if bytewise else 0) | (0x10 if reset and last else 0) | (0x20 if deaf and i == 0 else 0)
            s.b += bytes([op, len(c)]) + c
        return s
    def reset(s, k): s.b.append(k | 8); return s
    def fin(s, k): s.b.append(k | 12); return s
    def deaf(s, k):  # toggle with a zero-length write (connects if needed)
        s.b += bytes([k | 0x20, 0]); return s
    def durable(s, ok=True): s.b.append(3 | (0 if ok else 4)); return s
    def pressure(s, on=True): s.b.append(3 | (8 if on else 12)); return s
    def seam(s, nth, p=0, seed=0): s.b += bytes([0x13, nth, p, seed]); return s
    def asyncop(s): s.b.append(0x23); return s
    def wait(s, ms): s.b += bytes([0xc3, ms]); return s

def save(name, target, inp):
    d = os.path.join(root, target); os.makedirs(d, exist_ok=True)
    open(os.path.join(d, name), 'wb').write(bytes(inp.b))

def get(path, extra='', ver='1.1', method='GET'):
    return f'{method} {path} HTTP/{ver}\r\nHost: g\r\n{extra}\r\n'

# ---------------- http_conn ----------------
T = 'http_conn'
save('pipelined_pair', T, In(0).write(0, get('/t/reply?n=5') + get('/t/reply?n=3')).fin(0))
body = 'hello body'
head = ('POST /t/reply?echo HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer key1\r\n'
        f'Expect: 100-continue\r\nContent-Length: {len(body)}\r\n\r\n')
save('expect_continue', T, In(0).write(0, head).write(0, body).write(0, get('/t/close')))
save('expect_continue_reset_before_body', T, In(0).write(0, head).reset(0).write(1, get('/healthz')))
save('reset_between_head_and_body', T,
     In(0).write(0, 'POST /t/reply?echo HTTP/1.1\r\nHost: g\r\nContent-Length: 40\r\n\r\nfirst')
     .reset(0))
save('stream_deaf_client', T,
     In(3).deaf(0).write(0, get('/t/stream?n=300000&piece=4000')).write(1, get('/healthz'))
     .deaf(0).fin(0))
save('stream_reset_while_deaf', T,
     In(3).deaf(0).write(0, get('/t/stream?n=300000&piece=4000') + get('/t/reply')).reset(0)
     .write(1, get('/t/reply?n=1')))
save('stream_async', T,
     In(0).write(0, get('/t/stream?n=5000&piece=1000&async=1') + get('/t/reply?n=2'))
     .asyncop().asyncop().asyncop().asyncop().asyncop().asyncop())
save('stream_async_reset', T,
     In(0).write(0, get('/t/stream?n=5000&piece=1000&async=1')).asyncop().reset(0).asyncop())
save('stream_async_fail', T,
     In(0).write(0, get('/t/stream?n=5000&piece=1000&async=1&fail=1') + get('/t/reply'))
     .asyncop().asyncop())
save('stream_http10_and_head', T,
     In(0).write(0, get('/t/stream?n=3000&piece=700', ver='1.0'))
     .write(1, get('/t/stream?n=3000', method='HEAD') + get('/t/reply?n=4', method='HEAD')))
save('defer_pipelined', T,
     In(0).write(0, get('/t/defer') + get('/t/reply?n=7')).write(1, get('/t/defer'))
     .reset(1).asyncop())
save('defer_reset_then_async', T, In(0).write(0, get('/t/defer'), reset=True).asyncop())
tele = '{"temp":21.5}'
post = ('POST /api/devices/dev1/telemetry HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer tok1\r\n'
        f'Content-Length: {len(tele)}\r\n\r\n{tele}')
save('telemetry_durable', T, In(0).write(0, post + get('/api/health')).durable()
     .write(1, post).reset(1).durable(False).write(2, post).pressure().write(2, post)
     .pressure(False).durable())
save('seam_first_write', T, In(0).seam(1).write(0, get('/t/reply?n=5') + get('/t/reply'))
     .seam(0).write(1, get('/t/reply')))
save('seam_mid_stream', T, In(1).seam(3).write(0, get('/t/stream?n=100000&piece=2000')))
save('seam_probability', T, In(0).seam(0, 64, 7).write(0, get('/t/reply') * 4)
     .write(1, get('/t/stream?n=20000&piece=500')).write(2, head).write(2, body))
save('reset_right_after_request', T,
     In(0).write(0, get('/t/reply?n=60000'), reset=True).write(1, get('/t/reply'), bytewise=True))
save('deadlines', T, In(0x10).write(0, 'GET /t/reply HTTP/1.1\r\nHo').wait(40)
     .write(1, get('/t/defer') + get('/t/reply')).wait(70).asyncop()
     .write(2, get('/t/stream?n=4000&piece=1000&async=1')).wait(40).asyncop())
save('bad_request_and_limits', T, In(4).write(0, 'GARBAGE\r\n\r\n').write(1, 'GET /' + 'a' * 400 + ' HTTP/1.1\r\n\r\n')
     .write(2, 'POST /t/reply HTTP/1.1\r\nContent-Length: 100\r\n\r\n' + 'b' * 100))

# ---------------- ws_conn ----------------
T = 'ws_conn'
KEY = 'dGhlIHNhbXBsZSBub25jZQ=='
def upgrade(path, extra=''):
    return (f'GET {path} HTTP/1.1\r\nHost: g\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n'
            f'Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n')
def frame(op, payload, fin=True, mask=b'\x01\x02\x03\x04', rsv1=False):
    if isinstance(payload, str): payload = payload.encode('latin1')
    b0 = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | op
    n = len(payload)
    if n < 126: h = bytes([b0, 0x80 | n])
    elif n < 65536: h = bytes([b0, 0x80 | 126]) + struct.pack('>H', n)
    else: h = bytes([b0, 0x80 | 127]) + struct.pack('>Q', n)
    return h + mask + bytes(p ^ mask[i % 4] for i, p in enumerate(payload))
TEXT, BIN, CLOSE, PING = 1, 2, 8, 9
def remlen(n):
    out = bytearray()
    while True:
        b = n & 0x7f
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)
def mqtt_connect(cid, user=None, pw=None):
    flags = 0x02
    pl = struct.pack('>H', len(cid)) + cid.encode()
    if user: flags |= 0x80; pl += struct.pack('>H', len(user)) + user.encode()
    if pw: flags |= 0x40; pl += struct.pack('>H', len(pw)) + pw.encode()
    vh = b'\x00\x04MQTT\x04' + bytes([flags]) + b'\x00\x3c'
    rem = vh + pl
    return bytes([0x10]) + remlen(len(rem)) + rem
def mqtt_publish(topic, payload, qos=1, pid=1):
    vh = struct.pack('>H', len(topic)) + topic.encode() + (struct.pack('>H', pid) if qos else b'')
    rem = vh + payload.encode()
    return bytes([0x30 | (qos << 1)]) + remlen(len(rem)) + rem
def mqtt_subscribe(flt, pid=2):
    rem = struct.pack('>H', pid) + struct.pack('>H', len(flt)) + flt.encode() + b'\x01'
    return bytes([0x82]) + remlen(len(rem)) + rem

dev = upgrade('/ws/device?device=dev1', 'Authorization: Bearer tok1\r\n')
save('device_upgrade_frames', T,
     In(0).write(0, dev + frame(TEXT, '{"temp":21.5,"seq":7}').decode('latin1'))
     .durable().write(0, frame(TEXT, '{"reply":{"id":"c1","result":"ok"}}')).asyncop()
     .write(0, frame(PING, 'p') + frame(CLOSE, b'\x03\xe8')).fin(0))
save('device_login_message', T,
     In(1).write(0, upgrade('/ws/device')).write(0, frame(TEXT, '{"device":"dev1","token":"tok1"}'))
     .write(0, frame(TEXT, '{"temp":1,', fin=False) + frame(0, '"seq":1}'))
     .asyncop().reset(0).durable())
save('reset_right_after_upgrade', T,
     In(0).write(0, upgrade('/ws/echo'), reset=True).write(1, upgrade('/ws/device'), reset=True)
     .write(2, upgrade('/mqtt', 'Sec-WebSocket-Protocol: mqtt\r\n')).reset(2))
save('reset_mid_frame', T,
     In(0).write(0, dev).write(0, frame(TEXT, '{"temp":2,"seq":3}')[:5]).reset(0).durable())
mq = upgrade('/mqtt', 'Sec-WebSocket-Protocol: mqtt\r\n')
save('mqtt_over_ws', T,
     In(0x10).write(0, mq + frame(BIN, mqtt_connect('w1', 'dev1', 'tok1')).decode('latin1'))
     .write(0, frame(BIN, mqtt_publish('devices/dev1/telemetry', '{"t":1}')))
     .write(1, mq).write(1, frame(BIN, mqtt_connect('w2')) + frame(BIN, mqtt_subscribe('devices/#')))
     .durable().write(0, frame(BIN, mqtt_publish('devices/dev1/telemetry', '{"t":2}', pid=2)[:6]))
     .reset(0).durable())
save('live_feed', T,
     In(0).write(0, upgrade('/ws/live?api_key=key1'))
     .write(0, frame(TEXT, '{"subscribe":{"devices":["*"],"presence":true}}'))
     .write(1, dev).write(1, frame(TEXT, '{"temp":3,"seq":1}')).durable()
     .write(2, upgrade('/ws/live')).write(2, frame(TEXT, '{"auth":"key1"}')).reset(1).fin(0))
save('live_feed_deaf', T,
     In(8).write(0, upgrade('/ws/live?api_key=key1'))
     .write(0, frame(TEXT, '{"subscribe":{"devices":["*"]}}')).deaf(0)
     .write(1, dev).write(1, ''.join(frame(TEXT, '{"temp":%d}' % i).decode('latin1') for i in range(40)))
     .write(1, ''.join(frame(TEXT, '{"hum":%d}' % i).decode('latin1') for i in range(40)))
     .durable().deaf(0).reset(0))
save('echo_deflate', T,
     In(2).write(0, upgrade('/ws/echo', 'Sec-WebSocket-Extensions: permessage-deflate\r\n'))
     .write(0, frame(TEXT, 'x' * 300)).write(0, frame(BIN, 'y' * 200, fin=False))
     .write(0, frame(0, 'z' * 10)).reset(0))
save('seam_upgrade_reply', T,
     In(2).seam(1).write(0, upgrade('/ws/echo')).seam(2).write(1, upgrade('/ws/echo') + frame(TEXT, 'hi').decode('latin1'))
     .write(1, frame(TEXT, 'again')).seam(0, 100, 3).write(2, dev).write(2, frame(TEXT, '{"temp":4,"seq":9}'))
     .asyncop().durable())
save('deadlines', T,
     In(0x22).write(0, upgrade('/ws/device')).write(2, dev).wait(40)
     .write(1, upgrade('/ws/echo')).write(1, frame(TEXT, 'hi')).wait(70)
     .write(2, frame(10, 'pong')).wait(40))
save('refused_upgrades', T,
     In(0).write(0, upgrade('/mqtt')).write(1, upgrade('/ws/device?device=dev1&token=bad'))
     .write(2, upgrade('/ws/live?api_key=nope')).write(0, 'GET /other HTTP/1.1\r\nHost: g\r\n\r\n'))
save('close_handshake_then_data', T,
     In(2).write(0, upgrade('/ws/echo') + frame(CLOSE, b'\x03\xe8').decode('latin1') + frame(TEXT, 'late').decode('latin1'))
     .write(1, upgrade('/ws/echo')).write(1, frame(TEXT, '\xff\xfe')).write(1, frame(TEXT, 'after')))

# ---------------- mqtt_conn: the new ops ----------------
T = 'mqtt_conn'
c1 = mqtt_connect('m1', 'dev1', 'tok1').decode('latin1')
c2 = mqtt_connect('m2', 'app1', 'tok2').decode('latin1')
pub = mqtt_publish('devices/dev1/telemetry', '{"t":1}').decode('latin1')
save('seam_connack', T, In(0).seam(1).write(0, c1).write(1, c2).seam(0).write(2, c1))
save('seam_probability', T,
     In(0).seam(0, 80, 11).write(1, c2 + mqtt_subscribe('devices/#').decode('latin1'))
     .write(0, c1 + pub).durable().write(0, pub).durable().write(2, c2).durable())
save('reset_right_after_connect', T,
     In(0).write(0, c1, reset=True).write(1, c1 + pub, reset=True).durable())
save('reset_mid_packet_with_ack_pending', T,
     In(0).write(0, c1).write(0, pub).write(0, pub[:4]).reset(0).durable())
big = mqtt_publish('devices/dev1/telemetry', '{"t":"%s"}' % ('x' * 200), qos=0).decode('latin1')
c3 = mqtt_connect('m3', 'app1', 'tok2').decode('latin1')
save('deaf_subscriber', T,
     In(0x20).write(1, c2 + mqtt_subscribe('devices/#').decode('latin1'), deaf=True)
     .write(2, c3 + mqtt_subscribe('devices/+/telemetry').decode('latin1'), deaf=True)
     .write(0, c1 + big * 32).durable().seam(2).write(0, pub).durable().deaf(1).fin(1)
     .deaf(2).reset(2))

save('auth_deadline', T, In(0x40).write(0, c1[:5]).wait(40).write(1, c1).wait(40))
# two members of a shared subscription, one deaf then reset with messages in flight (they
# go to the other), the other unsubscribing from its group (the group goes with it)
shared = mqtt_subscribe('$share/g/devices/#').decode('latin1')
unsub = (bytes([0xa2]) + remlen(4 + len('$share/g/devices/#')) + struct.pack('>H', 3)
         + struct.pack('>H', len('$share/g/devices/#')) + b'$share/g/devices/#').decode('latin1')
save('shared_members', T,
     In(0x02).write(1, c2 + shared, deaf=True).write(2, c3 + shared)
     .write(0, c1 + pub * 6).durable().reset(1).write(0, pub * 2).durable()
     .write(2, unsub).write(0, pub).durable().fin(2))

# ---------------- found by the fuzzer ----------------
# A Connection: close reply larger than the socket buffers: the close waits for the send
# queue (conn_close_after_write keeps why in c->x->close_why), and once it drains on_write
# calls conn_close(c, c->x->close_why), which frees c->x->close_why before it copies why from
# it (heap-use-after-free in gateway/conn.c; fuzz_http_conn found it in a streamed
# HTTP/1.0 reply, whose end is such a close).
save('crash-close_after_write_why', 'http_conn',
     In(2).deaf(0).write(0, get('/t/close?n=60000')).deaf(0))
