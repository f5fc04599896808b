// A bot in a dozen lines: joins a room, plays a phrase, answers chat commands.
//   node sdk/examples/bot.mjs <server url> <room>
// !ping → "pong", !play → the phrase again, !bye → leaves (the process ends).
import { connect } from "@pianorhythm/sdk";
import WebSocket from "ws"; // Node 20 has no global WebSocket; browsers and Node 22+ need no option

const [url = "http://127.0.0.1:8787", room = "lobby"] = process.argv.slice(2);
const bot = await connect({ url, guestName: "PhraseBot" }, { WebSocket });
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const phrase = async () => {
  for (const note of [60, 64, 67, 72]) {
    bot.sendNote(true, note, 80);
    await sleep(120);
    bot.sendNote(false, note);
  }
};
bot.on("chat", async (m) => {
  if (m.participantId === bot.you?.id) return;
  try {
    if (m.text === "!ping") await bot.chat("pong");
    if (m.text === "!play") await phrase();
    if (m.text === "!bye") await bot.chat("bye").finally(() => bot.close());
  } catch (err) {
    // A refused chat (RATE_LIMITED, MUTED) is no reason to stop: an unhandled rejection would end Node.
    console.error(`bot: ${err.code ?? ""} ${err.message}`);
  }
});
await bot.join(room);
await phrase();
