// PianoClient: the SDK's high-level client. One client holds one identity (a token, or a guest
// name it gets a token for) and at most one room at a time; it keeps the room's state
// (participants, settings, crown, the directory) from the messages, and turns the protocol's
// refusals into rejected promises with typed PianoErrors. The socket, clock, batching and
// resuming are the shared `Connection`'s.

import type { MessageInitShape } from "@bufbuild/protobuf";
import type {
  ChatMessage,
  Joined,
  NoteBatch,
  Ownership,
  Participant,
  Quota,
  RoomSettings,
  RoomSummary,
  ServerMessage,
  UpdateProfileSchema,
  UpdateSettingsSchema,
} from "./gen/pianorhythm/v1/room_pb.js";
import { Connection, type ClientMsg, type ServerMsg, type Status } from "./connection.js";
import { PianoError } from "./errors.js";
import { guestToken, listRooms, type Fetch, type RoomInfo } from "./http.js";
import { Scheduler, type ScheduledBatch } from "./scheduler.js";
import type { WebSocketConstructor } from "./socket.js";

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Listener = (...args: any[]) => void;
type Case = NonNullable<ServerMessage["msg"]["case"]>;
type Payload<K extends Case> = Extract<ServerMsg, { case: K }>["value"];

/** Event name → listener arguments: every server message by its `case` (`chat`,
 * `participantJoined`, `settingsChanged`, …) with its value, `notes` with its playback
 * schedule, and the client's own `status`, `rooms` (the directory after each change) and
 * `message` (every server message). */
export type PianoEvents = Omit<{ [K in Case]: [value: Payload<K>] }, "notes"> & {
  notes: [batch: NoteBatch, scheduled: ScheduledBatch];
  status: [status: Status, detail: string | undefined, closeCode: number | undefined];
  rooms: [rooms: ReadonlyMap<string, RoomSummary>];
  message: [msg: ServerMsg];
};

export type Credentials =
  | { url: string; token: string | ((renew?: boolean) => Promise<string | undefined>) }
  | { url: string; guestName: string };

export interface ClientOptions {
  /** Default `globalThis.WebSocket` (browsers, Node ≥ 22); on Node 20 pass the `ws` package. */
  WebSocket?: WebSocketConstructor;
  /** Default `globalThis.fetch`. */
  fetch?: Fetch;
  /** How long a call waits for the room's answer (default 10 s). */
  timeoutMs?: number;
  /** Playback buffer for received notes (default BATCH_MS + 100). */
  latencyMs?: number;
}

export type SettingsPatch = MessageInitShape<typeof UpdateSettingsSchema>;
export type ProfilePatch = MessageInitShape<typeof UpdateProfileSchema>;

export interface JoinOptions {
  password?: string;
  /** Join-or-create: the settings of the room if this join creates it. */
  settings?: SettingsPatch;
}

interface Pending {
  /** The Ping's client time that ends the wait: answered in order after the request. */
  barrier: number;
  /** Kept across a resume (chat): waits on; other requests are lost with their socket. */
  kept: boolean;
  resolve: () => void;
  reject: (e: PianoError) => void;
  timer: ReturnType<typeof setTimeout>;
}

/** Gets a token for the credentials, then a client ready to `join` a room. */
export async function connect(credentials: Credentials, options: ClientOptions = {}): Promise<PianoClient> {
  let token: (renew?: boolean) => Promise<string | undefined>;
  if ("guestName" in credentials) {
    const name = credentials.guestName;
    let current = (await guestToken(credentials.url, name, options.fetch, options.timeoutMs)).token;
    // A guest token that the server ended (4001) is replaced by a new one for the same name.
    token = async (renew) => (renew ? (current = (await guestToken(credentials.url, name, options.fetch, options.timeoutMs)).token) : current);
  } else {
    const t = credentials.token;
    token = typeof t === "string" ? async () => t : t;
  }
  return new PianoClient(credentials.url, token, options);
}

