// The connection to a room: the WebSocket speaking the protobuf protocol (types generated from
// proto/), clock sync with the server, note batching, and reconnecting after a drop: within the
// room's grace period the new socket resumes the same place (docs/resume.md §5), and what the
// room may not have got is sent again. The one copy of this logic: the browser client and the
// SDK's `PianoClient` both drive it. No DOM: it runs in browsers and in Node (with a WebSocket
// implementation passed in where there is no global one).

import { create, fromBinary, toBinary, type MessageInitShape } from "@bufbuild/protobuf";
import {
  ClientMessageSchema,
  ErrorCode,
  NoteBatchSchema,
  NoteEventSchema,
  ServerMessageSchema,
  type Joined,
  type NoteEvent,
  type ServerMessage,
} from "./gen/pianorhythm/v1/room_pb.js";
import { Clock, CLOCK_SAMPLES } from "./clock.js";
import { Unacked, type ClientMsg, type Kept } from "./unacked.js";
import type { WebSocketConstructor, WebSocketLike } from "./socket.js";

export type { ClientMsg };
export type ServerMsg = ServerMessage["msg"];

/** How often outgoing notes are flushed as one batch (the protocol wants batches). */
export const BATCH_MS = 150;
const MAX_EVENTS = 300;
/** Bytes read between pings that tell the server this client reads (`backlog::ACK_EVERY_BYTES`,
 * at most one per `ACK_MIN_INTERVAL_MS`, within the ping budget): a Room object cannot see a
 * socket's backlog, and skips note batches for a client sent half a MiB without a word back. */
const ACK_EVERY_BYTES = 128 * 1024;
const ACK_MIN_INTERVAL_MS = 250;

/** Close codes the room uses (README "Close codes"). */
export const Close = {
  /** Persistent abuse: kept sending over its budgets. */
  POLICY_VIOLATION: 1008,
  /** The token or session ended (logout, revocation, expiry): get a new token first. */
  SESSION_ENDED: 4001,
  /** The user's roles changed: a fresh token carries the new ones. */
  IDENTITY_CHANGED: 4002,
  KICKED: 4003,
  /** This user (or network) already holds the most sockets allowed in the room. */
  TOO_MANY_CONNECTIONS: 4004,
  /** A Resume on a newer socket took this one over: that one carries on, this one must not. */
  RESUMED_ELSEWHERE: 4005,
  /** What `simulateDrop` closes with: not a goodbye (1000/1001), so the room keeps the place. */
  SIMULATED_DROP: 4000,
} as const;

/** Closes after which the room has let the player go (or never will take them back): a new
 * socket joins afresh instead of resuming. */
const NOT_RESUMABLE: readonly number[] = [
  1000, Close.POLICY_VIOLATION, Close.SESSION_ENDED, Close.IDENTITY_CHANGED, Close.KICKED,
  Close.TOO_MANY_CONNECTIONS,
];

/** "reconnecting": the socket is down (or back but not resumed yet) and the room keeps our
 * place: nothing about the room changed as far as the page should show. */
export type Status = "connecting" | "open" | "reconnecting" | "closed" | "kicked" | "refused";

export interface ConnectOptions {
  /** The server's base URL (`https://host`, `http://127.0.0.1:8787`): either host. */
  url: string;
  room: string;
  /** A valid token at each (re)connect: members' access tokens are short-lived. `renew` asks
   * for a new one even if the current one looks valid (the server ended it, or roles changed). */
  token: (renew?: boolean) => Promise<string | undefined>;
  /** What to send as the Join (password, create settings). */
  join: ClientMsg;
  /** The WebSocket implementation (default `globalThis.WebSocket`; Node 20 has none: pass `ws`). */
  WebSocket?: WebSocketConstructor;
  /** How long the token callback, a Resume or the Join after a failed resume may take before
   * the attempt counts as failed (default 10 s). */
  timeoutMs?: number;
}

/** A Pong due this long after a ping (2× the steady ping interval): a socket without one is
 * half-open and dropped (code 4000: the room keeps the place). */
const PONG_TIMEOUT_MS = 20_000;
/** The most a server-given `retryAfterMs` is waited (a bigger one would overflow setTimeout). */
export const MAX_RETRY_AFTER_MS = 300_000;

