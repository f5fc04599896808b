// Two SDK clients in one room: notes from one arrive at the other batched, with the sender's
// timing and local playback times from the scheduler; chat both ways; a refused chat is a typed
// error. Run by tests/sdk.rs against each target.
import assert from "node:assert/strict";
import { BATCH_MS, PROTOCOL_VERSION, PianoError } from "@pianorhythm/sdk";
import { guest, rejectsWith, sleep, unique, until } from "./util.mjs";

const room = unique("sdk-play");
const alice = await guest("Alice");
const bob = await guest("Bob");

const joined = await alice.join(room, { settings: { visible: false } });
assert.equal(joined.room, room);
assert.equal(alice.serverProtocolVersion, PROTOCOL_VERSION, "the server speaks the SDK's protocol version");
await bob.join(room);
await until("Alice sees Bob", () => alice.participants.size === 2);
assert.deepEqual([...bob.participants.values()].map((p) => p.name), ["Alice", "Bob"]);
// The clock is synced by the connection's pings (a burst at connect).
await until("clock samples", () => alice.clock.sampleCount >= 3 && bob.clock.sampleCount >= 3);

const batches = [];
bob.on("notes", (batch, scheduled) => batches.push({ batch, scheduled }));

// A short phrase: four notes, 40 ms apart, each released 30 ms later.
const phrase = [60, 64, 67, 72];
const started = Date.now();
for (const note of phrase) {
  alice.sendNote(true, note, 90);
  await sleep(30);
  alice.sendNote(false, note);
  await sleep(10);
}
const events = () => batches.flatMap((b) => b.scheduled.events);
await until("Bob gets the phrase", () => events().filter((e) => e.event.kind.case === "noteOff").length >= phrase.length);

const from = alice.you.id;
assert.ok(batches.every((b) => b.batch.senderId === from && b.scheduled.from === from), "stamped with Alice's id");
const ons = events().filter((e) => e.event.kind.case === "noteOn");
assert.deepEqual(ons.map((e) => e.event.kind.value.note), phrase, "the notes in order");
assert.ok(ons.every((e) => e.event.kind.value.velocity === 90));
// Batched: eight events in fewer batches than events (one per BATCH_MS at most while playing).
assert.ok(batches.length < events().length, `${events().length} events came in ${batches.length} batches`);
assert.ok(batches.length <= Math.ceil((Date.now() - started) / BATCH_MS) + 1, `${batches.length} batches`);
// The scheduler: playback times keep the phrase's timing (40 ms between onsets, within the
// millisecond rounding and timer slack) and lie a fixed buffer after Alice played.
for (let i = 1; i < ons.length; i++) {
  const gap = ons[i].at - ons[i - 1].at;
  assert.ok(gap >= 30 && gap <= 200, `onset gap ${gap} ms`);
}
for (const { scheduled } of batches) {
  for (const e of scheduled.events) {
    assert.equal(e.late, false);
    assert.ok(e.at >= scheduled.receivedAt - 100 && e.at <= scheduled.receivedAt + 2000, `scheduled ${e.at - scheduled.receivedAt} ms after arrival`);
  }
}
// Both clocks estimate the same server clock (on this machine), so the first note plays the
// buffer after Alice pressed it, within the estimates' error.
const first = ons[0].at;
assert.ok(Math.abs(first - (started + bob.scheduler.latencyMs)) < 100, `first note at +${first - started} ms, buffer ${bob.scheduler.latencyMs} ms`);

// Chat both ways; the sender's call resolves once the room took it.
const aliceHears = alice.next("chat", (m) => m.text === "hello from Bob");
await bob.chat("hello from Bob");
const [heard] = await aliceHears;
assert.equal(heard.name, "Bob");
assert.equal(heard.participantId, bob.you.id);
const bobHears = bob.next("chat", (m) => m.text === "hi Bob");
await alice.chat("hi Bob");
await bobHears;
assert.ok(alice.chatLog.some((m) => m.text === "hello from Bob"));

// A refused call is a typed error (and the connection carries on).
const e = await rejectsWith(alice.chat("   "), "INVALID_VALUE", "error");
assert.ok(e instanceof PianoError);
await alice.chat("still here");

// Bob leaves: Alice sees him go.
const left = alice.next("participantLeft");
bob.close();
const [{ participantId }] = await left;
assert.equal(participantId, bob.you.id);
alice.close();
console.log(`ok: ${events().length} note events in ${batches.length} batches, chat both ways, typed refusal`);
