// Following the directory with the SDK: a client subscribed to the live room list sees a room
// appear when another client creates it, its player count follow joins and leaves, and the room
// leave the list when it empties; GET /api/rooms (listRooms) agrees. Run by tests/sdk.rs.
import assert from "node:assert/strict";
import { listRooms } from "@pianorhythm/sdk";
import { base, guest, unique, until } from "./util.mjs";

const home = unique("sdk-watch");
const room = unique("sdk-listed");
const watcher = await guest("Watcher");
// A private room of its own: the subscription needs a socket, not a listing.
await watcher.join(home, { settings: { visible: false } });
const initial = await watcher.subscribeRooms();
assert.ok(!initial.has(room), "not listed before anyone is in it");
assert.ok(!initial.has(home), "a private room is not listed");

// The room's player count at every `rooms` event (0: not listed), repeats collapsed. On the
// cluster, updates may merge (1 → 0 without a step) or come late, so the sequence itself is not
// fixed: what is checked is that it stays within what happened and ends where it should.
const counts = [];
watcher.on("rooms", (rooms) => {
  const n = rooms.get(room)?.players ?? 0;
  if (counts.at(-1) !== n) counts.push(n);
});

const ann = await guest("Ann");
await ann.join(room, { settings: { visible: true, maxPlayers: 7 } });
await until("the room appears with one player", () => watcher.rooms.get(room)?.players === 1);
const summary = watcher.rooms.get(room);
assert.equal(summary.capacity, 7);
assert.equal(summary.ownerName, "Ann");
assert.equal(summary.locked, false);

const ben = await guest("Ben");
await ben.join(room);
await until("two players", () => watcher.rooms.get(room)?.players === 2);
// The REST directory lists it too (cached up to 2 s).
const listed = await until("GET /api/rooms lists it", async () => (await listRooms(base)).find((r) => r.name === room && r.players === 2), 15_000);
assert.equal(listed.capacity, 7);

ann.close();
await until("back to one player", () => watcher.rooms.get(room)?.players === 1);
ben.close();
await until("the emptied room leaves the list", () => !watcher.rooms.has(room));
// Taken now (nothing runs between the wait and here): the last count is the list's state.
const seen = [...counts];
assert.ok(seen.every((n) => n === 0 || n === 1 || n === 2), `player counts seen: ${seen}`);
assert.ok(seen.includes(1) && seen.includes(2), `the counts followed the joins: ${seen}`);
assert.equal(seen.at(-1), 0, `the counts end with the room gone: ${seen}`);

watcher.unsubscribeRooms();
watcher.close();
console.log(`ok: the room came, counted ${counts.join(" → ")} players and went`);