/** `p`, or a rejection after `ms` (the callback may never return). */
function within<T>(p: Promise<T>, ms: number): Promise<T> {
  let timer: Timer | undefined;
  const t = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms);
  });
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}

/** The room's WebSocket URL for a server base URL (http→ws, https→wss). */
export function roomSocketUrl(base: string, room: string): string {
  const u = new URL(base);
  u.protocol = u.protocol === "https:" || u.protocol === "wss:" ? "wss:" : "ws:";
  u.pathname = `${u.pathname.replace(/\/$/, "")}/api/rooms/${encodeURIComponent(room)}/ws`;
  u.search = "";
  u.hash = "";
  return u.toString();
}

type Timer = ReturnType<typeof setTimeout>;
const OPEN = 1;

export { Clock };

export class Connection {
  readonly clock = new Clock();
  private ws?: WebSocketLike;
  private opts?: ConnectOptions;
  private retry = 0;
  /** Refusals in a row (4004, 1008): each makes the next try wait longer. */
  private refusals = 0;
  /** The server ended our token: the next connect asks for a new one. */
  private renew = false;
  private closedByUs = false;
  private pingTimer?: Timer;
  /** When the oldest ping still without a Pong went out (0: none outstanding). */
  private pingUnansweredSince = 0;
  /** A Resume or re-Join not answered in time drops the socket. */
  private answerTimer?: Timer;
  private resumeRetryTimer?: Timer;
  /** Ends the current socket as a drop (4000), at once, even if its close never comes. */
  private dropCurrent?: (reason: string) => void;
  private readSinceSend = 0;
  private lastSend = 0;
  private batch: { start: number; events: NoteEvent[] } | null = null;
  private flushTimer?: Timer;
  private reconnectTimer?: Timer;
  /** simulateDrop's hold: no reconnect before this (local ms). */
  private holdUntil = 0;
  /** The socket simulateDrop closed: its close is ours, whatever code the server echoes. */
  private dropping?: WebSocketLike;
  private status: Status = "closed";
  /** Joined or resumed on the current socket: numbered messages may go out. */
  private live = false;
  /** A Resume was sent on the current socket and not answered yet. */
  private resuming = false;
  /** The highest ServerMessage.seq received: where a resume starts. */
  private lastSeq = 0n;
  /** The latest resume token (spent when used; each Joined and Resumed brings one). */
  private resumeToken = "";
  private graceMs = 0;
  /** When the last live socket dropped (local ms): a resume after the grace is pointless. */
  private droppedAt = 0;
  /** Note batches and chat, numbered, until the room acknowledges them. */
  private unacked = new Unacked();

  constructor(
    private onMessage: (msg: ServerMsg) => void,
    /** `code`: the close code when the status comes from a closed socket. */
    private onStatus: (status: Status, detail?: string, code?: number) => void,
  ) {}

  connect(opts: ConnectOptions): void {
    this.close();
    this.opts = opts;
    this.closedByUs = false;
    // Another room (or the same one afresh): nothing of the last place carries over.
    this.forgetPlace();
    this.unacked.clear();
    void this.open();
  }

  private setStatus(status: Status, detail?: string, code?: number): void {
    this.status = status;
    this.onStatus(status, detail, code);
  }

  /** The current status (as last reported to `onStatus`). */
  get currentStatus(): Status {
    return this.status;
  }

  /** Note batches and chat sent but not acknowledged yet (docs/resume.md §5). */
  get unackedCount(): number {
    return this.unacked.length;
  }

  /** The room still keeps our place (as far as we can tell): resume rather than join. */
  private canResume(): boolean {
    return !!this.resumeToken && Date.now() - this.droppedAt < this.graceMs;
  }

  private forgetPlace(): void {
    this.resumeToken = "";
    this.lastSeq = 0n;
  }

