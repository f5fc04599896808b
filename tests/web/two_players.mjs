// Browser test: two people play together in Debian's Chromium, driven by playwright-core (no
// browser download), then with a Multiplayer Piano client (mpp-client-net on /mpp). Run by the Rust e2e harness (tests/basics.rs) against each target:
//   node tests/web/two_players.mjs <base url> <screenshot dir>
// Exits non-zero with a message on the first failed check. Writes desktop and phone screenshots.
import { launchChromium, openPlayer } from "./chromium.mjs";
import { mkdirSync } from "node:fs";
import assert from "node:assert/strict";
import { createRequire } from "node:module";

// An MPP client from npm (written independently of this server; pinned in package.json).
const { Client: MppClient } = createRequire(import.meta.url)("mpp-client-net");

const [base, shots] = process.argv.slice(2);
mkdirSync(shots, { recursive: true });
const room = `browser-${Date.now() % 1e9}`;
const errors = [];

const browser = await launchChromium();

const player = (name, viewport = undefined, password = null) =>
  openPlayer(browser, { base, room, name, errors, viewport, password });

try {
  const alice = await player("Alice");
  const bob = await player("Bob");
  await alice.waitForFunction(() => window.__piano.participants.size === 2, null, { timeout: 10000 });
  const aliceId = await alice.evaluate(() => window.__piano.you.id);
  const aliceColor = await alice.evaluate(() => window.__piano.you.color);

  // Alice presses middle C with the mouse: Bob's page schedules it and lights the key in her colour.
  const key = alice.locator('.key[data-note="60"]');
  await key.scrollIntoViewIfNeeded();
  const box = await key.boundingBox();
  await alice.mouse.move(box.x + box.width / 2, box.y + box.height * 0.8);
  await alice.mouse.down();
  await bob.waitForFunction((id) => window.__piano.scheduled.some((s) => s.note === 60 && s.from === id), aliceId, { timeout: 10000 });
  const lit = bob.locator('.key[data-note="60"]');
  await bob.waitForFunction(() => document.querySelector('.key[data-note="60"]')?.dataset.litBy, null, { timeout: 5000 });
  assert.equal(await lit.getAttribute("data-lit-by"), aliceId);
  const bg = await lit.evaluate((e) => e.style.background);
  const hex = aliceColor.slice(1).match(/../g).map((h) => parseInt(h, 16)).join(", ");
  assert.equal(bg, `rgb(${hex})`, "lit in Alice's colour");
  const scheduled = await bob.evaluate((id) => window.__piano.scheduled.find((s) => s.from === id), aliceId);
  console.log(`Bob's page got the note and scheduled it ${(scheduled.at - scheduled.receivedAt).toFixed(1)} ms ahead`);
  await alice.mouse.up();
  await bob.waitForFunction(() => !document.querySelector('.key[data-note="60"]')?.dataset.litBy, null, { timeout: 5000 });

  // A chat message round-trips.
  await alice.fill("#chat-input", "hello from Alice");
  await alice.press("#chat-input", "Enter");
  await bob.locator("#chat-log", { hasText: "hello from Alice" }).waitFor({ timeout: 10000 });

  // The room list shows the room with 2 players.
  await alice.waitForFunction((r) => window.__piano.rooms.get(r)?.players === 2, room, { timeout: 10000 });
  const row = alice.locator("#rooms .room", { hasText: room });
  assert.match(await row.innerText(), /2\/20/);

  // Bob's connection drops: he reconnects by himself and is back in the room (resumed, or
  // joined afresh where the room does not resume; tests/web/resume.mjs is about resuming).
  const bobId = await bob.evaluate(() => window.__piano.you.id);
  const before = await bob.evaluate(() => window.__piano.joins + window.__piano.resumes.length);
  await bob.evaluate(() => window.__pianoDrop());
  await bob.waitForFunction((n) => window.__piano.joins + window.__piano.resumes.length > n, before, { timeout: 15000 });
  await bob.waitForFunction(() => window.__piano.status === "open" && window.__piano.participants.size === 2, null, { timeout: 15000 });
  await alice.waitForFunction((id) => window.__piano.participants.has(id), bobId, { timeout: 10000 });

  await alice.screenshot({ path: `${shots}/room-desktop.png` });
  const carolName = `carol-${Date.now() % 1e6}`;
  const carol = await player(carolName, { width: 390, height: 844 }, "carol's password");
  await carol.waitForFunction(() => window.__piano.participants.size === 3, null, { timeout: 10000 });
  const carolIs = await carol.evaluate(() => [window.__piano.you.userId, window.__piano.you.roles]);
  assert.deepEqual(carolIs, [`user:${carolName}`, ["member"]], "Carol signed up as a member");
  // Her session is in cookies: the page keeps neither token in storage, and reads only the CSRF one.
  const kept = await carol.evaluate(() => [JSON.parse(localStorage.getItem("piano.session")), document.cookie]);
  assert.deepEqual(Object.keys(kept[0]).sort(), ["expires", "member", "name"], "a member's stored session holds no token");
  assert.match(kept[1], /(^|; )piano_csrf=/, "the CSRF cookie is readable");
  assert.doesNotMatch(kept[1], /piano_refresh/, "the refresh cookie is not");
  await carol.screenshot({ path: `${shots}/room-phone.png`, fullPage: true });

  // An MPP client joins the room on /mpp: the pages list it like anyone else, hear its notes
  // (MPP's c3 is MIDI 60) in its colour, and it hears theirs and reads their chat.
  const mpp = new MppClient(base.replace(/^http/, "ws") + "/mpp");
  const mppHeard = [];
  const mppChat = [];
  mpp.on("n", (msg) => mppHeard.push(msg));
  mpp.on("a", (msg) => mppChat.push(msg.a));
  mpp.on("hi", () => mpp.setName("Mpp Bot"));
  mpp.setChannel(room);
  mpp.start();
  try {
    const until = async (what, check, ms = 15000) => {
      const end = Date.now() + ms;
      while (!check()) {
        if (Date.now() > end) throw new Error(`MPP client: ${what} within ${ms} ms`);
        await new Promise((r) => setTimeout(r, 50));
      }
    };
    await until("in the room", () => mpp.channel?._id === room && mpp.getOwnParticipant()?._id);
    const mppId = mpp.getOwnParticipant()._id;
    await alice.waitForFunction((id) => window.__piano.participants.get(id)?.name === "Mpp Bot", mppId, { timeout: 15000 });
    await alice.locator("#participants", { hasText: "Mpp Bot" }).waitFor({ timeout: 10000 });
    mpp.startNote("c3", 0.8);
    await alice.waitForFunction((id) => window.__piano.scheduled.some((s) => s.note === 60 && s.from === id), mppId, { timeout: 10000 });
    await alice.waitForFunction((id) => document.querySelector('.key[data-note="60"]')?.dataset.litBy === id, mppId, { timeout: 5000 });
    mpp.stopNote("c3");
    const bobKey = bob.locator('.key[data-note="64"]');
    await bobKey.scrollIntoViewIfNeeded();
    const kb = await bobKey.boundingBox();
    await bob.mouse.move(kb.x + kb.width / 2, kb.y + kb.height * 0.8);
    await bob.mouse.down();
    await until("heard Bob's e3", () => mppHeard.some((m) => m.n.some((n) => n.n === "e3" && !n.s)));
    await bob.mouse.up();
    await bob.fill("#chat-input", "hello MPP");
    await bob.press("#chat-input", "Enter");
    await until("read Bob's chat", () => mppChat.includes("hello MPP"));
    await alice.screenshot({ path: `${shots}/room-with-mpp.png` });
  } finally {
    mpp.stop();
  }

  assert.deepEqual(errors, [], `no page errors: ${errors.join("; ")}`);
  console.log(`browser: ok (screenshots in ${shots})`);
} catch (e) {
  // What the pages said is usually the reason a wait timed out.
  console.error(`page errors so far: ${errors.join("; ") || "none"}`);
  throw e;
} finally {
  await browser.close();
}