export class PianoClient {
  readonly conn: Connection;
  readonly scheduler: Scheduler;
  /** Who the room says you are (from Welcome, then Joined). */
  you?: Participant;
  room = "";
  /** Everyone present, in join order. */
  readonly participants = new Map<string, Participant>();
  settings?: RoomSettings;
  ownership?: Ownership;
  quota?: Quota;
  /** Chat history from Joined, then every message (at most 100). */
  chatLog: ChatMessage[] = [];
  /** The directory, while subscribed (`subscribeRooms`). */
  readonly rooms = new Map<string, RoomSummary>();
  /** The server's protocol version (Welcome). */
  serverProtocolVersion = 0;

  private listeners = new Map<string, Set<Listener>>();
  private pending: Pending[] = [];
  private barrierSeq = 0;
  private joining?: { resolve: (j: Joined) => void; reject: (e: PianoError) => void; timer: ReturnType<typeof setTimeout> };
  private roomListWaiters: {
    resolve: (rooms: ReadonlyMap<string, RoomSummary>) => void;
    reject: (e: PianoError) => void;
    timer: ReturnType<typeof setTimeout>;
  }[] = [];
  private wantRooms = false;
  private timeoutMs: number;

  constructor(
    readonly url: string,
    private token: (renew?: boolean) => Promise<string | undefined>,
    private options: ClientOptions = {},
  ) {
    this.timeoutMs = options.timeoutMs ?? 10_000;
    this.conn = new Connection(
      (m) => this.received(m),
      (s, d, c) => this.statusChanged(s, d, c),
    );
    this.scheduler = new Scheduler(this.conn.clock, options.latencyMs);
  }

  get clock() {
    return this.conn.clock;
  }

  get status(): Status {
    return this.conn.currentStatus;
  }

  // -- events -----------------------------------------------------------------------------------

  /** Listens to `event`; returns a function that stops listening. */
  on<K extends keyof PianoEvents>(event: K, fn: (...args: PianoEvents[K]) => void): () => void {
    let set = this.listeners.get(event);
    if (!set) this.listeners.set(event, (set = new Set()));
    set.add(fn as Listener);
    return () => this.off(event, fn);
  }

  off<K extends keyof PianoEvents>(event: K, fn: (...args: PianoEvents[K]) => void): void {
    this.listeners.get(event)?.delete(fn as Listener);
  }

  /** The next `event` whose arguments satisfy `test` (default: the next one). */
  next<K extends keyof PianoEvents>(event: K, test: (...args: PianoEvents[K]) => boolean = () => true, timeoutMs = this.timeoutMs): Promise<PianoEvents[K]> {
    return new Promise((resolve, reject) => {
      const stop = this.on(event, (...args) => {
        if (!test(...args)) return;
        stop();
        clearTimeout(timer);
        resolve(args);
      });
      const timer = setTimeout(() => {
        stop();
        reject(new PianoError("TIMEOUT", `no ${String(event)} within ${timeoutMs} ms`, "timeout"));
      }, timeoutMs);
    });
  }

  private emit<K extends keyof PianoEvents>(event: K, ...args: PianoEvents[K]): void {
    for (const fn of [...(this.listeners.get(event) ?? [])]) {
      try {
        fn(...args);
      } catch (e) {
        // A listener's bug must not break the connection's bookkeeping.
        console.error(e);
      }
    }
  }

  // -- joining ----------------------------------------------------------------------------------

