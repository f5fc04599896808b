// Reconnect and resume with the SDK: Alice's socket drops (as a network failure would: no
// goodbye); while it is down she plays and chats, and Bob chats. Back within the grace period,
// she resumes: Bob never sees her leave, gets her notes and her message once, and she gets his;
// her chat call, made while down, resolves. Run by tests/sdk.rs against each target.
import assert from "node:assert/strict";
import { guest, sleep, unique, until } from "./util.mjs";

const room = unique("sdk-resume");
const alice = await guest("Alice");
const bob = await guest("Bob");
await alice.join(room, { settings: { visible: false } });
await bob.join(room);
await until("both in", () => alice.participants.size === 2);

const presence = [];
bob.on("participantJoined", (p) => presence.push(`+${p.participant?.name}`));
bob.on("participantLeft", (p) => presence.push(`-${p.participantId}`));
const bobNotes = [];
bob.on("notes", (b) => bobNotes.push(...b.events.filter((e) => e.kind.case === "noteOn").map((e) => e.kind.value.note)));
const bobChat = [];
bob.on("chat", (m) => bobChat.push(m.text));
const aliceChat = [];
alice.on("chat", (m) => aliceChat.push(m.text));
const resumed = alice.next("resumed", () => true, 20_000);

// Down for a while (the SDK would reconnect at once; the test holds it).
const statuses = [];
alice.on("status", (s) => statuses.push(s));
alice.conn.simulateDrop(60_000);
await until("Alice knows she is reconnecting", () => alice.status === "reconnecting");
alice.sendNote(true, 61, 70);
alice.sendNote(false, 61);
alice.flush();
const sent = alice.chat("typed while offline");
await bob.chat("said while Alice was away");
await sleep(500);
assert.equal(bobNotes.length, 0, "nothing left Alice while she was down");
assert.ok(alice.conn.unackedCount >= 2, "her batch and chat are kept for re-sending");

alice.conn.reconnectNow();
const [r] = await resumed;
assert.equal(r.complete, true, "resumed with everything replayed");
await sent;
await until("Bob gets Alice's note and message", () => bobNotes.length >= 1 && bobChat.includes("typed while offline"));
await until("Alice gets what Bob said meanwhile", () => aliceChat.includes("said while Alice was away"));
await sleep(500);
assert.deepEqual(bobNotes, [61], "her note arrived once");
assert.equal(bobChat.filter((t) => t === "typed while offline").length, 1, "her message arrived once");
assert.deepEqual(presence, [], "Bob never saw her leave or come back");
assert.equal(alice.status, "open");
assert.ok(statuses.includes("reconnecting"));
await until("acknowledged", () => alice.conn.unackedCount === 0);

alice.close();
bob.close();
console.log("ok: resumed after a drop, nothing lost, nothing twice, nobody saw it");
