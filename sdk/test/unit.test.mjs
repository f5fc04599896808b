// The SDK's parts that need no server (node --test sdk/test/unit.test.mjs; run by scripts/test
// after the build): URLs, error mapping, the scheduler's arithmetic, the clock estimate, the version.
import { mock, test } from "node:test";
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
  guestToken,
  listRooms,
  MAX_AHEAD_MS,
  Connection,
  ServerMessageSchema,
} from "@pianorhythm/sdk";
import { toBinary } from "@bufbuild/protobuf";

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

test("the clock ignores a Pong from the future, an absurd one and NaN", () => {
  const clock = new Clock();
  const now = Date.now();
  clock.pong(now - 10, now + 1000); // a real sample: offset ≈ 1005
  clock.pong(now + 5000, now + 99_000); // negative round trip: would always win
  clock.pong(now - 120_000, now + 99_000); // two minutes: no clock sample
  clock.pong(NaN, now);
  clock.pong(now - 1, NaN);
  assert.equal(clock.sampleCount, 1);
  assert.ok(Math.abs(clock.offset - 1005) <= 2, `offset ${clock.offset}`);
  assert.ok(clock.rtt >= 0);
});

test("the scheduler waits at most MAX_AHEAD_MS, however far ahead a batch is stamped", (t) => {
  t.mock.timers.enable({ apis: ["setTimeout", "Date"], now: 1_000_000 });
  const clock = new Clock();
  const s = new Scheduler(clock, 250, 500);
  // 2^32 ms ahead: past setTimeout's range (a real one would fire at once).
  const batch = create(NoteBatchSchema, { time: BigInt(1_000_000 + 2 ** 32), events: [{ delay: 0, kind: { case: "noteOn", value: { note: 60, velocity: 90 } } }] });
  const played = [];
  s.play(s.schedule(batch), (e) => played.push(e));
  t.mock.timers.tick(MAX_AHEAD_MS - 1);
  assert.equal(played.length, 0, "not before the cap");
  t.mock.timers.tick(1);
  assert.equal(played.length, 1, "played at the cap");
});

const response = (status, json) => ({ ok: status >= 200 && status < 300, status, json: async () => json() });

test("REST: a 2xx without a JSON body is a typed HTTP_ERROR; an error body keeps its code", async () => {
  const notJson = async () => response(200, () => JSON.parse("<html>"));
  const e = await guestToken("http://x", "Ann", notJson).then(() => null, (err) => err);
  assert.ok(e instanceof PianoError, `${e}`);
  assert.deepEqual([e.code, e.kind, e.status], ["HTTP_ERROR", "http", 200]);
  const refused = async () => response(429, () => ({ error: { code: "RATE_LIMITED", message: "slow down" } }));
  const r = await listRooms("http://x", refused).then(() => null, (err) => err);
  assert.deepEqual([r.code, r.status], ["RATE_LIMITED", 429]);
  const fine = async (_url, init) => {
    assert.ok(init.signal instanceof AbortSignal, "a signal bounds the fetch");
    return response(200, () => [{ name: "lobby" }]);
  };
  assert.deepEqual(await listRooms("http://x", fine), [{ name: "lobby" }]);
});

test("REST: no answer in time is a TIMEOUT, even from a fetch that ignores its signal", async () => {
  const never = () => new Promise(() => {});
  const e = await guestToken("http://x", "Ann", never, 50).then(() => null, (err) => err);
  assert.deepEqual([e?.code, e?.kind], ["TIMEOUT", "timeout"]);
  // A body that never ends is bounded too.
  const slowBody = async () => ({ ok: true, status: 200, json: () => new Promise(() => {}) });
  const b = await listRooms("http://x", slowBody, 50).then(() => null, (err) => err);
  assert.equal(b?.code, "TIMEOUT");
});

// A WebSocket that opens when told and never answers: a half-open connection.
class FakeSocket {
  static all = [];
  readyState = 0;
  closedWith;
  sent = 0;
  constructor(url, protocols) {
    this.url = url;
    this.protocols = protocols;
    FakeSocket.all.push(this);
  }
  open() {
    this.readyState = 1;
    this.onopen?.({});
  }
  send() {
    this.sent++;
  }
  close(code) {
    this.closedWith ??= code;
    this.readyState = 3;
  }
}
const settle = async () => {
  for (let i = 0; i < 10; i++) await Promise.resolve();
};
const join = { case: "join", value: { password: "" } };

