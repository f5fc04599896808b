// Refusals as typed PianoErrors: a wrong password, a full room, a ban (the kicked client sees
// close 4003, its next join BANNED with the time left), and moderation and settings calls by
// someone not allowed or with a bad value. Run by tests/sdk.rs against each target.
import assert from "node:assert/strict";
import { guest, rejectsWith, unique, until } from "./util.mjs";

const room = unique("sdk-doors");
const password = "open sesame";
const owner = await guest("Owner");
await owner.join(room, { settings: { maxPlayers: 2, password, visible: false } });
assert.equal(owner.ownership?.ownerId, owner.you.id, "the creator holds the crown");
assert.equal(owner.settings?.hasPassword, true);

// Wrong password.
const guessing = await guest("Guesser");
const wrong = await rejectsWith(guessing.join(room, { password: "sesame?" }), "WRONG_PASSWORD", "joinFailed");
assert.match(wrong.message, /password/i);
assert.equal(guessing.status, "closed", "a refused join closes its socket");

// The second seat, then a full room.
const second = await guest("Second");
await second.join(room, { password });
await until("the owner sees the second player", () => owner.participants.size === 2);
const third = await guest("Third");
await rejectsWith(third.join(room, { password }), "ROOM_FULL", "joinFailed");

// Not the owner: moderation and settings are refused, typed.
await rejectsWith(second.kick(owner.you.id), "NOT_ALLOWED", "error");
await rejectsWith(second.updateSettings({ maxPlayers: 5 }), "NOT_ALLOWED", "error");
// The owner with a bad value, or naming nobody.
await rejectsWith(owner.updateSettings({ maxPlayers: 0 }), "INVALID_VALUE", "error");
await rejectsWith(owner.kick("no-such-participant"), "NOT_FOUND", "error");
// A good one succeeds and everyone sees it.
const changed = second.next("settingsChanged", (s) => s.settings?.maxPlayers === 3);
await owner.updateSettings({ maxPlayers: 3 });
await changed;

// The owner bans Second for a minute: Second's connection closes 4003 (typed), its next join
// is BANNED with the time left.
const kicked = second.next("status", (s) => s === "kicked");
const kickedMsg = second.next("kicked");
await owner.ban(second.you.id, 60_000);
const [, , code] = await kicked;
assert.equal(code, 4003);
const [{ bannedUntil }] = await kickedMsg;
assert.ok(bannedUntil > 0n, "the kick says until when");
await until("Second is gone", () => !owner.participants.has(second.you.id));
const banned = await rejectsWith(second.join(room, { password }), "BANNED", "joinFailed");
assert.ok(banned.retryAfterMs > 0 && banned.retryAfterMs <= 60_000, `ban ends in ${banned.retryAfterMs} ms`);

// Unbanned, Second gets back in; the crown moves to it.
await owner.unban(second.you.userId);
await second.join(room, { password });
const crowned = second.next("ownerChanged", (o) => o.ownership?.ownerId === second.you.id);
await owner.transferCrown(second.you.id);
await crowned;
// The owner's calls now fail: it no longer holds the crown.
await rejectsWith(owner.kick(second.you.id), "NOT_ALLOWED", "error");

for (const c of [owner, second, third, guessing]) c.close();
console.log("ok: WRONG_PASSWORD, ROOM_FULL, NOT_ALLOWED, INVALID_VALUE, NOT_FOUND, KICKED 4003, BANNED typed");
