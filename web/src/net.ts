// The connection to a room: the WebSocket speaking the protobuf protocol (types generated from
// proto/), clock sync with the server, note batching, and reconnecting after a drop.

import { create, fromBinary, toBinary, type MessageInitShape } from "@bufbuild/protobuf";
import {
  ClientMessageSchema,
  NoteBatchSchema,
  NoteEventSchema,
  ServerMessageSchema,
  type NoteEvent,
  type ServerMessage,
} from "./gen/pianorhythm/v1/room_pb";

/** A client message as an init shape: plain objects, no need to create() each part. */
export type ClientMsg = NonNullable<MessageInitShape<typeof ClientMessageSchema>["msg"]>;
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
} as const;

export type Status = "connecting" | "open" | "closed" | "kicked" | "refused";

export interface ConnectOptions {
  room: string;
  /** A valid token at each (re)connect: members' access tokens are short-lived. `renew` asks
   * for a new one even if the current one looks valid (the server ended it, or roles changed). */
  token: (renew?: boolean) => Promise<string | undefined>;
  /** What to send as the Join (password, create settings). */
  join: ClientMsg;
}

/** Estimates server time from Ping/Pong: keeps the sample with the smallest round trip. */
export class Clock {
  offset = 0;
  private samples: { rtt: number; offset: number }[] = [];

  serverNow(): number {
    return Date.now() + this.offset;
  }

  pong(clientTime: number, serverTime: number): void {
    const now = Date.now();
    const rtt = now - clientTime;
    this.samples.push({ rtt, offset: serverTime + rtt / 2 - now });
    if (this.samples.length > 8) this.samples.shift();
    this.offset = this.samples.reduce((a, b) => (b.rtt < a.rtt ? b : a)).offset;
  }

  get rtt(): number {
    return this.samples.length ? Math.min(...this.samples.map((s) => s.rtt)) : NaN;
  }
}

export class Connection {
  readonly clock = new Clock();
  private ws?: WebSocket;
  private opts?: ConnectOptions;
  private retry = 0;
  /** Refusals in a row (4004, 1008): each makes the next try wait longer. */
  private refusals = 0;
  /** The server ended our token: the next connect asks for a new one. */
  private renew = false;
  private closedByUs = false;
  private pingTimer?: number;
  private readSinceSend = 0;
  private lastSend = 0;
  private batch: { start: number; events: NoteEvent[] } | null = null;
  private flushTimer?: number;

  constructor(
    private onMessage: (msg: ServerMsg) => void,
    private onStatus: (status: Status, detail?: string) => void,
  ) {}

  connect(opts: ConnectOptions): void {
    this.close();
    this.opts = opts;
    this.closedByUs = false;
    void this.open();
  }

  private async open(): Promise<void> {
    const opts = this.opts;
    if (!opts) return;
    this.onStatus("connecting");
    const token = await opts.token(this.renew);
    this.renew = false;
    if (this.opts !== opts || this.closedByUs) return;
    if (!token) {
      this.onStatus("closed", "signed out");
      return;
    }
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const url = `${proto}//${location.host}/api/rooms/${encodeURIComponent(opts.room)}/ws`;
    // Browsers cannot set headers on a WebSocket: the token travels as a subprotocol entry.
    const ws = new WebSocket(url, ["pianorhythm.v1", `bearer.${token}`]);
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    ws.onopen = () => {
      this.retry = 0;
      this.refusals = 0;
      this.onStatus("open");
      this.send(opts.join);
      this.startPings();
    };
    ws.onmessage = (ev) => {
      if (!(ev.data instanceof ArrayBuffer)) return;
      this.readSinceSend += ev.data.byteLength;
      if (this.readSinceSend >= ACK_EVERY_BYTES && Date.now() - this.lastSend >= ACK_MIN_INTERVAL_MS) {
        this.send({ case: "ping", value: { clientTime: Date.now() } });
      }
      const msg = fromBinary(ServerMessageSchema, new Uint8Array(ev.data)).msg;
      if (msg.case === "pong") this.clock.pong(msg.value.clientTime, Number(msg.value.serverTime));
      this.onMessage(msg);
    };
    ws.onclose = (ev) => {
      window.clearInterval(this.pingTimer);
      if (this.ws !== ws) return;
      if (ev.code === Close.KICKED) {
        this.onStatus("kicked", ev.reason);
        return;
      }
      let delay: number;
      if (ev.code === Close.TOO_MANY_CONNECTIONS || ev.code === Close.POLICY_VIOLATION) {
        // Refused: say why and come back much later (30 s, doubling to 5 min), never hammer.
        this.onStatus("refused", ev.code === Close.TOO_MANY_CONNECTIONS
          ? "too many open connections to this room: close another tab"
          : "disconnected for sending too fast");
        delay = Math.min(300_000, 30_000 * 2 ** this.refusals++);
      } else {
        this.onStatus("closed", ev.reason);
        if (ev.code === Close.SESSION_ENDED || ev.code === Close.IDENTITY_CHANGED) this.renew = true;
        // Reconnect with backoff: 0.5 s, 1 s, 2 s, … up to 8 s.
        delay = Math.min(8000, 500 * 2 ** this.retry++);
      }
      if (!this.closedByUs) window.setTimeout(() => this.ws === ws && void this.open(), delay);
    };
  }

  private startPings(): void {
    let n = 0;
    const ping = () => this.send({ case: "ping", value: { clientTime: Date.now() } });
    ping();
    // A quick burst to sync the clock, then a steady beat.
    this.pingTimer = window.setInterval(() => {
      n++;
      if (n < 5 || n % 10 === 0) ping();
    }, 1000);
  }

  send(msg: ClientMsg): void {
    if (this.ws?.readyState !== WebSocket.OPEN) return;
    this.readSinceSend = 0;
    this.lastSend = Date.now();
    this.ws.send(toBinary(ClientMessageSchema, create(ClientMessageSchema, { msg })));
  }

  /** Queues one note event; batches go out every BATCH_MS with each event's delay kept. */
  note(kind: MessageInitShape<typeof NoteEventSchema>["kind"]): void {
    const now = this.clock.serverNow();
    if (!this.batch) this.batch = { start: now, events: [] };
    const delay = Math.max(0, Math.min(1000, Math.round(now - this.batch.start)));
    this.batch.events.push(create(NoteEventSchema, { delay, kind }));
    if (this.batch.events.length >= MAX_EVENTS) this.flush();
    else if (this.flushTimer === undefined) this.flushTimer = window.setTimeout(() => this.flush(), BATCH_MS);
  }

  flush(): void {
    window.clearTimeout(this.flushTimer);
    this.flushTimer = undefined;
    const batch = this.batch;
    this.batch = null;
    if (!batch || !batch.events.length) return;
    const notes = create(NoteBatchSchema, { time: BigInt(Math.round(batch.start)), events: batch.events });
    this.send({ case: "notes", value: notes });
  }

  /** Drops the socket as a network failure would (tests use it to exercise reconnecting). */
  simulateDrop(): void {
    this.ws?.close(4000, "simulated drop");
  }

  close(): void {
    this.closedByUs = true;
    window.clearInterval(this.pingTimer);
    const ws = this.ws;
    this.ws = undefined;
    ws?.close(1000, "leaving");
  }
}
