// The README's example bot (sdk/examples/bot.mjs), run as its own process: it joins, plays its
// phrase, answers !ping with pong and !play with the phrase again, and !bye makes it leave and
// exit 0. An SDK client in the room checks each. Run by tests/sdk.rs.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { base, guest, unique, until } from "./util.mjs";

const room = unique("sdk-bot");
const listener = await guest("Listener");
await listener.join(room, { settings: { visible: false } });

const notes = [];
listener.on("notes", (batch) => {
  for (const e of batch.events) if (e.kind.case === "noteOn") notes.push({ from: batch.senderId, note: e.kind.value.note });
});
const said = [];
listener.on("chat", (m) => said.push(m));

const script = fileURLToPath(new URL("../examples/bot.mjs", import.meta.url));
const bot = spawn(process.execPath, [script, base, room], { stdio: ["ignore", "inherit", "inherit"] });
const exited = new Promise((resolve) => bot.on("exit", (code, signal) => resolve({ code, signal })));
try {
  const botId = await until("the bot joins", () => [...listener.participants.values()].find((p) => p.name === "PhraseBot")?.id);
  const phrase = [60, 64, 67, 72];
  const played = () => notes.filter((n) => n.from === botId).map((n) => n.note);
  await until("the bot's phrase", () => played().length >= 4);
  assert.deepEqual(played(), phrase);

  await listener.chat("!ping");
  await until("pong", () => said.some((m) => m.participantId === botId && m.text === "pong"));
  await listener.chat("!play");
  await until("the phrase again", () => played().length >= 8);
  assert.deepEqual(played(), [...phrase, ...phrase]);

  const gone = listener.next("participantLeft", (l) => l.participantId === botId);
  await listener.chat("!bye");
  await gone;
  const { code, signal } = await Promise.race([exited, new Promise((r) => setTimeout(() => r({ code: "still running" }), 10_000))]);
  assert.equal(code, 0, `the bot exits by itself, cleanly (signal ${signal})`);
  assert.ok(said.some((m) => m.participantId === botId && m.text === "bye"));
} finally {
  if (bot.exitCode === null) bot.kill();
  listener.close();
}
console.log("ok: the bot joined, played its phrase, answered !ping and !play, and left on !bye");
