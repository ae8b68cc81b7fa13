// tests/integration/mqttjs_client.js: MQTT.js (npm "mqtt") over WebSocket against
// Gale's /mqtt, driven by test_ws_mqttjs.py. Subscribes at QoS 2, publishes one
// message at each QoS 0/1/2 (plus a 100 kB one), waits for all of them to come
// back and prints one JSON line: {"connected":..,"granted":[..],"got":[[topic,qos,len]..]}.
// usage: node mqttjs_client.js <ws url> <device id> <token>
const mqtt = require("mqtt");
const [url, dev, token] = process.argv.slice(2);
const out = { connected: false, granted: [], published: [], got: [] };
const topic = `devices/${dev}/telemetry`;
const want = 4;
const timer = setTimeout(() => finish("timeout"), 15000);

function finish(why) {
  clearTimeout(timer);
  out.end = why;
  console.log(JSON.stringify(out));
  client.end(true, () => process.exit(0));
  setTimeout(() => process.exit(0), 1000);
}

const client = mqtt.connect(url, {
  username: dev, password: token, clientId: dev + "-js", protocolVersion: 4,
  reconnectPeriod: 0, connectTimeout: 10000,
});
client.on("error", (e) => { out.error = String(e); finish("error"); });
function check() {
  if (out.got.length === want && out.published.length === want) finish("done");
}
client.on("message", (t, payload, packet) => {
  if (t !== topic) return; // e.g. the retained devices/<id>/status
  out.got.push([t, packet.qos, payload.length]);
  check();
});
client.on("connect", () => {
  out.connected = true;
  client.subscribe(`devices/${dev}/#`, { qos: 2 }, (err, granted) => {
    if (err) { out.error = String(err); return finish("suberr"); }
    out.granted = granted.map((g) => g.qos);
    const big = JSON.stringify({ blob: "z".repeat(100000) });
    const msgs = [[0, '{"temp":10}'], [1, '{"temp":11}'], [2, '{"temp":12}'], [1, big]];
    for (const [qos, body] of msgs) {
      client.publish(topic, body, { qos }, (e) => {
        out.published.push(e ? String(e) : qos);
        check();
      });
    }
  });
});