  /** Opens a socket to `room` and joins it (creating it with `settings` if it does not exist).
   * Resolves with the room as it is; rejects with a PianoError: a JoinFailed reason
   * (`ROOM_FULL`, `WRONG_PASSWORD`, `BANNED` with `retryAfterMs`, …) or a close code. Leaves
   * the room this client was in. */
  join(room: string, opts: JoinOptions = {}): Promise<Joined> {
    this.abandon(new PianoError("NOT_CONNECTED", "left for another room", "state"));
    this.resetRoom();
    this.room = room;
    const join: ClientMsg = { case: "join", value: { password: opts.password ?? "", createSettings: opts.settings } };
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.joining = undefined;
        this.conn.close();
        reject(new PianoError("TIMEOUT", `no answer to joining ${room}`, "timeout"));
      }, this.timeoutMs);
      this.joining = { resolve, reject, timer };
      this.conn.connect({ url: this.url, room, token: this.token, join, WebSocket: this.options.WebSocket, timeoutMs: this.timeoutMs });
    });
  }

  /** Leaves the room (close code 1000: the room lets you go at once). The client may join again. */
  leave(): void {
    this.conn.close();
    this.abandon(new PianoError("NOT_CONNECTED", "left the room", "state"));
    this.resetRoom();
    this.emit("status", "closed", "left", 1000);
  }

  /** Leaves and stops every timer: a Node process may exit after it. */
  close(): void {
    this.leave();
  }

  private resetRoom(): void {
    this.participants.clear();
    this.rooms.clear();
    this.wantRooms = false;
    this.chatLog = [];
    this.settings = this.ownership = this.quota = undefined;
  }

  /** Fails the pending join and requests (the socket they were waiting on is gone). */
  private abandon(err: PianoError, keepKept = false): void {
    if (this.joining) {
      clearTimeout(this.joining.timer);
      this.joining.reject(err);
      this.joining = undefined;
    }
    const keep: Pending[] = [];
    for (const p of this.pending) {
      if (keepKept && p.kept) keep.push(p);
      else {
        clearTimeout(p.timer);
        p.reject(err);
      }
    }
    this.pending = keep;
    for (const w of this.roomListWaiters.splice(0)) {
      clearTimeout(w.timer);
      w.reject(err);
    }
  }

  // -- notes ------------------------------------------------------------------------------------

  /** Plays (on) or releases (off) a key; events go out batched every BATCH_MS with their
   * timing kept, numbered so that a resume loses none and repeats none. */
  sendNote(on: boolean, note: number, velocity = 100, channel = 0): void {
    if (on) this.conn.note({ case: "noteOn", value: { note, velocity, channel } });
    else this.conn.note({ case: "noteOff", value: { note, channel } });
  }

  /** The sustain pedal (CC64). */
  pedal(down: boolean, channel = 0): void {
    this.conn.note({ case: "controlChange", value: { control: 64, value: down ? 127 : 0, channel } });
  }

  /** Sends what is batched now rather than at the end of the batch interval. */
  flush(): void {
    this.conn.flush();
  }

  // -- calls with typed errors ------------------------------------------------------------------

  /** Sends `msg` followed by a Ping: the room answers a connection's messages in order, so an
   * Error before that Pong is this call's refusal, and the Pong without one its success. */
  private request(msg: ClientMsg, kept = false): Promise<void> {
    // While reconnecting, a kept message waits for the resume (then its Ping goes: statusChanged).
    const waits = kept && this.status === "reconnecting";
    if (!this.participants.size || (this.status !== "open" && !waits)) {
      return Promise.reject(new PianoError("NOT_CONNECTED", "not in a room", "state"));
    }
    // A unique client time (sub-millisecond apart) that the Pong echoes.
    const barrier = Date.now() + (++this.barrierSeq % 1000) / 1000;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending = this.pending.filter((p) => p.barrier !== barrier);
        reject(new PianoError("TIMEOUT", "no answer from the room", "timeout"));
      }, this.timeoutMs);
      this.pending.push({ barrier, kept, resolve, reject, timer });
      if (kept) this.conn.sendKept(msg);
      else this.conn.send(msg);
      if (!waits) this.conn.send({ case: "ping", value: { clientTime: barrier } });
    });
  }

  /** Says `text` in the room (1–512 characters). Rejects with `MUTED`, `RATE_LIMITED`,
   * `INVALID_VALUE`, `NOT_ALLOWED` (owner-only chat). Survives a dropped connection. */
  chat(text: string): Promise<void> {
    return this.request({ case: "chat", value: { text } }, true);
  }

  /** Owner, moderators, admins: unset fields stay. Rejects `NOT_ALLOWED`, `INVALID_VALUE`. */
  updateSettings(patch: SettingsPatch): Promise<void> {
    return this.request({ case: "updateSettings", value: patch });
  }

  updateProfile(patch: ProfilePatch): Promise<void> {
    return this.request({ case: "updateProfile", value: patch });
  }

  transferCrown(participantId: string): Promise<void> {
    return this.request({ case: "transferOwnership", value: { participantId } });
  }

  dropCrown(): Promise<void> {
    return this.request({ case: "dropOwnership", value: {} });
  }

  /** Rejects `NOT_YET` (with the time left in the message) before the crown may be claimed. */
  claimCrown(): Promise<void> {
    return this.request({ case: "claimOwnership", value: {} });
  }

  /** Removes a participant (close 4003 for them), banning them for `banMs` (at most 1 h). */
  kick(participantId: string, banMs = 0): Promise<void> {
    return this.request({ case: "kick", value: { participantId, banMs: BigInt(banMs) } });
  }

  ban(participantId: string, ms: number): Promise<void> {
    return this.kick(participantId, ms);
  }

  unban(userId: string): Promise<void> {
    return this.request({ case: "unban", value: { userId } });
  }

  mute(participantId: string, what: { notes?: boolean; chat?: boolean } = { notes: true, chat: true }): Promise<void> {
    return this.request({ case: "mute", value: { participantId, notes: !!what.notes, chat: !!what.chat } });
  }

  deleteChat(id: bigint): Promise<void> {
    return this.request({ case: "deleteChat", value: { id } });
  }

  clearChat(): Promise<void> {
    return this.request({ case: "clearChat", value: {} });
  }

  setTyping(typing: boolean): void {
    this.conn.send({ case: "typing", value: { typing } });
  }

  moveCursor(x: number, y: number): void {
    this.conn.send({ case: "cursor", value: { x, y } });
  }

  // -- the directory ----------------------------------------------------------------------------

  /** Live room list on this client's socket: resolves with the full list; then `rooms` events
   * follow every change (and it is renewed after a reconnect). */
  subscribeRooms(): Promise<ReadonlyMap<string, RoomSummary>> {
    if (this.status !== "open") return Promise.reject(new PianoError("NOT_CONNECTED", "no open socket", "state"));
    this.wantRooms = true;
    const p = new Promise<ReadonlyMap<string, RoomSummary>>((resolve, reject) => {
      const w = {
        resolve,
        reject,
        timer: setTimeout(() => {
          this.roomListWaiters = this.roomListWaiters.filter((x) => x !== w);
          reject(new PianoError("TIMEOUT", "no room list from the server", "timeout"));
        }, this.timeoutMs),
      };
      this.roomListWaiters.push(w);
    });
    this.conn.send({ case: "subscribeRooms", value: {} });
    return p;
  }

  unsubscribeRooms(): void {
    this.wantRooms = false;
    this.conn.send({ case: "unsubscribeRooms", value: {} });
  }

  /** `GET /api/rooms` (no socket needed). */
  listRooms(): Promise<RoomInfo[]> {
    return listRooms(this.url, this.options.fetch, this.options.timeoutMs);
  }

  // -- what arrives -----------------------------------------------------------------------------

  private applyJoined(j: Joined): void {
    this.you = j.you;
    this.participants.clear();
    for (const p of j.participants) this.participants.set(p.id, p);
    this.settings = j.settings;
    this.ownership = j.ownership;
    this.quota = j.quota;
    this.chatLog = [...j.chatHistory];
    // A new socket: the old one's room list subscription ended with it.
    if (this.wantRooms) this.conn.send({ case: "subscribeRooms", value: {} });
  }

  private received(msg: ServerMsg): void {
    switch (msg.case) {
      case "welcome":
        this.serverProtocolVersion = msg.value.protocolVersion;
        this.you = msg.value.you;
        break;
      case "joined":
        this.applyJoined(msg.value);
        if (this.joining) {
          clearTimeout(this.joining.timer);
          this.joining.resolve(msg.value);
          this.joining = undefined;
        }
        break;
      case "resumed":
        if (msg.value.you) this.you = msg.value.you;
        if (!msg.value.complete && msg.value.snapshot) this.applyJoined(msg.value.snapshot);
        else if (this.wantRooms) this.conn.send({ case: "subscribeRooms", value: {} });
        break;
      case "joinFailed": {
        const err = PianoError.fromJoinFailed(msg.value);
        // The socket could try again, but a caller of join() decides that: it is closed.
        this.conn.close();
        this.abandon(err);
        // conn.close() says nothing (it assumes its caller knows): the page must hear it, as
        // after a failed re-Join following a resume that failed.
        this.emit("status", "closed", err.message, undefined);
        break;
      }
      case "participantJoined":
      case "participantUpdated": {
        const p = msg.value.participant;
        if (p) this.participants.set(p.id, p);
        if (p && p.id === this.you?.id) this.you = p;
        break;
      }
      case "participantLeft":
        this.participants.delete(msg.value.participantId);
        break;
      case "chat":
        this.chatLog.push(msg.value);
        if (this.chatLog.length > 100) this.chatLog.shift();
        break;
      case "chatDeleted":
        this.chatLog = this.chatLog.filter((c) => c.id !== msg.value.id);
        break;
      case "chatCleared":
        this.chatLog = [];
        break;
      case "settingsChanged":
        this.settings = msg.value.settings;
        break;
      case "ownerChanged":
        this.ownership = msg.value.ownership;
        break;
      case "quota":
        this.quota = msg.value;
        break;
      case "roomList":
      case "roomListChanged":
        if (msg.case === "roomList") {
          this.rooms.clear();
          for (const r of msg.value.rooms) this.rooms.set(r.name, r);
        } else {
          for (const r of msg.value.upserted) this.rooms.set(r.name, r);
          for (const name of msg.value.removed) this.rooms.delete(name);
        }
        if (msg.case === "roomList") {
          for (const w of this.roomListWaiters.splice(0)) {
            clearTimeout(w.timer);
            w.resolve(this.rooms);
          }
        }
        this.emit("rooms", this.rooms);
        break;
      case "pong": {
        const i = this.pending.findIndex((p) => p.barrier === msg.value.clientTime);
        if (i >= 0) {
          const [p] = this.pending.splice(i, 1);
          clearTimeout(p.timer);
          p.resolve();
        }
        break;
      }
      case "error": {
        // The oldest call still waiting is the one refused (answers come in order).
        const p = this.pending.shift();
        if (p) {
          clearTimeout(p.timer);
          p.reject(PianoError.fromError(msg.value));
        }
        break;
      }
      default:
        break;
    }
    this.emit("message", msg);
    if (msg.case === "notes") this.emit("notes", msg.value, this.scheduler.schedule(msg.value));
    else if (msg.case) (this.emit as (e: string, v: unknown) => void)(msg.case, msg.value);
  }

  private statusChanged(status: Status, detail: string | undefined, code: number | undefined): void {
    if (status === "reconnecting") {
      // Calls sent on the lost socket may or may not have reached the room; chat is re-sent
      // after the resume and waits on.
      this.abandon(PianoError.fromClose(code ?? 1006, "connection lost"), true);
    } else if (status === "open" && this.pending.length) {
      // Back (resumed): the kept calls' messages went out again; a new Ping ends their wait.
      for (const p of this.pending) {
        p.barrier = Date.now() + (++this.barrierSeq % 1000) / 1000;
        this.conn.send({ case: "ping", value: { clientTime: p.barrier } });
      }
    } else if (status === "kicked" || status === "refused" || status === "closed") {
      // A join() that failed here is over: no reconnecting behind its caller's back (and no
      // timers keeping a Node process alive).
      if (status === "refused" || (status === "closed" && this.joining)) this.conn.close();
      this.abandon(code !== undefined ? PianoError.fromClose(code, detail) : new PianoError("NOT_CONNECTED", detail ?? status, "state"));
    }
    this.emit("status", status, detail, code);
  }
}