test("a socket with no Pong for 20 s is dropped as 4000 and replaced", async (t) => {
  t.mock.timers.enable({ apis: ["setTimeout", "setInterval", "Date"], now: 1_000_000 });
  FakeSocket.all = [];
  const statuses = [];
  const conn = new Connection(() => {}, (s, _d, code) => statuses.push([s, code]));
  conn.connect({ url: "http://x", room: "r", token: async () => "t", join, WebSocket: FakeSocket });
  await settle();
  FakeSocket.all[0].open();
  assert.equal(conn.currentStatus, "open");
  t.mock.timers.tick(19_000);
  assert.equal(FakeSocket.all[0].closedWith, undefined, "still waiting for a Pong");
  t.mock.timers.tick(2_000);
  assert.equal(FakeSocket.all[0].closedWith, 4000, "dropped, not a goodbye");
  assert.deepEqual(statuses.at(-1), ["closed", 4000], "said at once, without waiting for the close");
  t.mock.timers.tick(500);
  await settle();
  assert.equal(FakeSocket.all.length, 2, "a new socket");
  conn.close();
});

test("a replaced socket's late frames and close touch nothing of the new one", async (t) => {
  t.mock.timers.enable({ apis: ["setTimeout", "setInterval", "Date"], now: 1_000_000 });
  FakeSocket.all = [];
  const seen = [];
  const conn = new Connection((m) => seen.push(m.case), () => {});
  conn.connect({ url: "http://x", room: "r", token: async () => "t", join, WebSocket: FakeSocket });
  await settle();
  FakeSocket.all[0].open();
  t.mock.timers.tick(21_000); // no Pong: dropped, and after the backoff a new socket
  t.mock.timers.tick(500);
  await settle();
  const [old, current] = FakeSocket.all;
  current.open();
  const pong = toBinary(ServerMessageSchema, create(ServerMessageSchema, {
    seq: 99n,
    msg: { case: "pong", value: { clientTime: Date.now() - 2, serverTime: BigInt(Date.now() + 50_000) } },
  }));
  old.onmessage({ data: pong.buffer.slice(pong.byteOffset, pong.byteOffset + pong.byteLength) });
  assert.equal(conn.clock.sampleCount, 0, "the old socket's Pong is no clock sample");
  assert.deepEqual(seen, [], "nor a message");
  old.onclose({ code: 1006, reason: "" });
  const before = current.sent;
  t.mock.timers.tick(10_000);
  assert.ok(current.sent > before, "the new socket still pings");
  assert.equal(conn.currentStatus, "open");
  conn.close();
});

test("a token callback that fails or never returns is a status and a retry, not a crash or a hang", async (t) => {
  t.mock.timers.enable({ apis: ["setTimeout", "setInterval", "Date"], now: 1_000_000 });
  FakeSocket.all = [];
  const statuses = [];
  const conn = new Connection(() => {}, (s, d) => statuses.push([s, d]));
  let calls = 0;
  const token = () => (++calls === 1 ? Promise.reject(new Error("guest POST failed")) : calls === 2 ? new Promise(() => {}) : Promise.resolve("t"));
  conn.connect({ url: "http://x", room: "r", token, join, WebSocket: FakeSocket, timeoutMs: 1000 });
  await settle();
  assert.deepEqual(statuses.at(-1), ["closed", "no token: guest POST failed"]);
  t.mock.timers.tick(500);
  await settle();
  assert.equal(calls, 2);
  t.mock.timers.tick(1000);
  await settle();
  assert.match(statuses.at(-1)[1], /^no token: no answer within 1000 ms/);
  t.mock.timers.tick(1000);
  await settle();
  assert.equal(calls, 3);
  assert.equal(FakeSocket.all.length, 1, "the third call's token opens a socket");
  conn.close();
});

test("the package's major version is the protocol version", () => {
  const pkg = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8"));
  assert.equal(Number(pkg.version.split(".")[0]), PROTOCOL_VERSION);
});
