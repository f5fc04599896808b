// Browser test: a dropped connection resumes without anyone noticing (docs/resume.md). Alice and
// Bob are in a room; Bob's socket drops (a close that is not a goodbye) and stays down while
// Alice plays and Bob plays and chats; then Bob's page reconnects and resumes. Run by the Rust
// e2e harness (tests/basics.rs):
//   node tests/web/resume.mjs <base url> <screenshot dir>
// Exits non-zero with a message on the first failed check.
import { launchChromium, openPlayer, pressKey } from "./chromium.mjs";
import { mkdirSync } from "node:fs";
import assert from "node:assert/strict";

const [base, shots] = process.argv.slice(2);
mkdirSync(shots, { recursive: true });
const room = `resume-${Date.now() % 1e9}`;
const errors = [];
const browser = await launchChromium();
const player = (name) => openPlayer(browser, { base, room, name, errors });
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const read = (page) => page.evaluate(() => {
  const p = window.__piano;
  return {
    status: p.status, joins: p.joins, resumes: p.resumes, presence: p.presence,
    participants: [...p.participants.keys()], chat: p.chat.map((c) => c.text),
    scheduled: p.scheduled, missed: p.missed,
  };
});

let alice, bob;
try {
  alice = await player("Alice");
  bob = await player("Bob");
  await alice.waitForFunction(() => window.__piano.participants.size === 2, null, { timeout: 10000 });
  await bob.waitForFunction(() => window.__piano.participants.size === 2, null, { timeout: 10000 });
  const aliceId = await alice.evaluate(() => window.__piano.you.id);
  const bobId = await bob.evaluate(() => window.__piano.you.id);
  const alicePresence = (await read(alice)).presence.length;

  // A chat line just before the drop: the room has it, but Bob's page may not have heard it
  // acknowledged yet; after the resume it must not arrive twice.
  await bob.fill("#chat-input", "bob before the drop");
  await bob.press("#chat-input", "Enter");
  await alice.locator("#chat-log", { hasText: "bob before the drop" }).waitFor({ timeout: 10000 });

  // Bob's socket drops and his page stays off the network until told.
  await bob.evaluate(() => window.__pianoDrop(120_000));
  await bob.waitForFunction(() => window.__piano.status === "reconnecting", null, { timeout: 10000 });
  await bob.locator("#status.reconnecting", { hasText: "reconnecting…" }).waitFor({ timeout: 5000 });
  const droppedAt = Date.now();
  await bob.screenshot({ path: `${shots}/reconnecting.png` });

  // Meanwhile Alice plays D, E, F; Bob plays G and writes a line (his page keeps both).
  for (const note of [62, 64, 65]) {
    await pressKey(alice, note);
    await sleep(60);
  }
  await pressKey(bob, 67);
  await bob.fill("#chat-input", "bob while down");
  await bob.press("#chat-input", "Enter");
  // Alice's last batch leaves within BATCH_MS; then stay down long enough that her notes are
  // past when they come back (the pages drop note-ons over 500 ms late), well within the test
  // targets' grace (RESUME_GRACE_MS=5000).
  await sleep(1500);
  const during = await read(alice);
  assert.ok(during.participants.includes(bobId), "Alice still lists Bob while his socket is down");
  assert.equal((await read(bob)).status, "reconnecting", "Bob's page stayed down while held");

  // Bob's page reconnects and resumes.
  await bob.evaluate(() => window.__pianoReconnect());
  await bob.waitForFunction(() => window.__piano.status === "open", null, { timeout: 15000 });
  await bob.locator("#status.open", { hasText: "connected" }).waitFor({ timeout: 5000 });
  const downMs = Date.now() - droppedAt;

  // Bob's page got Alice's notes from the drop, replayed: over a second old, so not played
  // (none of them late, in a rush), but received.
  const played = (s, from, notes) => s.filter((e) => e.from === from && notes.includes(e.note)).map((e) => e.note);
  await bob.waitForFunction(
    (id) => [62, 64, 65].every((n) => window.__piano.missed.some((m) => m.from === id && m.note === n)),
    aliceId, { timeout: 10000 },
  );
  for (const m of (await read(bob)).missed) {
    assert.ok(m.at < m.receivedAt - 500, `only notes past by over 500 ms are dropped: ${JSON.stringify(m)}`);
  }
  let b = await read(bob);
  assert.equal(b.resumes.length, 1, `one resume: ${JSON.stringify(b.resumes)}`);
  assert.equal(b.resumes[0].complete, true, "the room replayed everything Bob missed");
  // Her notes went out in a batch or more (BATCH_MS); what else happened while Bob was down
  // (nothing in this room) would be replayed too.
  assert.ok(b.resumes[0].replayed >= 1, `Alice's batches replayed: ${b.resumes[0].replayed}`);
  assert.equal(b.joins, 1, "Bob's page never joined again");
  assert.deepEqual(played(b.scheduled, aliceId, [62, 64, 65]), [], "past notes are not played late");
  assert.deepEqual(b.presence, [], "Bob's page saw nobody leave or arrive");

  // Alice's page got what Bob sent while down, once: his G (past, not played) and his line.
  await alice.waitForFunction((id) => window.__piano.missed.some((m) => m.from === id && m.note === 67), bobId, { timeout: 10000 });
  await alice.locator("#chat-log", { hasText: "bob while down" }).waitFor({ timeout: 10000 });
  const count = (chat, text) => chat.filter((t) => t === text).length;
  let a = await read(alice);
  assert.equal(count(a.chat, "bob while down"), 1, "Bob's line from the drop arrives once");
  assert.equal(count(a.chat, "bob before the drop"), 1, "Bob's line from before the drop is not repeated");
  assert.deepEqual(played(a.scheduled, bobId, [67]), [], "Bob's past note is not played late");
  assert.deepEqual(a.presence.slice(alicePresence), [], "Alice's page never saw Bob leave or rejoin");
  assert.ok(a.participants.includes(bobId), "Alice still lists Bob");

  // Live again: Alice's next note plays on Bob's page, Bob's line reaches Alice.
  await pressKey(alice, 69);
  await bob.waitForFunction((id) => window.__piano.scheduled.some((s) => s.from === id && s.note === 69), aliceId, { timeout: 10000 });
  await bob.fill("#chat-input", "bob is back");
  await bob.press("#chat-input", "Enter");
  await alice.locator("#chat-log", { hasText: "bob is back" }).waitFor({ timeout: 10000 });
  b = await read(bob);
  assert.equal(count(b.chat, "bob while down"), 1, "Bob's page shows his line from the drop once");
  a = await read(alice);
  assert.deepEqual(a.presence.slice(alicePresence), [], "still no leave or arrival on Alice's page");
  await bob.screenshot({ path: `${shots}/resumed.png` });

  // A resume the room refuses (a token it does not know, as after it lost the place): Bob's
  // page is told so and joins afresh. (The same user's new connection joins the participant
  // his suspended one still holds, so here too Alice sees nobody leave.)
  await bob.evaluate(() => window.__pianoDrop(0, true));
  await bob.waitForFunction(() => window.__piano.joins === 2 && window.__piano.status === "open", null, { timeout: 15000 });
  b = await read(bob);
  assert.equal(b.resumes.length, 1, "a refused resume is not counted as one");
  assert.ok(b.participants.includes(bobId) && b.participants.includes(aliceId), `Bob's page lists both: ${b.participants}`);
  await bob.fill("#chat-input", "bob joined again");
  await bob.press("#chat-input", "Enter");
  await alice.locator("#chat-log", { hasText: "bob joined again" }).waitFor({ timeout: 10000 });

  assert.deepEqual(errors, [], `no page errors: ${errors.join("; ")}`);
  console.log(`resume: ok (Bob was down ${downMs} ms; ${b.resumes[0].replayed} messages replayed; a refused resume joined afresh)`);
} catch (e) {
  console.error(`page errors so far: ${errors.join("; ") || "none"}`);
  // What each page knew is usually the reason a wait timed out.
  for (const [name, page] of [["Alice", alice], ["Bob", bob]]) {
    if (page) console.error(`${name}'s page: ${JSON.stringify(await read(page).catch((x) => String(x)))}`);
  }
  throw e;
} finally {
  await browser.close();
}
