// The SDK in a browser: the built package (sdk/dist, with @bufbuild/protobuf) bundled for the
// page by esbuild, then two PianoClients in Debian's Chromium use the browser's own WebSocket
// and fetch against the server: join, notes with their schedule, chat, a typed refusal, the
// directory. Run by tests/sdk.rs (one browser at a time).
import assert from "node:assert/strict";
import { build } from "esbuild";
import { fileURLToPath } from "node:url";
import { launchChromium } from "../../tests/web/chromium.mjs";
import { base, unique } from "./util.mjs";

const bundle = await build({
  entryPoints: [fileURLToPath(new URL("../dist/index.js", import.meta.url))],
  bundle: true,
  format: "iife",
  globalName: "PianoSDK",
  platform: "browser",
  target: "es2022",
  write: false,
  logLevel: "warning",
});
const room = unique("sdk-browser");
const browser = await launchChromium();
try {
  // Any page of the server's origin: the clients use its base URL.
  const page = await (await browser.newContext({ bypassCSP: true })).newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(`${base}/api/version`);
  await page.addScriptTag({ content: bundle.outputFiles[0].text });
  const result = await page.evaluate(async (room) => {
    const { connect, PianoError } = globalThis.PianoSDK;
    // No WebSocket option: the browser's global one.
    const a = await connect({ url: location.origin, guestName: "PageAnn" });
    const b = await connect({ url: location.origin, guestName: "PageBen" });
    await a.join(room, { settings: { visible: true } });
    await b.join(room);
    const rooms = await b.subscribeRooms();
    const notes = b.next("notes");
    a.sendNote(true, 60, 90);
    a.sendNote(false, 60);
    const [batch, scheduled] = await notes;
    const heard = a.next("chat", (m) => m.text === "hi from the page");
    await b.chat("hi from the page");
    await heard;
    let refused;
    try {
      await b.kick(a.you.id);
    } catch (e) {
      refused = { typed: e instanceof PianoError, code: e.code, kind: e.kind };
    }
    // The directory may take a moment to count Ben.
    if (rooms.get(room)?.players !== 2) await b.next("rooms", (r) => r.get(room)?.players === 2);
    const listed = rooms.get(room)?.players;
    a.close();
    b.close();
    return {
      events: batch.events.map((e) => e.kind.case),
      fromAnn: scheduled.from === a.you.id,
      at: scheduled.events.map((e) => typeof e.at === "number" && Number.isFinite(e.at)),
      refused,
      listed,
      userAgent: navigator.userAgent,
    };
  }, room);
  assert.deepEqual(result.events, ["noteOn", "noteOff"]);
  assert.ok(result.fromAnn, "stamped with Ann's id");
  assert.deepEqual(result.at, [true, true], "scheduled at local times");
  assert.deepEqual(result.refused, { typed: true, code: "NOT_ALLOWED", kind: "error" });
  assert.equal(result.listed, 2, "the directory lists the room with both");
  assert.deepEqual(errors, []);
  console.log(`ok: the SDK ran in ${result.userAgent.match(/Chrom\w*\/[\d.]+/)?.[0] ?? "the browser"}`);
} finally {
  await browser.close();
}
