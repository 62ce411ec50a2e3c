// Sends notifications to the Herald APNs emulator with node-apn (@parse/node-apn), a
// third-party APNs client, changed only in host, port and CA. Prints a JSON summary.
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";

const require = createRequire(import.meta.url);
const apn = require("@parse/node-apn");

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`missing environment variable ${name}`);
  return value;
};

const provider = new apn.Provider({
  token: { key: env("APN_KEY_PATH"), keyId: env("APN_KEY_ID"), teamId: env("APN_TEAM_ID") },
  address: env("APN_HOST"),
  port: Number(env("APN_PORT")),
  ca: [readFileSync(env("APN_CA_PATH"))],
  production: true,
});

const count = Number(process.env.APN_COUNT ?? "50");
const tokens = [];
for (let i = 0; i < count; i++) tokens.push(i.toString(16).padStart(2, "0").repeat(32));

const note = new apn.Notification();
note.topic = env("APN_TOPIC");
note.alert = "Hello from node-apn";
note.badge = 1;
note.pushType = "alert";

const unregistered = process.env.APN_UNREGISTERED;
const all = unregistered ? [...tokens, unregistered] : tokens;
const result = await provider.send(note, all);
provider.shutdown();
console.log(JSON.stringify({
  sent: result.sent.length,
  failed: result.failed.map((f) => ({ device: f.device, status: f.status, reason: f.response?.reason, error: f.error?.message })),
}));