  private async open(): Promise<void> {
    const opts = this.opts;
    if (!opts) return;
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = undefined;
    if (!this.canResume()) this.setStatus("connecting");
    let token: string | undefined;
    try {
      token = await within(opts.token(this.renew), opts.timeoutMs ?? 10_000);
    } catch (e) {
      // A failed or hung token call (a guest-token POST during a reconnect): retry with backoff.
      if (this.opts !== opts || this.closedByUs) return;
      this.setStatus(this.canResume() ? "reconnecting" : "closed", `no token: ${e instanceof Error ? e.message : String(e)}`);
      if (this.opts !== opts || this.closedByUs) return;
      this.reconnectTimer = setTimeout(() => this.opts === opts && !this.closedByUs && void this.open(),
        Math.min(8000, 500 * 2 ** this.retry++));
      return;
    }
    this.renew = false;
    if (this.opts !== opts || this.closedByUs) return;
    if (!token) {
      this.setStatus("closed", "signed out");
      return;
    }
    const Impl = opts.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!Impl) {
      this.setStatus("closed", "no WebSocket implementation: pass one (e.g. the ws package)");
      return;
    }
    // Browsers cannot set headers on a WebSocket: the token travels as a subprotocol entry.
    const ws = new Impl(roomSocketUrl(opts.url, opts.room), ["pianorhythm.v1", `bearer.${token}`]);
    ws.binaryType = "arraybuffer";
    // Without a listener some implementations (ws) throw on a failed connect; close follows.
    ws.onerror = () => {};
    this.ws = ws;
    let ended = false;
    ws.onopen = () => {
      this.refusals = 0;
      this.live = false;
      this.resuming = this.canResume();
      if (this.resuming) this.sendResume();
      else {
        this.forgetPlace();
        this.setStatus("open");
        this.send(opts.join);
      }
      this.startPings();
    };
    ws.onmessage = (ev) => {
      // A replaced socket's late frames must not touch the new one's state.
      if (this.ws !== ws) return;
      const data = ev.data;
      let bytes: Uint8Array;
      if (data instanceof ArrayBuffer) bytes = new Uint8Array(data);
      else if (ArrayBuffer.isView(data)) bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
      else return;
      this.readSinceSend += bytes.byteLength;
      if (this.readSinceSend >= ACK_EVERY_BYTES && Date.now() - this.lastSend >= ACK_MIN_INTERVAL_MS) {
        this.send({ case: "ping", value: { clientTime: Date.now() } });
      }
      let sm: ServerMessage;
      try {
        sm = fromBinary(ServerMessageSchema, bytes);
      } catch {
        return;
      }
      if (sm.seq > this.lastSeq) this.lastSeq = sm.seq;
      this.received(sm.msg, opts);
    };
    // Once per socket: from its close, or from dropCurrent when it is half-open.
    const end = (code: number, reason: string) => {
      if (ended || this.ws !== ws) return;
      ended = true;
      this.stopTimers();
      const wasLive = this.live;
      this.live = false;
      this.resuming = false;
      if (wasLive) this.droppedAt = Date.now();
      if (this.dropping === ws) code = Close.SIMULATED_DROP;
      if (NOT_RESUMABLE.includes(code)) this.forgetPlace();
      if (code === Close.KICKED) {
        this.setStatus("kicked", reason, code);
        return;
      }
      if (code === Close.RESUMED_ELSEWHERE) {
        // Our place went on with another socket: coming back would take it away again.
        this.forgetPlace();
        this.setStatus("closed", "continued on another connection", code);
        return;
      }
      let delay: number;
      if (code === Close.TOO_MANY_CONNECTIONS || code === Close.POLICY_VIOLATION) {
        // Refused: say why and come back much later (30 s, doubling to 5 min), never hammer.
        this.setStatus("refused", code === Close.TOO_MANY_CONNECTIONS
          ? "too many open connections to this room: close another tab"
          : "disconnected for sending too fast", code);
        delay = Math.min(300_000, 30_000 * 2 ** this.refusals++);
      } else {
        if (this.canResume()) this.setStatus("reconnecting", undefined, code);
        else this.setStatus("closed", reason, code);
        if (code === Close.SESSION_ENDED || code === Close.IDENTITY_CHANGED) this.renew = true;
        // A socket that was in the room comes back at once (its place is kept for the grace
        // period); then with backoff: 0.5 s, 1 s, 2 s, … up to 8 s.
        if (wasLive) this.retry = 0;
        delay = wasLive ? 0 : Math.min(8000, 500 * 2 ** this.retry++);
      }
      delay = Math.max(delay, this.holdUntil - Date.now());
      if (!this.closedByUs) {
        this.reconnectTimer = setTimeout(() => this.ws === ws && void this.open(), delay);
      }
    };
    ws.onclose = (ev) => end(ev.code, ev.reason);
    this.dropCurrent = (reason) => {
      if (this.ws !== ws) return;
      this.dropping = ws;
      try {
        ws.close(Close.SIMULATED_DROP, reason);
      } catch {
        // Already closing: end() below is what counts.
      }
      end(Close.SIMULATED_DROP, reason);
    };
  }

  private stopTimers(): void {
    clearInterval(this.pingTimer);
    clearTimeout(this.answerTimer);
    clearTimeout(this.resumeRetryTimer);
    this.pingTimer = this.answerTimer = this.resumeRetryTimer = undefined;
  }

  /** A Resume or a re-Join went out: no answer in time counts as a drop. */
  private awaitAnswer(what: string): void {
    clearTimeout(this.answerTimer);
    const drop = this.dropCurrent;
    this.answerTimer = setTimeout(() => drop?.(`no answer to ${what}`), this.opts?.timeoutMs ?? 10_000);
  }

  /** What the connection itself acts on, before the page sees the message. */
  private received(msg: ServerMsg, opts: ConnectOptions): void {
    switch (msg.case) {
      case "pong":
        this.pingUnansweredSince = 0;
        this.clock.pong(msg.value.clientTime, Number(msg.value.serverTime));
        this.unacked.ack(msg.value.lastClientSeq);
        break;
      case "joined":
        this.joined(msg.value);
        break;
      case "resumed": {
        const r = msg.value;
        clearTimeout(this.answerTimer);
        this.resuming = false;
        this.live = true;
        this.retry = 0;
        this.resumeToken = r.resumeToken;
        if (!r.complete && r.snapshot && r.snapshot.seq > this.lastSeq) this.lastSeq = r.snapshot.seq;
        this.unacked.ack(r.lastClientSeq);
        this.onMessage(msg);
        // What the room did not get from us before the drop, and what we sent while it lasted.
        for (const k of this.unacked.all()) this.transmit(k);
        this.setStatus("open");
        return;
      }
      case "resumeFailed":
        // Our place is gone (or was never ours): join like a newcomer.
        this.resuming = false;
        this.forgetPlace();
        this.send(opts.join);
        this.awaitAnswer("the join after a failed resume");
        break;
      case "error":
        // A Resume costs a join from the join budget; over it, the Resume was dropped and this
        // says when to try again.
        if (this.resuming && msg.value.code === ErrorCode.RATE_LIMITED && msg.value.retryAfterMs > 0n) {
          // The wait is the server's to say, within reason (and within setTimeout's range).
          const ws = this.ws;
          clearTimeout(this.answerTimer);
          clearTimeout(this.resumeRetryTimer);
          this.resumeRetryTimer = setTimeout(() => this.ws === ws && this.resuming && this.sendResume(),
            Math.min(MAX_RETRY_AFTER_MS, Number(msg.value.retryAfterMs)));
        }
        break;
      default:
        break;
    }
    this.onMessage(msg);
  }

  private joined(j: Joined): void {
    clearTimeout(this.answerTimer);
    this.live = true;
    this.retry = 0;
    this.resumeToken = j.resumeToken;
    this.graceMs = j.resumeGraceMs;
    this.lastSeq = j.seq;
    // A new place: what an earlier socket sent may or may not have reached the old one, so it
    // is not sent again; what never left (sent while down) goes now.
    this.unacked.forgetSent();
    for (const k of this.unacked.all()) this.transmit(k);
    if (this.status !== "open") this.setStatus("open");
  }

  private sendResume(): void {
    this.send({ case: "resume", value: { token: this.resumeToken, lastSeq: this.lastSeq } });
    this.awaitAnswer("the resume");
  }

  private startPings(): void {
    let n = 0;
    clearInterval(this.pingTimer);
    this.pingUnansweredSince = 0;
    const ping = () => {
      if (this.send({ case: "ping", value: { clientTime: Date.now() } }) && !this.pingUnansweredSince) {
        this.pingUnansweredSince = Date.now();
      }
    };
    ping();
    // A quick burst to sync the clock (16 pings in 4 s, within the ping budget's burst), then a
    // steady beat every 10 s.
    this.pingTimer = setInterval(() => {
      if (this.pingUnansweredSince && Date.now() - this.pingUnansweredSince > PONG_TIMEOUT_MS) {
        this.dropCurrent?.("no pong");
        return;
      }
      n++;
      if (n < CLOCK_SAMPLES || n % 40 === 0) ping();
    }, 250);
  }

  /** Sends at once if the socket is open (false if it is not: nothing is kept). */
  send(msg: ClientMsg, seq = 0n): boolean {
    if (this.ws?.readyState !== OPEN) return false;
    this.readSinceSend = 0;
    this.lastSend = Date.now();
    this.ws.send(toBinary(ClientMessageSchema, create(ClientMessageSchema, { msg, seq })));
    return true;
  }

  /** Sends a message the room must not lose to a drop (note batches, chat): numbered and kept
   * until acknowledged; while the socket is down it waits and goes out after the resume. */
  sendKept(msg: ClientMsg): void {
    const k = this.unacked.add(msg, this.graceMs);
    if (this.live) this.transmit(k);
  }

  private transmit(k: Kept): void {
    if (this.ws?.readyState !== OPEN) return;
    const msg = this.unacked.resendable(k, this.clock.serverNow());
    if (msg) this.send(msg, k.seq);
    k.sent = true;
  }

  /** Queues one note event; batches go out every BATCH_MS with each event's delay kept. */
  note(kind: MessageInitShape<typeof NoteEventSchema>["kind"]): void {
    const now = this.clock.serverNow();
    if (!this.batch) this.batch = { start: now, events: [] };
    const delay = Math.max(0, Math.min(1000, Math.round(now - this.batch.start)));
    this.batch.events.push(create(NoteEventSchema, { delay, kind }));
    if (this.batch.events.length >= MAX_EVENTS) this.flush();
    else if (this.flushTimer === undefined) this.flushTimer = setTimeout(() => this.flush(), BATCH_MS);
  }

  flush(): void {
    clearTimeout(this.flushTimer);
    this.flushTimer = undefined;
    const batch = this.batch;
    this.batch = null;
    if (!batch || !batch.events.length) return;
    const notes = create(NoteBatchSchema, { time: BigInt(Math.round(batch.start)), events: batch.events });
    this.sendKept({ case: "notes", value: notes });
  }

  /** Drops the socket as a network failure would (tests use it to exercise resuming): a close
   * that is not a goodbye, then no reconnect for `holdMs` (or until `reconnectNow`).
   * `unknownToken`: the resume presents a token the room does not know (as after it lost our
   * place), so the room answers ResumeFailed and the page joins afresh. */
  simulateDrop(holdMs = 0, unknownToken = false): void {
    if (unknownToken && this.resumeToken) this.resumeToken = `unknown-${this.resumeToken}`;
    this.holdUntil = Date.now() + holdMs;
    this.dropping = this.ws;
    this.ws?.close(Close.SIMULATED_DROP, "simulated drop");
  }

  /** Ends simulateDrop's hold: reconnects now if a reconnect is waiting. */
  reconnectNow(): void {
    this.holdUntil = 0;
    if (this.reconnectTimer === undefined || this.closedByUs) return;
    void this.open();
  }

  /** Leaving on purpose: 1000 tells the room to let the player go at once. */
  close(): void {
    // Whatever is still batched goes out before the goodbye.
    if (this.live) this.flush();
    this.closedByUs = true;
    this.live = false;
    this.resuming = false;
    // Said to no one: the caller closed it and knows.
    this.status = "closed";
    this.stopTimers();
    clearTimeout(this.reconnectTimer);
    clearTimeout(this.flushTimer);
    this.flushTimer = undefined;
    this.batch = null;
    this.reconnectTimer = undefined;
    const ws = this.ws;
    this.ws = undefined;
    ws?.close(1000, "leaving");
  }
}
