// What a connection sent that the room has not acknowledged yet (docs/resume.md §5): note
// batches and chat are numbered (ClientMessage.seq, strictly increasing, kept across resumes)
// and kept until a Pong or a Resumed says the room processed them, so that after a resume the
// rest is sent again, in order; the room processes each number once.

import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { ClientMessageSchema, NoteBatchSchema, type NoteBatch, type NoteEvent } from "./gen/pianorhythm/v1/room_pb.js";

/** A client message as an init shape: plain objects, no need to create() each part. */
export type ClientMsg = NonNullable<MessageInitShape<typeof ClientMessageSchema>["msg"]>;

/** At most this many messages are kept (the contract's bound). */
export const MAX_KEPT = 1024;
/** How long a message is kept when the room did not say its grace period (its default). */
const DEFAULT_GRACE_MS = 15_000;
/** The room refuses a batch whose time is further than this from its clock
 * (`MAX_BATCH_CLOCK_SKEW_MS` is 10 s); a margin for the trip and the clock estimate. */
const MAX_BATCH_AGE_MS = 8_000;

export interface Kept {
  seq: bigint;
  msg: ClientMsg;
  /** When it was numbered (local ms). */
  at: number;
  /** It went out on some socket (so the room may have it). */
  sent: boolean;
}

export class Unacked {
  private next = 0n;
  private kept: Kept[] = [];

  /** Numbers `msg` and keeps it: at most MAX_KEPT, none older than the grace period (after
   * it the room has given the place up, and nothing could be re-sent to it). */
  add(msg: ClientMsg, graceMs: number): Kept {
    const k: Kept = { seq: ++this.next, msg, at: Date.now(), sent: false };
    this.kept.push(k);
    const oldest = k.at - (graceMs || DEFAULT_GRACE_MS);
    while (this.kept.length > MAX_KEPT || this.kept[0].at < oldest) this.kept.shift();
    return k;
  }

  /** The room processed everything numbered up to `seq`. */
  ack(seq: bigint): void {
    if (seq > 0n) this.kept = this.kept.filter((k) => k.seq > seq);
  }

  /** In order. */
  all(): readonly Kept[] {
    return [...this.kept];
  }

  /** A fresh Join: what went out on an earlier socket may or may not have reached the place
   * that is gone, so it is not sent again; what never left stays. */
  forgetSent(): void {
    this.kept = this.kept.filter((k) => !k.sent);
  }

  clear(): void {
    this.kept = [];
  }

  get length(): number {
    return this.kept.length;
  }

  /** What to send for `k` now: as it was, except a note batch too old for the room's clock
   * check, of which only the releases go (restamped to now) so nobody's note keeps sounding;
   * nothing if it had none. Its number stays. */
  resendable(k: Kept, serverNow: number): ClientMsg | undefined {
    if (k.msg.case !== "notes") return k.msg;
    const batch = k.msg.value as NoteBatch;
    if (Number(batch.time) >= serverNow - MAX_BATCH_AGE_MS) return k.msg;
    const releases = batch.events.filter(isRelease).map((e) => ({ ...e, delay: 0 }));
    if (!releases.length) return undefined;
    return { case: "notes", value: create(NoteBatchSchema, { time: BigInt(Math.round(serverNow)), events: releases }) };
  }
}

function isRelease(e: NoteEvent): boolean {
  const k = e.kind;
  return k.case === "noteOff" || (k.case === "controlChange" && k.value.control === 64 && k.value.value < 64);
}
