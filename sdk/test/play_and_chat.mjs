// Two SDK clients in one room: notes from one arrive at the other batched, with the sender's
// timing and local playback times from the scheduler; chat both ways; a refused chat is a typed
// error. Run by tests/sdk.rs against each target.
import assert from "node:assert/strict";
import { PROTOCOL_VERSION, PianoError } from "@pianorhythm/sdk";
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
// Each client's clock offset as it stood at each note played or batch scheduled: the only thing
// that can move a note off the phrase's timing is a change of one of them (a ping with a
// shorter round trip replaces the estimate, more often on a busy machine).
const offsets = { alice: [], bob: [] };
bob.on("notes", (batch, scheduled) => {
  offsets.bob.push(bob.clock.offset);
  batches.push({ batch, scheduled });
});
const events = () => batches.flatMap((b) => b.scheduled.events);
const from = alice.you.id;

// Batching: a chord played in one go (no timer can fire in between) leaves as one batch.
for (const note of [48, 52, 55]) alice.sendNote(true, note, 70);
for (const note of [48, 52, 55]) alice.sendNote(false, note);
await until("Bob gets the chord", () => events().length >= 6);
assert.equal(batches.length, 1, `the chord's 6 events came in ${batches.length} batches`);
assert.equal(batches[0].batch.events.length, 6);
batches.length = 0;

// A short phrase: four notes, 40 ms apart, each released 30 ms later. Alice notes when she
// played each on the server clock as her client estimates it.
const phrase = [60, 64, 67, 72];
const playedAt = [];
for (const note of phrase) {
  playedAt.push(alice.clock.serverNow());
  offsets.alice.push(alice.clock.offset);
  alice.sendNote(true, note, 90);
  await sleep(30);
  alice.sendNote(false, note);
  await sleep(10);
}
await until("Bob gets the phrase", () => events().filter((e) => e.event.kind.case === "noteOff").length >= phrase.length);

assert.ok(batches.every((b) => b.batch.senderId === from && b.scheduled.from === from), "stamped with Alice's id");
const ons = events().filter((e) => e.event.kind.case === "noteOn");
assert.deepEqual(ons.map((e) => e.event.kind.value.note), phrase, "the notes in order");
assert.ok(ons.every((e) => e.event.kind.value.velocity === 90));
// The scheduler keeps the phrase's timing: Bob's playback times are Alice's playing times on
// the server clock, shifted by one constant (his clock offset and the buffer), within the
// millisecond rounding of the batch time and delays and however much either offset estimate
// moved meanwhile.
offsets.bob.push(bob.clock.offset);
const spread = (xs) => Math.max(...xs) - Math.min(...xs);
const slack = 3 + spread(offsets.alice) + spread(offsets.bob);
const shift = ons[0].at - playedAt[0];
for (let i = 1; i < ons.length; i++) {
  const drift = ons[i].at - playedAt[i] - shift;
  assert.ok(Math.abs(drift) <= slack, `note ${i} is ${drift} ms off the phrase's timing (slack ${slack})`);
}
// And that constant is the buffer: the batch's server time, through Bob's offset, plus 250 ms.
const err = ons[0].at - (bob.clock.toLocal(playedAt[0]) + bob.scheduler.latencyMs);
assert.ok(Math.abs(err) <= slack, `first note ${err} ms off the buffer's time (slack ${slack})`);
// Clock sync: Alice and Bob run on one machine's clock, so their estimates of the server's
// offset agree within the error bound of each (half its best round trip), plus 5 ms for an event
// loop busy with other trials (a noised offset of 20 ms still fails on a local server).
const apart = Math.abs(alice.clock.offset - bob.clock.offset);
assert.ok(apart <= (alice.clock.rtt + bob.clock.rtt) / 2 + 5, `offsets ${apart} ms apart (round trips ${alice.clock.rtt}, ${bob.clock.rtt})`);

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
console.log(`ok: a chord in one batch, a phrase in ${batches.length} batches with its timing, chat both ways, typed refusal`);
