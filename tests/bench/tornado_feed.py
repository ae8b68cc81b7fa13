#!/usr/bin/python3
"""tests/bench/tornado_feed.py: the Tornado 6 side of the live-feed benchmark.

A broadcast server written the way Tornado's documentation and chat demo do it,
speaking the same wire format as Gale so one client (bench_feed) measures both:
  /ws/device  ingest: each text message {"t":...} (Gale's telemetry JSON) is decoded,
              turned into Gale's live-feed shape
              {"type":"telemetry","device":..,"seq":..,"points":[{"key":..,"ts":..,"value":..}]},
              encoded ONCE with json.dumps, and written to every subscribed viewer
              with write_message (Tornado frames it per connection);
  /ws/live    viewers: ?api_key= checked, {"subscribe":{}} answered
              {"type":"subscribed"}, then updates as they arrive.
No storage, no filters, no byte budget: strictly less work per message than Gale.
Compression is off (Tornado's default), as in the Gale run (the client offers none).

    /usr/bin/python3 tests/bench/tornado_feed.py --port 0 --api-key KEY
prints "listening port=<n>" once ready. Debian's python3-tornado (6.2)."""
import argparse
import json
import time

import tornado.ioloop
import tornado.web
import tornado.websocket

viewers = set()
seq = 0


class Device(tornado.websocket.WebSocketHandler):
    def on_message(self, message):
        global seq
        try:
            obj = json.loads(message)
        except ValueError:
            self.write_message('{"error":"bad json","code":"bad_json"}')
            return
        seq += 1
        now = int(time.time() * 1000)
        pts = [{"key": k, "ts": now, "value": v} for k, v in obj.items() if k != "seq"]
        frame = json.dumps({"type": "telemetry", "device": "bench", "seq": seq, "points": pts},
                           separators=(",", ":"))
        for v in list(viewers):
            try:
                v.write_message(frame)
            except tornado.websocket.WebSocketClosedError:
                viewers.discard(v)


class Live(tornado.websocket.WebSocketHandler):
    def open(self):
        if self.get_argument("api_key", "") != self.application.settings["api_key"]:
            self.close(1008, "unauthorized")

    def on_message(self, message):
        try:
            obj = json.loads(message)
        except ValueError:
            return
        if "subscribe" in obj:
            viewers.add(self)
            self.write_message('{"type":"subscribed"}')

    def on_close(self):
        viewers.discard(self)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--api-key", default="")
    a = ap.parse_args()
    app = tornado.web.Application([(r"/ws/device", Device), (r"/ws/live", Live)],
                                  api_key=a.api_key, websocket_max_message_size=1 << 20)
    sockets = tornado.netutil.bind_sockets(a.port, "127.0.0.1", backlog=2048)
    server = tornado.httpserver.HTTPServer(app)
    server.add_sockets(sockets)
    print("listening port=%d" % sockets[0].getsockname()[1], flush=True)
    tornado.ioloop.IOLoop.current().start()


if __name__ == "__main__":
    import tornado.httpserver
    import tornado.netutil
    main()
