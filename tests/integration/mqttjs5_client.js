// tests/integration/mqttjs5_client.js: MQTT.js (npm "mqtt") in MQTT 5 mode over WebSocket
// against Gale's /mqtt, driven by test_mqtt5_clients.py. A responder subscribes to
// req/<n> (Subscription Identifier 7); a requester (topic alias maximum 4) publishes a
// request with Response Topic, Correlation Data, User Properties and Content Type, twice
// with a topic alias; the responder answers on the Response Topic with the Correlation
// Data. Prints one JSON line with what each side saw.
// usage: node mqttjs5_client.js <ws url> <name>
const mqtt = require("mqtt");
const [url, name] = process.argv.slice(2);
const out = { connected: 0, requests: [], responses: [], connack: null };
const timer = setTimeout(() => finish("timeout"), 15000);
let responder, requester;

function finish(why) {
  clearTimeout(timer);
  out.end = why;
  console.log(JSON.stringify(out));
  for (const c of [responder, requester]) if (c) c.end(true);
  setTimeout(() => process.exit(0), 500);
}

const opts = (id) => ({ clientId: id, protocolVersion: 5, reconnectPeriod: 0,
                        connectTimeout: 10000, properties: { sessionExpiryInterval: 0 } });
responder = mqtt.connect(url, opts(name + "-resp"));
responder.on("error", (e) => { out.error = String(e); finish("error"); });
responder.on("message", (topic, payload, packet) => {
  const p = packet.properties || {};
  out.requests.push({ topic, payload: payload.toString(), responseTopic: p.responseTopic,
                      correlation: p.correlationData && p.correlationData.toString(),
                      user: p.userProperties, contentType: p.contentType,
                      subid: p.subscriptionIdentifier });
  responder.publish(p.responseTopic, "pong:" + payload.toString(),
                    { qos: 1, properties: { correlationData: p.correlationData } });
});
responder.on("connect", () => {
  out.connected++;
  responder.subscribe(`req/${name}`, { qos: 1, properties: { subscriptionIdentifier: 7 } },
                      (err) => {
    if (err) { out.error = String(err); return finish("suberr"); }
    requester = mqtt.connect(url, Object.assign(opts(name + "-req"),
                                               { properties: { topicAliasMaximum: 4 } }));
    requester.on("error", (e) => { out.error = String(e); finish("error"); });
    requester.on("message", (topic, payload, packet) => {
      const p = packet.properties || {};
      out.responses.push({ topic, payload: payload.toString(),
                           correlation: p.correlationData && p.correlationData.toString() });
      if (out.responses.length === 2) finish("done");
    });
    requester.on("connect", (connack) => {
      out.connected++;
      out.connack = connack.properties || {};
      requester.subscribe(`resp/${name}`, { qos: 1 }, (err2) => {
        if (err2) { out.error = String(err2); return finish("suberr"); }
        for (const i of [1, 2]) {
          requester.publish(`req/${name}`, "ping" + i, { qos: 1, properties: {
            responseTopic: `resp/${name}`, correlationData: Buffer.from("corr-" + i),
            userProperties: { a: "b" }, contentType: "text/plain", topicAlias: 1 } });
        }
      });
    });
  });
});
