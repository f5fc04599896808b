// The SDK's parts that need no server (node --test sdk/test/unit.test.mjs; run by scripts/test
// after the build): URLs, error mapping, the scheduler's arithmetic, the clock estimate, the version.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { create } from "@bufbuild/protobuf";
import {
  Clock,
  ErrorCode,
  ErrorSchema,
  JoinFailedSchema,
  JoinFailure,
  NoteBatchSchema,
  PROTOCOL_VERSION,
  PianoError,
  Scheduler,
  roomSocketUrl,
  apiUrl,
} from "@pianorhythm/sdk";

test("room socket URLs for either scheme, with a path prefix and a room to escape", () => {
  assert.equal(roomSocketUrl("http://127.0.0.1:8787", "lobby"), "ws://127.0.0.1:8787/api/rooms/lobby/ws");
  assert.equal(roomSocketUrl("https://piano.example/", "a b"), "wss://piano.example/api/rooms/a%20b/ws");
  assert.equal(roomSocketUrl("https://piano.example/play/", "x"), "wss://piano.example/play/api/rooms/x/ws");
  assert.equal(apiUrl("https://piano.example/play", "api/rooms"), "https://piano.example/play/api/rooms");
});

test("refusals map to named codes", () => {
  const full = PianoError.fromJoinFailed(create(JoinFailedSchema, { reason: JoinFailure.ROOM_FULL, message: "full" }));
  assert.deepEqual([full.code, full.kind, full.message], ["ROOM_FULL", "joinFailed", "full"]);
  const banned = PianoError.fromJoinFailed(create(JoinFailedSchema, { reason: JoinFailure.BANNED, retryAfterMs: 5000n }));
  assert.deepEqual([banned.code, banned.retryAfterMs], ["BANNED", 5000]);
  const muted = PianoError.fromError(create(ErrorSchema, { code: ErrorCode.MUTED, message: "muted" }));
  assert.deepEqual([muted.code, muted.kind], ["MUTED", "error"]);
  const kicked = PianoError.fromClose(4003, "bye");
  assert.deepEqual([kicked.code, kicked.kind, kicked.status], ["KICKED", "close", 4003]);
  assert.equal(PianoError.fromClose(4999).code, "CLOSED");
  assert.ok(kicked instanceof Error);
});

test("the scheduler plays each event at batch time − offset + buffer + delay; past note-ons are late", () => {
  const clock = new Clock();
  clock.offset = 1000; // the server's clock is a second ahead of ours
  const s = new Scheduler(clock, 250, 500);
  const batch = create(NoteBatchSchema, {
    time: 101_000n,
    senderId: "p1",
    events: [
      { delay: 0, kind: { case: "noteOn", value: { note: 60, velocity: 90 } } },
      { delay: 40, kind: { case: "noteOff", value: { note: 60 } } },
    ],
  });
  const live = s.schedule(batch, 100_100);
  assert.deepEqual(live.events.map((e) => [e.at, e.late]), [[100_250, false], [100_290, false]]);
  assert.equal(live.from, "p1");
  // Arriving two seconds later (a replay): the note-on is skipped, the release still applies.
  const replay = s.schedule(batch, 102_100);
  assert.deepEqual(replay.events.map((e) => e.late), [true, false]);
});

test("the clock keeps the sample with the fastest round trip", () => {
  const clock = new Clock();
  const now = Date.now();
  clock.pong(now - 100, now + 5000); // slow sample: offset ≈ 5050
  clock.pong(now - 2, now + 3001); // fast sample: offset ≈ 3002
  assert.ok(Math.abs(clock.offset - 3002) <= 2, `offset ${clock.offset}`);
  assert.ok(clock.rtt <= 3);
  assert.equal(clock.sampleCount, 2);
});

test("the package's major version is the protocol version", () => {
  const pkg = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8"));
  assert.equal(Number(pkg.version.split(".")[0]), PROTOCOL_VERSION);
});
